"""Student decoding: the adapter's published policy and learned schema reach the student (and
never the teacher) for what the client left unset; the route can override them; the records
say what was applied; the answers say who answered."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from structlog.testing import capture_logs

from core.answers import schema_validator
from core.keys import manifest_key
from core.store import open_store
from gateway.checks import OutputChecks
from gateway.decoding import Applied, Decoding, Published, StudentDecoding, apply, published_of
from gateway.policy import OutputChecksConfig
from tests.conftest import RunningGateway
from tests.fake_lorax import FakeLorax
from tests.fake_teacher import FakeTeacher
from tests.spooled import spooled_records
from tests.stored import s3_server, store_uri

__all__ = ["s3_server", "store_uri"]  # the shared store fixtures, used by this module

ADAPTER = "tickets/v3"
SCHEMA = {
    "type": "object",
    "properties": {"priority": {"enum": ["low", "high"]}},
    "required": ["priority"],
    "additionalProperties": False,
}
DECODING = {
    "temperature": 0.0,
    "top_p": None,
    "max_tokens": 96,
    "max_temperature": None,
    "basis": {"why": "greedy decoding scored at least as well on some test set"},
}
LEARNED = {"type": "json_object", "schema": SCHEMA}
# What a request setting nothing gets under DECODING and SCHEMA.
ALL_APPLIED = {"temperature": 0.0, "max_tokens": 96, "response_format": "output_schema"}
ASK = [{"role": "user", "content": "hello there"}]
TEACHER_ROUTE = {"alias": "drafts", "task": "drafts", "rollout": {"mode": "teacher"}}
CLIENT_FORMAT = {"type": "json_schema", "json_schema": {"name": "v", "schema": {"type": "object"}}}
TOOLS = [{"type": "function", "function": {"name": "lookup", "parameters": {"type": "object"}}}]


def manifest(decoding: Any = DECODING, output_schema: Any = SCHEMA) -> bytes:
    return orjson.dumps(
        {"task": "tickets", "version": "v3", "decoding": decoding, "output_schema": output_schema}
    )


def publish(store: Path, **keys: Any) -> None:
    """Publish the adapter's manifest into the file store at ``store``."""
    path = store / manifest_key(ADAPTER)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(manifest(**keys))


@pytest.fixture
def lorax() -> Iterator[FakeLorax]:
    with FakeLorax() as fake:
        fake.says = lambda req: '{"priority": "high"}'
        yield fake


def loaded(gw: RunningGateway) -> bool:
    return gw.gateway.dispatch.references.published("tickets", ADAPTER) is not None


@pytest.fixture
def start(make_gateway: Any, lorax: FakeLorax) -> Any:  # a function -> RunningGateway
    def start(
        mode: str = "student", override: dict[str, Any] | None = None, wait: bool = True,
        route: dict[str, Any] | None = None, **settings: Any,
    ) -> RunningGateway:  # fmt: skip
        tickets: dict[str, Any] = {"alias": "tickets", "task": "tickets", **(route or {})}
        tickets["rollout"] = {"adapter": ADAPTER, "mode": mode, "shadow_percent": 100}
        if override is not None:
            tickets["student_decoding"] = override
        routes = [tickets, TEACHER_ROUTE]
        gw: RunningGateway = make_gateway(
            student={"base_url": lorax.base_url}, routes=routes, **settings
        )
        if wait:
            assert gw.wait_for(lambda: loaded(gw)), "the adapter's manifest did not load"
        return gw

    return start


def post(gw: RunningGateway, model: str = "tickets", **fields: Any) -> httpx.Response:
    body = {"model": model, "messages": ASK, **fields}
    return httpx.post(gw.url + "/v1/chat/completions", json=body, timeout=10)


def records(gw: RunningGateway) -> list[dict[str, Any]]:
    """Every record, in the order written, once the gateway stopped (shadow calls awaited)."""
    gw.stop()
    return spooled_records(gw.settings.spool.dir, details=True)


def sent(lorax: FakeLorax) -> list[dict[str, Any]]:
    """What the student received, request by request, of the decoding fields."""
    keys = ("temperature", "top_p", "max_tokens", "max_completion_tokens", "response_format")
    return [{k: r.json[k] for k in keys if k in r.json} for r in lorax.received]


