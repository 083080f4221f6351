"""The student backend: LoRAX's answers reach OpenAI clients as OpenAI's, or the teacher answers."""

from __future__ import annotations

import socket
import time
from typing import Any

import httpx
import openai
import orjson
import pytest
from structlog.testing import capture_logs

from gateway.student import Stamp, StudentStream, error_parts, student_body, usage_of
from tests.conftest import RunningGateway
from tests.fake_lorax import PROMPT_TOKENS, FakeLorax
from tests.fake_teacher import FakeTeacher
from tests.spooled import spooled_records

ADAPTER = "tickets/v3"
ROUTE = {"alias": "tickets", "task": "tickets", "rollout": {"adapter": ADAPTER, "mode": "student"}}
HELLO = [{"role": "user", "content": "hello there"}]


@pytest.fixture
def gw(make_gateway: Any, lorax: FakeLorax) -> RunningGateway:
    gateway: RunningGateway = make_gateway(student={"base_url": lorax.base_url}, routes=[ROUTE])
    return gateway


def client(gw: RunningGateway, key: str = "client-key") -> openai.OpenAI:
    return openai.OpenAI(base_url=gw.url + "/v1", api_key=key, max_retries=0, timeout=10)


def aclient(gw: RunningGateway) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=gw.url + "/v1", api_key="k", max_retries=0, timeout=10)


def records(gw: RunningGateway) -> list[dict[str, Any]]:
    gw.stop()
    return spooled_records(gw.settings.spool.dir)


def stream_body(gw: RunningGateway, **fields: Any) -> tuple[int, bytes]:
    body = {"model": "tickets", "messages": HELLO, "stream": True, **fields}
    with httpx.stream("POST", gw.url + "/v1/chat/completions", json=body, timeout=10) as resp:
        return resp.status_code, resp.read()


def events(body: bytes) -> list[Any]:
    return [orjson.loads(e.removeprefix(b"data: ")) for e in body.split(b"\n\n") if e]


# -- answers ---------------------------------------------------------------------------------


def test_answer_is_openai_shaped(
    gw: RunningGateway, lorax: FakeLorax, teacher: FakeTeacher
) -> None:
    """A student answer has a real id, a creation time, the alias as model, and usage."""
    asked = int(time.time())
    raw = client(gw).chat.completions.with_raw_response.create(model="tickets", messages=HELLO)
    answered = time.time()
    out, rid = raw.parse(), raw.headers["x-protege-request-id"]
    assert (raw.headers["x-protege-backend"], raw.headers["x-protege-adapter"]) == (
        "student", ADAPTER,
    )  # fmt: skip
    assert out.id == f"chatcmpl-{rid}"
    assert out.object == "chat.completion" and out.model == "tickets"
    assert asked <= out.created <= answered
    assert out.choices[0].message.content == "student: hello there"
    assert out.choices[0].finish_reason == "stop"
    assert out.usage is not None
    assert (out.usage.prompt_tokens, out.usage.completion_tokens) == (PROMPT_TOKENS, 3)
    assert out.usage.total_tokens == PROMPT_TOKENS + 3
    assert lorax.received[-1].json["model"] == ADAPTER and teacher.received == []
    labels = {"task": "tickets", "backend": "student", "route": "student", "status": "200"}
    assert gw.metric("protege_requests_total", **labels) == 1
    (record,) = records(gw)
    assert (record["backend"], record["adapter"], record["route"]) == (
        "student",
        ADAPTER,
        "student",
    )
    assert record["request_id"] == rid and record["complete"] is True
    assert (record["prompt_tokens"], record["completion_tokens"]) == (PROMPT_TOKENS, 3)
    assert orjson.loads(record["response"])["model"] == "tickets"


async def test_async_answer_with_stop_sequence(gw: RunningGateway, lorax: FakeLorax) -> None:
    """A stop sequence ends with finish_reason stop (LoRAX says content_filter)."""
    async with aclient(gw) as c:
        out = await c.chat.completions.create(model="tickets", messages=HELLO, stop=["\n"])
    assert out.choices[0].finish_reason == "stop"
    assert out.id.startswith("chatcmpl-") and out.id != "chatcmpl-null"
    assert lorax.received[-1].json["stop"] == ["\n"]


