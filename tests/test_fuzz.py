"""The gateway's API under hypothesis: odd bodies, headers, paths and admin calls.

A real gateway (uvicorn on a loopback port) in front of the fake teacher gets generated
requests: raw bytes, arbitrary JSON, valid requests with fields of the wrong type or shape,
bodies over the size limit, random headers (gateway key, content type, task header), random
methods and paths, admin calls with and without the token. Whatever it gets, the gateway must
never answer 5xx, every error must be ``{"error": {"message", "type", "param", "code"}}``, and
once it stops, every exchange it forwarded must be in the spool exactly once, as a record that
fits the exchange schema. Runs are derandomized (the same examples every time) and bounded.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote

import httpx
import orjson
import pytest
from aiohttp import web
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from core.record import records_to_table
from tests.conftest import RunningGateway
from tests.fake_teacher import FakeTeacher, stream_events
from tests.spooled import spooled_records

ADMIN_TOKEN = "fuzz-admin-token"
MAX_BODY = 64 * 1024
TEACHER_REFUSAL = "the fake teacher cannot answer this request"
ENDPOINTS = ("/v1/chat/completions", "/v1/completions", "/v1/embeddings")

FUZZ = settings(
    max_examples=300,
    deadline=2000,  # ms per example; a request hanging is a failure
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


class StrictTeacher(FakeTeacher):
    """The fake teacher, refusing what it cannot answer with a 400 in the OpenAI shape, as
    OpenAI would (the plain fake would fail with a 500, which the gateway passes through)."""

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        try:
            stream_events(orjson.loads(await request.read()), request.path)
        except Exception:
            return _refusal()
        return await super()._chat(request)

    async def _embeddings(self, request: web.Request) -> web.Response:
        try:
            return await super()._embeddings(request)
        except Exception:
            return _refusal()


def _refusal() -> web.Response:
    error = {"message": TEACHER_REFUSAL, "type": "invalid_request_error", "param": None}
    body = orjson.dumps({"error": {**error, "code": None}})
    return web.Response(status=400, body=body, content_type="application/json")


@pytest.fixture
def teacher() -> Iterator[FakeTeacher]:
    with StrictTeacher() as fake:
        yield fake


@pytest.fixture
def gw(make_gateway: Any) -> RunningGateway:
    route = {"alias": "fuzz-alias", "task": "fuzz", "teacher_model": "teacher-large"}
    gateway: RunningGateway = make_gateway(
        max_body_bytes=MAX_BODY, routes=[route], rollouts={"admin_token": ADMIN_TOKEN}
    )
    return gateway


# -- what is sent ----------------------------------------------------------------------------

_ascii = st.text(st.characters(min_codepoint=32, max_codepoint=126), max_size=40)
_header = _ascii.map(str.strip)  # HTTP has no header value with outer whitespace


def _text(max_size: int, min_size: int = 0) -> st.SearchStrategy[str]:
    """Unicode text without lone surrogates (``_json``'s strings may have them)."""
    chars = st.characters(exclude_categories=("Cs",))
    return st.text(chars, min_size=min_size, max_size=max_size)


_json = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.integers(min_value=2**63, max_value=2**70)  # past 64 bits: orjson refuses them
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=30),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=10,
)