# -- the pure rules --------------------------------------------------------------------------

VALIDATOR = schema_validator(SCHEMA)
PUBLISHED = Published(Decoding(temperature=0.0, max_tokens=96), SCHEMA, VALIDATOR)
CAPPED = Published(Decoding(temperature=0.0, max_temperature=0.7), None, None)
NONE = StudentDecoding()
BASE: dict[str, Any] = {"model": "tickets", "messages": ASK}


@pytest.mark.parametrize(
    ("fields", "published", "route", "changed", "record"),
    [
        # Defaults only for what the client left unset (absent or null).
        ({}, PUBLISHED, NONE, {"temperature": 0.0, "max_tokens": 96, "response_format": LEARNED},
         ALL_APPLIED),
        ({"temperature": None, "max_tokens": None}, PUBLISHED, NONE,
         {"temperature": 0.0, "max_tokens": 96, "response_format": LEARNED}, ALL_APPLIED),
        ({"temperature": 0.9, "max_tokens": 10}, PUBLISHED, NONE,
         {"response_format": LEARNED}, {"response_format": "output_schema"}),
        ({"max_completion_tokens": 7}, PUBLISHED, NONE,
         {"temperature": 0.0, "response_format": LEARNED},
         {"temperature": 0.0, "response_format": "output_schema"}),
        ({"max_completion_tokens": None}, Published(Decoding(max_tokens=96)), NONE,
         {"max_tokens": 96, "max_completion_tokens": "gone"}, {"max_tokens": 96}),
        ({}, Published(Decoding(top_p=0.9)), NONE, {"top_p": 0.9}, {"top_p": 0.9}),
        ({"top_p": 0.5}, Published(Decoding(top_p=0.9)), NONE, {}, None),
        # The cap lowers an explicit temperature above it, and only such a one.
        ({"temperature": 1.3}, CAPPED, NONE, {"temperature": 0.7},
         {"temperature": 0.7, "capped": {"temperature": 1.3}}),
        ({"temperature": 0.5}, CAPPED, NONE, {}, None),
        ({"temperature": 2}, None, StudentDecoding(published=False, max_temperature=1),
         {"temperature": 1.0}, {"temperature": 1.0, "capped": {"temperature": 2}}),
        ({}, Published(Decoding(temperature=1.5)), StudentDecoding(max_temperature=0.5),
         {"temperature": 0.5}, {"temperature": 0.5}),
        ({"temperature": "hot"}, CAPPED, NONE, {}, None),
        # The learned schema: never over the client's own format or tools.
        ({"response_format": CLIENT_FORMAT}, PUBLISHED, StudentDecoding(temperature=0.2),
         {"temperature": 0.2, "max_tokens": 96}, {"temperature": 0.2, "max_tokens": 96}),
        ({"response_format": {"type": "text"}, "temperature": 1, "max_tokens": 1}, PUBLISHED,
         NONE, {}, None),
        ({"tools": TOOLS, "temperature": 1, "max_tokens": 1}, PUBLISHED, NONE, {}, None),
        ({"tools": [], "temperature": 1, "max_tokens": 1}, PUBLISHED, NONE,
         {"response_format": LEARNED}, {"response_format": "output_schema"}),
        # The route's override replaces, or sets aside, the published policy.
        ({}, PUBLISHED, StudentDecoding(temperature=0.3, max_tokens=5),
         {"temperature": 0.3, "max_tokens": 5, "response_format": LEARNED},
         {"temperature": 0.3, "max_tokens": 5, "response_format": "output_schema"}),
        ({}, PUBLISHED, StudentDecoding(output_schema=False),
         {"temperature": 0.0, "max_tokens": 96}, {"temperature": 0.0, "max_tokens": 96}),
        ({}, PUBLISHED, StudentDecoding(published=False), {}, None),
        ({}, PUBLISHED, StudentDecoding(published=False, top_p=0.8), {"top_p": 0.8},
         {"top_p": 0.8}),
        # Not loaded yet: only the route's own values.
        ({}, None, NONE, {}, None),
        ({}, None, StudentDecoding(temperature=0.1), {"temperature": 0.1}, {"temperature": 0.1}),
    ],
)  # fmt: skip
def test_apply(
    fields: dict[str, Any],
    published: Published | None,
    route: StudentDecoding,
    changed: dict[str, Any],
    record: dict[str, Any] | None,
) -> None:
    """Each rule of gateway.decoding: what the student gets, and what the record says."""
    request = {**BASE, **fields}
    before = orjson.dumps(request)
    out = apply(request, published, route)
    expected = {**request, **changed}
    for key in [k for k, v in changed.items() if v == "gone"]:
        del expected[key]
    assert out.fields == expected and out.record == record
    assert orjson.dumps(request) == before  # the client's fields are never changed
    if not changed:
        assert out.fields is request