async def test_async_stream_with_usage_chunk(gw: RunningGateway, lorax: FakeLorax) -> None:
    """Streamed chunks share one real id, created and the alias; usage comes in a last chunk."""
    async with aclient(gw) as c:
        stream = await c.chat.completions.create(
            model="tickets",
            messages=HELLO,
            stream=True,
            stream_options={"include_usage": True},
        )
        chunks = [chunk async for chunk in stream]
    assert len({c.id for c in chunks}) == 1 and chunks[0].id.startswith("chatcmpl-")
    assert chunks[0].id != "chatcmpl-null"
    assert {(c.object, c.model) for c in chunks} == {("chat.completion.chunk", "tickets")}
    assert all(c.created > 0 for c in chunks)
    *content, usage = chunks
    assert "".join(c.choices[0].delta.content or "" for c in content) == "student: hello there"
    assert content[-1].choices[0].finish_reason == "stop"
    assert all(c.usage is None for c in content)
    assert usage.choices == [] and usage.usage is not None
    assert (usage.usage.prompt_tokens, usage.usage.completion_tokens) == (PROMPT_TOKENS, 3)
    sent = lorax.received[-1].json
    assert "stream_options" not in sent and sent["stream"] is True


def test_sync_stream_without_usage_is_still_recorded_with_it(
    gw: RunningGateway, lorax: FakeLorax
) -> None:
    """Without include_usage no chunk carries usage, yet the record has the token counts."""
    status, body = stream_body(gw)
    assert status == 200 and body.endswith(b"data: [DONE]\n\n")
    chunks = events(body.removesuffix(b"data: [DONE]\n\n"))
    assert all("usage" not in c for c in chunks)
    assert {c["id"] for c in chunks} == {chunks[0]["id"]} and chunks[0]["id"] != "null"
    text = "".join(
        c.choices[0].delta.content or ""
        for c in client(gw).chat.completions.create(model="tickets", messages=HELLO, stream=True)
        if c.choices
    )
    assert text == "student: hello there"
    first, _ = records(gw)
    assert first["complete"] is True and first["stream"] is True and first["route"] == "student"
    assert (first["prompt_tokens"], first["completion_tokens"]) == (PROMPT_TOKENS, 3)
    assert (
        orjson.loads(first["response"])["choices"][0]["message"]["content"]
        == "student: hello there"
    )


@pytest.mark.parametrize("stream", [False, True])
def test_client_key_never_reaches_the_student(
    gw: RunningGateway, lorax: FakeLorax, stream: bool
) -> None:
    """No Authorization, api_token or adapter_source of the client's reaches LoRAX."""
    client(gw, key="client-secret-1").chat.completions.create(
        model="tickets",
        messages=HELLO,
        stream=stream,
        extra_body={"api_token": "client-secret-1", "adapter_source": "local"},
    )
    (received,) = lorax.received
    assert "authorization" not in {k.lower() for k in received.headers}
    assert "client-secret-1" not in str(received.headers) + received.body.decode()
    assert "adapter_source" not in received.json and lorax.api_tokens == [None]


def test_student_key_is_sent_when_configured(make_gateway: Any, lorax: FakeLorax) -> None:
    """A configured student key is the only credential LoRAX sees."""
    student = {"base_url": lorax.base_url, "api_key": "student-key"}
    gw = make_gateway(student=student, routes=[ROUTE])
    client(gw, key="client-secret-2").chat.completions.create(model="tickets", messages=HELLO)
    assert lorax.received[-1].headers["Authorization"] == "Bearer student-key"
    assert lorax.api_tokens == ["student-key"]


# -- failures --------------------------------------------------------------------------------


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


@pytest.mark.parametrize(
    ("mode", "stream", "status", "reason"),
    [
        ("status:500", False, 502, "upstream_error"),
        ("status:503", True, 502, "upstream_error"),
        ("status:424", False, 502, "upstream_error"),
        ("status:429", True, 502, "upstream_error"),
        ("error_first", True, 502, "upstream_error"),
        ("slow:3", False, 504, "upstream_timeout"),
        ("unreachable", True, 502, "upstream_unreachable"),
    ],
)
def test_student_failure_before_first_byte_falls_back(
    make_gateway: Any,
    lorax: FakeLorax,
    teacher: FakeTeacher,
    mode: str,
    stream: bool,
    status: int,
    reason: str,
) -> None:
    """The teacher answers; the records say the student failed and the teacher fell back."""
    url = f"http://127.0.0.1:{closed_port()}/v1" if mode == "unreachable" else lorax.base_url
    student = {"base_url": url, "read_timeout_s": 0.3, "connect_retries": 0}
    gw = make_gateway(student=student, routes=[ROUTE])
    lorax.mode = mode
    raw = client(gw).chat.completions.with_raw_response.create(
        model="tickets", messages=HELLO, stream=stream
    )
    rid = raw.headers["x-protege-request-id"]
    assert raw.headers["x-protege-backend"] == "teacher"
    assert "x-protege-adapter" not in raw.headers
    if stream:
        text = "".join(c.choices[0].delta.content or "" for c in raw.parse() if c.choices)
    else:
        text = raw.parse().choices[0].message.content or ""
    assert text == "echo: hello there" and len(teacher.received) == 1
    assert gw.metric("protege_fallbacks_total", task="tickets", reason=reason) == 1
    failed, answered = sorted(records(gw), key=lambda r: r["backend"] == "teacher")
    assert (failed["backend"], failed["adapter"], failed["route"]) == (
        "student",
        ADAPTER,
        "student",
    )
    assert failed["complete"] is False and failed["status"] == status and failed["error"]
    assert failed["request_id"] != rid
    assert (answered["backend"], answered["route"], answered["adapter"]) == (
        "teacher",
        "fallback",
        None,
    )
    assert answered["request_id"] == rid and answered["complete"] is True