def _mostly(valid: st.SearchStrategy[Any], odd: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """``valid`` three times in four, so that many requests get past the gateway's checks."""
    return st.one_of(valid, valid, valid, odd)


_model = _mostly(
    st.sampled_from(["gpt-4o-mini", "fuzz-alias", "../../etc"]) | _text(30, min_size=1),
    st.just("") | _json,
)
_message = st.fixed_dictionaries(
    {"role": _mostly(st.sampled_from(["user", "system", "assistant", "tool"]), _json)},
    optional={"content": _mostly(_text(80), _json), "name": _json},
)
_FIELDS: dict[str, Any] = {
    "messages": _mostly(st.lists(_message, min_size=1, max_size=3), _json),
    "prompt": _mostly(_text(80), _json),
    "input": _mostly(_text(80) | st.lists(_text(20), max_size=3), _json),
    "stream": _mostly(st.booleans(), _json),
    "stream_options": st.just({"include_usage": True}) | _json,
    "n": st.integers(-2, 3) | _json,
    "temperature": st.floats(allow_nan=False) | _json,
    "tools": st.just([{"type": "function", "function": {"name": "f", "parameters": {}}}]) | _json,
    "response_format": st.just({"type": "json_object"}) | _json,
    "user": _mostly(_text(20), _json),
    "metadata": _json,
}


@st.composite
def _shaped_body(draw: st.DrawFn, path: str) -> dict[str, Any]:
    """A request of the endpoint's shape, some fields dropped, some of an odd type."""
    required = {"/v1/chat/completions": "messages", "/v1/completions": "prompt"}.get(path, "input")
    body: dict[str, Any] = {"model": draw(_model)}
    body[required] = draw(_FIELDS[required])
    for name in draw(st.lists(st.sampled_from(sorted(_FIELDS)), max_size=4, unique=True)):
        body[name] = draw(_FIELDS[name])
    if draw(st.integers(0, 3)) == 3:  # hypothesis favours 0: dropping one stays the exception
        body.pop(draw(st.sampled_from(sorted(body))))
    return body


def _encode(value: Any) -> bytes:
    return json.dumps(value, allow_nan=True).encode()  # NaN, Infinity: not JSON to the gateway


@st.composite
def _forwarded(draw: st.DrawFn) -> tuple[str, bytes, dict[str, Any]]:
    path = draw(st.sampled_from(ENDPOINTS))
    body = draw(
        st.one_of(
            _shaped_body(path).map(_encode),
            _shaped_body(path).map(_encode),  # twice as likely as the odd kinds below
            _json.map(_encode),
            st.binary(max_size=200),
            st.integers(MAX_BODY + 1, MAX_BODY + 4096).map(lambda n: b" " * n),
        )
    )
    headers: dict[str, Any] = {}
    if draw(st.booleans()):
        headers["authorization"] = draw(
            st.sampled_from(["Bearer k", "Bearer", "Basic x"]) | _header
        )
    if draw(st.booleans()):
        headers["content-type"] = draw(
            st.sampled_from(["text/plain", "application/x-www-form-urlencoded"]) | _header
        )
    if draw(st.booleans()):
        headers["x-protege-task"] = draw(_header | st.binary(min_size=1, max_size=20).map(_latin1))
    return path, body, headers


def _latin1(raw: bytes) -> bytes:
    """Header bytes a client may send (no control characters, no outer whitespace)."""
    return bytes(b if b > 0x20 and b != 0x7F else 0x41 for b in raw)


# -- what must come back ---------------------------------------------------------------------


def _openai_error(resp: httpx.Response) -> dict[str, Any]:
    """The error object of an OpenAI-shaped error answer (fails the test otherwise)."""
    try:
        body = resp.json()
    except ValueError:
        pytest.fail(f"{resp.status_code} answer is not JSON: {resp.content[:200]!r}")
    error = body.get("error") if isinstance(body, dict) else None
    assert isinstance(error, dict), f"{resp.status_code} answer without an error: {body!r}"
    assert set(error) == {"message", "type", "param", "code"}, error
    assert isinstance(error["message"], str) and error["message"], error
    assert isinstance(error["type"], str) and error["type"], error
    return error


def _judge(resp: httpx.Response, method: str = "POST") -> None:
    """No 5xx; every error answer in the OpenAI error shape. The one redirect allowed is a
    path's trailing slash dropped (the same resource, method and body kept: 307)."""
    status = resp.status_code
    assert status < 500, f"{status}: {resp.content[:300]!r}"
    if 300 <= status < 400:
        target = httpx.URL(resp.headers.get("location", "")).path
        assert status == 307 and target == resp.request.url.path.rstrip("/"), (status, target)
    if status >= 400 and method != "HEAD":
        _openai_error(resp)


def _recorded(resp: httpx.Response) -> bool:
    """Whether the gateway forwarded the request, so owes a record: the teacher answered it."""
    if resp.status_code == 200:
        return True
    return resp.status_code == 400 and _openai_error(resp)["message"] == TEACHER_REFUSAL


def _check_spool(gw: RunningGateway, answered: dict[str, int]) -> None:
    """Every forwarded exchange recorded once, with the status its client got; nothing else;
    every record fits the exchange schema."""
    gw.stop()
    records = spooled_records(gw.settings.spool.dir)
    counts = Counter(r["request_id"] for r in records)
    assert set(counts) == set(answered), (
        f"missing {sorted(set(answered) - set(counts))[:3]},"
        f" unexpected {sorted(set(counts) - set(answered))[:3]}"
    )
    assert max(counts.values(), default=1) == 1, counts.most_common(3)
    assert {r["request_id"]: r["status"] for r in records} == answered
    assert records_to_table(records).num_rows == len(records)


# -- the tests -------------------------------------------------------------------------------


def test_odd_requests_to_the_forwarding_endpoints(gw: RunningGateway) -> None:
    """Bad bodies and headers on the three forwarding endpoints: never a 5xx, errors in the
    OpenAI shape, every forwarded exchange in the spool once and intact."""
    answered: dict[str, int] = {}
    with httpx.Client(base_url=gw.url, timeout=10) as client:

        @settings(FUZZ, max_examples=500)
        @given(request=_forwarded())
        @example(request=(ENDPOINTS[0], b'{"model": "m", "messages": ' + b"[" * 5000, {}))
        @example(request=(ENDPOINTS[0], b'\xef\xbb\xbf{"model": "m", "messages": []}', {}))
        @example(request=(ENDPOINTS[0], b'{"model": "m", "model": 5, "messages": [{}]}', {}))
        @example(request=(ENDPOINTS[0], b'{"model": "a\\u0000b", "messages": [{}]}', {}))
        def probe(request: tuple[str, bytes, dict[str, Any]]) -> None:
            path, body, headers = request
            resp = client.post(path, content=body, headers=headers)
            _judge(resp)
            if _recorded(resp):
                answered[resp.headers["x-protege-request-id"]] = resp.status_code
            if resp.status_code == 200 and resp.headers["content-type"].startswith("text/event"):
                assert resp.content.endswith(b"data: [DONE]\n\n"), resp.content[-200:]

        probe()
    assert len(answered) > 20, "too few requests were valid enough to be forwarded"
    _check_spool(gw, answered)


_METHODS = st.sampled_from(["GET", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "HEAD"])
_PATHS = st.one_of(
    st.sampled_from(
        [
            "/v1/models",
            "/v1/models/",
            "/v1/chat/completions/",
            "/v1/chat/completions",
            "/v1/embeddings",
            "/v1",
            "/",
            "/healthz",
            "/readyz",
            "/docs",
            "/openapi.json",
            "/admin/routes",
            "/admin/routes/",
            "/v1/%2e%2e/admin/routes",
            "//v1/models",
        ]
    ),
    _ascii.map(lambda s: "/v1/" + quote(s, safe="/")),
    _ascii.map(lambda s: "/admin/routes/" + quote(s, safe="")),
)


def test_odd_methods_and_paths(gw: RunningGateway) -> None:
    """Any method on any path: never a 5xx, errors (unknown path, wrong method) in the OpenAI
    shape; whatever got forwarded is in the spool once."""
    answered: dict[str, int] = {}
    with httpx.Client(base_url=gw.url, timeout=10) as client:

        @FUZZ
        @given(method=_METHODS, path=_PATHS, auth=st.none() | _header, body=st.binary(max_size=64))
        def probe(method: str, path: str, auth: str | None, body: bytes) -> None:
            headers = {} if auth is None else {"authorization": auth}
            if method == "GET" and path.startswith("/admin"):
                headers = {"authorization": f"Bearer {ADMIN_TOKEN}"}
            resp = client.request(method, path, content=body or None, headers=headers)
            _judge(resp, method)
            if method == "POST" and path in ENDPOINTS and _recorded(resp):
                answered[resp.headers["x-protege-request-id"]] = resp.status_code

        probe()
    _check_spool(gw, answered)


_ROLLOUT = st.fixed_dictionaries(
    {},
    optional={
        "mode": st.sampled_from(["teacher", "shadow", "canary", "hybrid", "student", "x"]) | _json,
        "percent": st.floats(-10, 200) | _json,
        "adapter": st.sampled_from(["fuzz/v1", "no-slash", "a/b/c"]) | _json,
        "shadow_percent": st.floats(0, 100) | _json,
        "shadow_max_per_s": st.none() | st.floats(-1, 1e9) | _json,
        "window_s": st.floats(0, 100_000) | _json,
        "guardrails": st.fixed_dictionaries({}, optional={"min_samples": _json}) | _json,
        "checks": st.fixed_dictionaries({}, optional={"must_match": _json}) | _json,
        "auto_promote": _json,
        "unknown": _json,
    },
)


def test_odd_admin_calls(gw: RunningGateway) -> None:
    """The admin API with no, a wrong or the right token and odd rollout changes: never a 5xx,
    errors in the OpenAI shape, and a refused change leaves the rollouts as they were."""
    with httpx.Client(base_url=gw.url, timeout=10) as client:

        @FUZZ
        @given(
            method=st.sampled_from(["GET", "PUT", "DELETE"]),
            task=st.sampled_from(["fuzz", "other-task", ""]) | _ascii,
            token=st.sampled_from([None, ADMIN_TOKEN, ADMIN_TOKEN, "wrong", ""]),
            body=_ROLLOUT.map(_encode) | _json.map(_encode) | st.binary(max_size=64),
        )
        def probe(method: str, task: str, token: str | None, body: bytes) -> None:
            headers = {} if token is None else {"authorization": f"Bearer {token}".strip()}
            path = "/admin/routes/" + quote(task, safe="") if task else "/admin/routes"
            before = client.get("/admin/routes", headers={"authorization": f"Bearer {ADMIN_TOKEN}"})
            resp = client.request(method, path, content=body, headers=headers)
            _judge(resp, method)
            if token != ADMIN_TOKEN:
                assert resp.status_code in (401, 404, 405), resp.status_code
            if resp.status_code >= 400:
                after = client.get(
                    "/admin/routes", headers={"authorization": f"Bearer {ADMIN_TOKEN}"}
                )
                assert after.json() == before.json(), "a refused change changed the rollouts"

        probe()
    _check_spool(gw, {})