@pytest.mark.parametrize(
    ("fields", "published", "route", "schema"),
    [
        ({}, PUBLISHED, NONE, True),
        ({}, PUBLISHED, StudentDecoding(output_schema=False), True),  # not asked, still checked
        ({}, PUBLISHED, StudentDecoding(published=False), False),
        ({"response_format": {"type": "json_object"}}, PUBLISHED, NONE, False),
        ({"tools": TOOLS}, PUBLISHED, NONE, False),
        ({}, None, NONE, False),
    ],
)
def test_applied_schema_for_the_checks(
    fields: dict[str, Any], published: Published | None, route: StudentDecoding, schema: bool
) -> None:
    """The learned schema stands for the request's in the checks where it applies to it."""
    out: Applied = apply({**BASE, **fields}, published, route)
    assert out.schema is (VALIDATOR if schema else None)


@pytest.mark.parametrize(
    ("keys", "published", "problems"),
    [
        ({}, Published(Decoding(0.0, None, 96, None), SCHEMA, VALIDATOR), []),
        ({"decoding": None, "output_schema": None}, Published(), []),
        ({"decoding": [0.0]}, Published(output_schema=SCHEMA, validator=VALIDATOR),
         ["decoding must be an object"]),
        ({"decoding": {"temperature": "0", "top_p": 0, "max_tokens": 9.5, "max_temperature": 3}},
         Published(output_schema=SCHEMA, validator=VALIDATOR),
         ["decoding.temperature", "decoding.top_p", "decoding.max_temperature",
          "decoding.max_tokens"]),
        ({"decoding": {"temperature": True, "max_tokens": True, "top_p": 1}},
         Published(Decoding(top_p=1.0), SCHEMA, VALIDATOR),
         ["decoding.temperature", "decoding.max_tokens"]),
        ({"output_schema": "object"}, Published(Decoding(0.0, None, 96, None)),
         ["output_schema must be an object"]),
        ({"output_schema": {"type": 12}}, Published(Decoding(0.0, None, 96, None)),
         ["output_schema is not a valid JSON schema"]),
    ],
)  # fmt: skip
def test_published_of(keys: dict[str, Any], published: Published, problems: list[str]) -> None:
    """A manifest's decoding and output_schema, each bad value ignored and named."""
    found, said = published_of(orjson.loads(manifest(**keys)))
    assert found == published
    assert len(said) == len(problems)
    assert all(s.startswith(p) for s, p in zip(said, problems, strict=True)), said


def test_published_of_an_older_manifest() -> None:
    """A manifest from before decoding policies has none, and no problem."""
    assert published_of({"task": "tickets", "version": "v1"}) == (Published(), ())


# -- what the student gets, and the teacher never ---------------------------------------------


@pytest.mark.parametrize("stream", [False, True])
def test_the_policy_fills_only_what_the_client_left_unset(
    start: Any, lorax: FakeLorax, tmp_path: Path, stream: bool
) -> None:
    """Unset temperature and max_tokens get the published values, the learned schema goes as
    LoRAX's json_object format; explicit values pass untouched; the records say what was set."""
    publish(tmp_path / "store")
    gw = start()
    for fields in ({}, {"temperature": 0.9, "max_tokens": 10},
                   {"temperature": None, "max_completion_tokens": 7}):  # fmt: skip
        assert post(gw, stream=stream, **fields).status_code == 200
    assert sent(lorax) == [
        {"temperature": 0.0, "max_tokens": 96, "response_format": LEARNED},
        {"temperature": 0.9, "max_tokens": 10, "response_format": LEARNED},
        {"temperature": 0.0, "max_tokens": 7, "response_format": LEARNED},
    ]
    assert [r["detail"] for r in records(gw)] == [
        {"why": "student", "decoding": ALL_APPLIED},
        {"why": "student", "decoding": {"response_format": "output_schema"}},
        {"why": "student", "decoding": {"temperature": 0.0, "response_format": "output_schema"}},
    ]