def test_student_4xx_reaches_the_client_translated(
    gw: RunningGateway, lorax: FakeLorax, teacher: FakeTeacher
) -> None:
    """A LoRAX validation error is the client's 422 in OpenAI's error shape; no fallback."""
    lorax.mode = "status:422"
    with pytest.raises(openai.UnprocessableEntityError) as info:
        client(gw).chat.completions.create(model="tickets", messages=HELLO)
    error = info.value.response.json()["error"]
    assert error == {
        "message": "fake lorax error 422",
        "type": "invalid_request_error",
        "param": None,
        "code": "validation",
    }
    assert teacher.received == []
    (record,) = records(gw)
    assert (
        record["status"] == 422 and record["complete"] is False and record["backend"] == "student"
    )


def test_mid_stream_error_is_an_openai_error_event(
    gw: RunningGateway, lorax: FakeLorax, teacher: FakeTeacher
) -> None:
    """A LoRAX error event after the first byte: an OpenAI error event, no [DONE], incomplete."""
    lorax.mode = "error_mid"
    status, body = stream_body(gw)
    assert status == 200 and b"[DONE]" not in body
    *chunks, last = events(body)
    assert [c["choices"][0]["delta"]["content"] for c in chunks] == ["student:", " hello"]
    assert set(last["error"]) == {"message", "type", "param", "code"}
    assert last["error"]["code"] == "stream_interrupted"
    assert "CUDA error" in last["error"]["message"]
    with pytest.raises(openai.APIError, match="CUDA error"):
        for _ in client(gw).chat.completions.create(model="tickets", messages=HELLO, stream=True):
            pass
    assert teacher.received == []
    for record in records(gw):
        assert record["complete"] is False and "CUDA error" in record["error"]
        assert (record["backend"], record["route"]) == ("student", "student")
    reason = {"task": "tickets", "reason": "upstream_error"}
    assert gw.metric("protege_incomplete_streams_total", **reason) == 2


# -- routing and listing ---------------------------------------------------------------------


def test_teacher_routes_and_other_endpoints_skip_the_student(
    make_gateway: Any, lorax: FakeLorax, teacher: FakeTeacher
) -> None:
    """Mode teacher, unrouted models and non-chat endpoints are answered by the teacher."""
    routes = [ROUTE, {**ROUTE, "alias": "drafts", "task": "drafts", "rollout": {"mode": "teacher"}}]
    gw = make_gateway(student={"base_url": lorax.base_url}, routes=routes)
    c = client(gw)
    c.chat.completions.create(model="drafts", messages=HELLO)
    c.chat.completions.create(model="gpt-4o", messages=HELLO)
    c.completions.create(model="tickets", prompt="hi")
    assert lorax.received == [] and len(teacher.received) == 3
    assert {(r["backend"], r["route"]) for r in records(gw)} == {("teacher", "teacher")}


def test_models_list_routes_with_their_students(gw: RunningGateway) -> None:
    """/v1/models lists each alias with its task, mode and adapter, then the teacher's models."""
    models = list(client(gw).models.list())
    assert [m.id for m in models] == ["tickets", "teacher-large"]
    assert models[0].owned_by == "protege"
    assert (models[0].model_extra or {})["protege"] == {
        "task": "tickets",
        "mode": "student",
        "adapter": ADAPTER,
    }