def test_max_temperature_caps_only_a_higher_explicit_temperature(
    start: Any, lorax: FakeLorax, tmp_path: Path
) -> None:
    """With max_temperature 0.5, a client's 1.3 reaches the student as 0.5 (recorded as
    capped), a client's 0.2 as it is."""
    publish(tmp_path / "store")
    gw = start(override={"max_temperature": 0.5})
    post(gw, temperature=1.3, max_tokens=4)
    post(gw, temperature=0.2, max_tokens=4)
    assert [s["temperature"] for s in sent(lorax)] == [0.5, 0.2]
    first, second = (r["detail"]["decoding"] for r in records(gw))
    assert first == {
        "temperature": 0.5, "capped": {"temperature": 1.3}, "response_format": "output_schema",
    }  # fmt: skip
    assert second == {"response_format": "output_schema"}


@pytest.mark.parametrize(
    "fields",
    [{"response_format": CLIENT_FORMAT}, {"response_format": {"type": "text"}}, {"tools": TOOLS}],
)
def test_the_client_format_or_tools_win_over_the_learned_schema(
    start: Any, lorax: FakeLorax, tmp_path: Path, fields: dict[str, Any]
) -> None:
    """A client's own response_format reaches the student as sent, and a request with tools
    gets none; the other defaults still apply."""
    publish(tmp_path / "store")
    gw = start()
    post(gw, **fields)
    (got,) = lorax.received
    assert got.json.get("response_format") == fields.get("response_format")
    assert (got.json["temperature"], got.json["max_tokens"]) == (0.0, 96)
    (record,) = records(gw)
    assert record["detail"]["decoding"] == {"temperature": 0.0, "max_tokens": 96}


def test_shadow_calls_get_the_policy_and_the_teacher_the_client_bytes(
    start: Any, lorax: FakeLorax, teacher: FakeTeacher, tmp_path: Path
) -> None:
    """In shadow mode the teacher receives the client's body byte for byte; the shadow call
    gets the policy, and its record says so."""
    publish(tmp_path / "store")
    gw = start(mode="shadow")
    body = b'{"model": "tickets", "messages": [{"role": "user", "content": "hello there"}]}'
    headers = {"content-type": "application/json"}
    resp = httpx.post(gw.url + "/v1/chat/completions", content=body, headers=headers, timeout=10)
    assert resp.status_code == 200 and resp.headers["x-protege-backend"] == "teacher"
    assert "x-protege-adapter" not in resp.headers
    assert gw.wait_for(lambda: len(lorax.received) == 1)
    assert [r.body for r in teacher.received] == [body]
    assert sent(lorax) == [{"temperature": 0.0, "max_tokens": 96, "response_format": LEARNED}]
    primary, shadow = sorted(records(gw), key=lambda r: r["shadow_of"] is not None)
    assert primary["detail"] == {"why": "shadow"}
    assert shadow["detail"]["decoding"] == ALL_APPLIED and shadow["detail"]["why"] == "shadow"


@pytest.mark.parametrize("stream", [False, True])
def test_the_teachers_fallback_answer_is_the_clients_request(
    start: Any, lorax: FakeLorax, teacher: FakeTeacher, tmp_path: Path, stream: bool
) -> None:
    """A failed student is recorded with the decoding it was asked with; the teacher answering
    instead gets the client's fields (its model mapped) and nothing of the policy."""
    publish(tmp_path / "store")
    gw = start(route={"teacher_model": "teacher-large"})
    lorax.mode = "status:500"
    resp = post(gw, stream=stream)
    assert resp.status_code == 200
    assert resp.headers["x-protege-backend"] == "teacher"
    assert "x-protege-adapter" not in resp.headers
    (asked,) = teacher.received
    assert asked.json == {"model": "teacher-large", "messages": ASK, "stream": stream}
    failed, answered = records(gw)
    assert (failed["backend"], failed["detail"]) == (
        "student", {"why": "student", "decoding": ALL_APPLIED},
    )  # fmt: skip
    assert (answered["route"], answered["detail"]) == ("fallback", {"why": "student_failed"})


@pytest.mark.parametrize(
    ("override", "expected", "decoding"),
    [
        ({"temperature": 0.3, "max_tokens": 5},
         {"temperature": 0.3, "max_tokens": 5, "response_format": LEARNED},
         {"temperature": 0.3, "max_tokens": 5, "response_format": "output_schema"}),
        ({"output_schema": False}, {"temperature": 0.0, "max_tokens": 96},
         {"temperature": 0.0, "max_tokens": 96}),
        ({"published": False}, {}, None),
        ({"published": False, "temperature": 0.2}, {"temperature": 0.2}, {"temperature": 0.2}),
    ],
)  # fmt: skip
def test_the_route_override_replaces_or_sets_aside_the_policy(
    start: Any,
    lorax: FakeLorax,
    tmp_path: Path,
    override: dict[str, Any],
    expected: dict[str, Any],
    decoding: dict[str, Any] | None,
) -> None:
    """routes[i].student_decoding replaces published values key by key, turns the learned
    schema off, or leaves the published policy aside for its own values only."""
    publish(tmp_path / "store")
    gw = start(override=override)
    post(gw)
    assert sent(lorax) == [expected]
    (record,) = records(gw)
    assert record["detail"].get("decoding") == decoding


@pytest.mark.parametrize("store_uri", ["file", "s3"], indirect=True)
async def test_the_policy_is_read_from_the_store(
    start: Any, lorax: FakeLorax, store_uri: str
) -> None:
    """The manifest is read from the configured store, S3 included."""
    async with open_store(store_uri) as store:
        await store.put(manifest_key(ADAPTER), manifest())
    gw = start(store=store_uri)
    async with httpx.AsyncClient(timeout=10) as c:
        body = {"model": "tickets", "messages": ASK}
        assert (await c.post(gw.url + "/v1/chat/completions", json=body)).status_code == 200
    assert sent(lorax) == [{"temperature": 0.0, "max_tokens": 96, "response_format": LEARNED}]


def test_nothing_is_applied_until_the_manifest_is_loaded(
    start: Any, lorax: FakeLorax
) -> None:
    """An adapter whose manifest cannot be read gets the client's request as it is; the
    gateway says so once, not per request."""
    with capture_logs() as logs:
        gw = start(wait=False)
        post(gw)
        post(gw)
    assert sent(lorax) == [{}, {}]
    waiting = [e for e in logs if "decoding policy is not loaded" in e["event"]]
    assert len(waiting) == 1 and waiting[0]["adapter"] == ADAPTER
    assert all("decoding" not in (r["detail"] or {}) for r in records(gw))


def test_a_malformed_decoding_is_ignored_with_a_warning(
    start: Any, lorax: FakeLorax, tmp_path: Path
) -> None:
    """Values of the wrong type are left out, each with a warning; the rest still applies."""
    decoding = {"temperature": "cold", "max_tokens": 96, "top_p": [1]}
    publish(tmp_path / "store", decoding=decoding, output_schema="not a schema")
    with capture_logs() as logs:
        gw = start()
        resp = post(gw)
    assert resp.status_code == 200
    assert sent(lorax) == [{"max_tokens": 96}]
    problems = sorted(e["problem"] for e in logs if e["event"] == "ignored in the adapter's "
                      "manifest")  # fmt: skip
    assert [p.split(" ")[0] for p in problems] == [
        "decoding.temperature", "decoding.top_p", "output_schema",
    ]  # fmt: skip
    assert all(e["log_level"] == "warning" for e in logs if "problem" in e)


# -- checks against the learned schema ------------------------------------------------------