# -- normalization, pure ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "usage"),
    [
        ({"prompt_tokens": 5, "completion_tokens": 3, "total_tokens": 8}, (5, 3, 8)),
        ({"prompt_tokens": 5, "completion_tokens": None, "total_tokens": 8}, (5, 3, 8)),
        ({"prompt_tokens": 5, "completion_tokens": 3}, (5, 3, 8)),
        ({"prompt_tokens": 5, "total_tokens": 2}, None),
        ({"completion_tokens": 3}, None),
        (None, None),
        ("5", None),
    ],
)
def test_usage_of(raw: Any, usage: tuple[int, int, int] | None) -> None:
    """LoRAX usage becomes OpenAI usage; completion tokens are derived when LoRAX omits them."""
    out = usage_of(raw)
    got = (
        None
        if out is None
        else (out["prompt_tokens"], out["completion_tokens"], out["total_tokens"])
    )
    assert got == usage


@pytest.mark.parametrize(
    ("obj", "expected"),
    [
        ({"id": "null", "created": 0, "model": "null"}, ("chatcmpl-R", 1700, "alias")),
        ({"created": None}, ("chatcmpl-R", 1700, "alias")),
        ({"id": "cmpl-7", "created": 42, "model": "tickets/v3"}, ("cmpl-7", 42, "alias")),
    ],
)
def test_stamp_apply(obj: dict[str, Any], expected: tuple[str, int, str]) -> None:
    """A missing or "null" id and a zero creation time are replaced; the model is the alias."""
    Stamp("chatcmpl-R", 1700, "alias").apply(obj, "chat.completion")
    assert (obj["id"], obj["created"], obj["model"], obj["object"]) == (
        *expected,
        "chat.completion",
    )


@pytest.mark.parametrize(
    ("body", "parts"),
    [
        (
            {"error": "Input validation error", "error_type": "validation"},
            ("Input validation error", "validation"),
        ),
        (
            {"error": {"message": "bad", "type": "invalid_request_error", "code": None}},
            ("bad", "invalid_request_error"),
        ),
        ({"error": ""}, ("no error message", None)),
        (None, ("no error message", None)),
    ],
)
def test_error_parts(body: Any, parts: tuple[str, str | None]) -> None:
    """LoRAX's string errors and OpenAI's error objects both give a message and a code."""
    assert error_parts(body) == parts


def test_stream_edit_moves_usage_to_the_end() -> None:
    """Usage leaves the chunks for one last chunk: the client's if it asked, else the record's."""
    block = b"".join(
        b"data: " + orjson.dumps(chunk) + b"\n\n"
        for chunk in (
            {"id": "null", "created": 0, "model": "null", "choices": [], "usage": None},
            {"id": "null", "choices": [{"index": 0, "delta": {"content": "x"}}], "usage": None},
            {"choices": [], "usage": {"prompt_tokens": 2, "total_tokens": 3}},
        )
    )
    for include_usage in (True, False):
        edit = StudentStream(Stamp("chatcmpl-R", 1700, "alias"), include_usage)
        sent = events(edit.events(block))
        assert [c["id"] for c in sent] == ["chatcmpl-R", "chatcmpl-R"]
        assert all("usage" not in c for c in sent)
        tail, recorded = edit.tail()
        (usage_chunk,) = events(tail or recorded)
        assert usage_chunk["usage"] == {
            "prompt_tokens": 2,
            "completion_tokens": 1,
            "total_tokens": 3,
        }
        assert bool(tail) is include_usage


def test_stream_edit_without_usage_says_so() -> None:
    """A stream with no usage gets no usage chunk, and the gateway logs why."""
    edit = StudentStream(Stamp("chatcmpl-R", 1700, "alias"), include_usage=True)
    edit.events(b'data: {"id": "null", "choices": [{"index": 0, "delta": {"content": "x"}}]}\n\n')
    with capture_logs() as logs:
        assert edit.tail() == (b"", b"")
    assert [e["log_level"] for e in logs] == ["warning"] and "usage" in logs[0]["event"]


def test_student_body_drops_what_lorax_must_not_get() -> None:
    """The adapter replaces the model; credentials, adapter source and stream options go."""
    fields = {
        "model": "tickets",
        "messages": HELLO,
        "api_token": "x",
        "adapter_source": "hub",
        "stream_options": {"include_usage": True},
        "max_completion_tokens": 9,
        "temperature": 0.1,
    }
    body = orjson.loads(student_body(fields, ADAPTER))
    assert body == {"model": ADAPTER, "messages": HELLO, "max_tokens": 9, "temperature": 0.1}