def test_hybrid_rejects_an_answer_outside_the_learned_schema(
    start: Any, lorax: FakeLorax, teacher: FakeTeacher, tmp_path: Path
) -> None:
    """A request carrying no schema: the student's answer violating the learned schema fails
    json_schema, and the teacher answers; the rejected record keeps the decoding."""
    publish(tmp_path / "store")
    lorax.says = lambda req: '{"priority": "righteous"}'
    gw = start(mode="hybrid")
    resp = post(gw)
    assert resp.json()["choices"][0]["message"]["content"] == "echo: hello there"
    assert resp.headers["x-protege-backend"] == "teacher"
    assert "x-protege-adapter" not in resp.headers
    assert gw.metric("protege_fallbacks_total", task="tickets", reason="check_json_schema") == 1
    rejected, answered = records(gw)
    assert rejected["detail"] == {
        "why": "hybrid", "checks": ["json_schema"], "decoding": ALL_APPLIED,
    }  # fmt: skip
    assert answered["detail"] == {"why": "check_failed"}
    assert teacher.received[0].json == {"model": "tickets", "messages": ASK}


def test_student_mode_counts_answers_outside_the_learned_schema(
    start: Any, lorax: FakeLorax, tmp_path: Path
) -> None:
    """Answers already sent are checked against the learned schema and counted."""
    publish(tmp_path / "store")
    lorax.says = lambda req: '{"priority": "righteous"}'
    gw = start(mode="student")
    post(gw)
    failures = {"task": "tickets", "check": "json_schema"}
    assert gw.wait_for(lambda: gw.metric("protege_output_check_failures_total", **failures) == 1)


def test_checks_fall_back_on_the_learned_schema_last() -> None:
    """The request's schema, then the route's configured one, then the learned one."""
    learned = schema_validator(SCHEMA)
    answer = {"choices": [{"message": {"content": '{"priority": "urgent"}'}}]}
    plain = OutputChecks(OutputChecksConfig())
    configured = OutputChecks(OutputChecksConfig(json_schema={"type": "object"}))
    asked = {**BASE, "response_format": CLIENT_FORMAT}
    assert plain.run(BASE, answer, learned) == ("json_schema",)
    assert plain.run(BASE, answer) == ()
    assert plain.run(asked, answer, learned) == ()
    assert configured.run(BASE, answer, learned) == ()
    text = {"choices": [{"message": {"content": "urgent"}}]}
    assert plain.run(BASE, text, learned) == ("json_parse",)


# -- who answered ----------------------------------------------------------------------------


@pytest.mark.parametrize("stream", [False, True])
def test_every_answer_says_who_answered(
    start: Any, lorax: FakeLorax, teacher: FakeTeacher, tmp_path: Path, stream: bool
) -> None:
    """x-protege-backend on student, teacher and fallback answers, and on upstream errors;
    x-protege-adapter only where a student answered."""
    publish(tmp_path / "store")
    gw = start()
    student = post(gw, stream=stream)
    taught = post(gw, model="drafts", stream=stream)
    lorax.mode = "status:503"
    fallback = post(gw, stream=stream)
    lorax.mode = "status:422"
    refused = post(gw, stream=stream)
    teacher.mode = "status:429"
    limited = post(gw, model="drafts", stream=stream)
    seen = [
        (r.status_code, r.headers.get("x-protege-backend"), r.headers.get("x-protege-adapter"))
        for r in (student, taught, fallback, refused, limited)
    ]
    assert seen == [
        (200, "student", ADAPTER),
        (200, "teacher", None),
        (200, "teacher", None),
        (422, "student", ADAPTER),
        (429, "teacher", None),
    ]
    assert all(r.headers["x-protege-request-id"] for r in (student, taught, fallback))


@pytest.mark.parametrize("stream", [False, True])
def test_hybrid_answers_say_the_student_answered(
    start: Any, lorax: FakeLorax, tmp_path: Path, stream: bool
) -> None:
    """A checked student answer (replayed as a stream when asked) names its adapter."""
    publish(tmp_path / "store")
    gw = start(mode="hybrid")
    resp = post(gw, stream=stream)
    assert resp.status_code == 200
    assert resp.headers["x-protege-backend"] == "student"
    assert resp.headers["x-protege-adapter"] == ADAPTER


def test_a_failed_teacher_says_which_backend_failed(
    start: Any, teacher: FakeTeacher
) -> None:
    """A teacher that times out is the client's 504, naming the teacher."""
    teacher.mode = "slow:2"
    gw = start(wait=False, teacher={"read_timeout_s": 0.3})
    resp = post(gw, model="drafts")
    assert resp.status_code == 504
    assert resp.headers["x-protege-backend"] == "teacher"
    assert "x-protege-adapter" not in resp.headers
