"""The official openai client through the gateway: nothing changes for it, all is captured."""

from __future__ import annotations

from typing import Any

import openai
import orjson

from tests.conftest import RunningGateway
from tests.fake_teacher import FakeTeacher
from tests.spooled import spooled_records

TOOLS: list[Any] = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Weather for a city",
            "parameters": {
                "type": "object",
                "properties": {"city": {"type": "string"}},
                "required": ["city"],
            },
        },
    }
]
SCHEMA: Any = {
    "type": "json_schema",
    "json_schema": {
        "name": "sentiment",
        "strict": True,
        "schema": {
            "type": "object",
            "properties": {"label": {"type": "string"}, "confidence": {"type": "number"}},
            "required": ["label", "confidence"],
            "additionalProperties": False,
        },
    },
}


def client(gw: RunningGateway, key: str = "client-key") -> openai.OpenAI:
    return openai.OpenAI(base_url=gw.url + "/v1", api_key=key, max_retries=0, timeout=10)


def aclient(gw: RunningGateway) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=gw.url + "/v1", api_key="k", max_retries=0, timeout=10)


def test_sync_chat_is_relayed_byte_for_byte(gateway: RunningGateway, teacher: FakeTeacher) -> None:
    """Teacher receives exactly the client's body; the client gets exactly the teacher's answer."""
    raw = client(gateway).chat.completions.with_raw_response.create(
        model="gpt-4o-mini",
        messages=[{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"}],
        tools=TOOLS,
        tool_choice="auto",
        seed=7,
        n=1,
        logprobs=False,
        metadata={"app": "tests"},
        user="alice",
        extra_body={"unknown_field": {"kept": True}},
    )
    assert teacher.received[-1].body == raw.http_response.request.content
    assert raw.http_response.content == teacher.sent[-1]
    completion = raw.parse()
    assert completion.choices[0].message.tool_calls[0].function.name == "get_weather"
    assert teacher.received[-1].json["unknown_field"] == {"kept": True}


def test_client_key_is_never_forwarded(gateway: RunningGateway, teacher: FakeTeacher) -> None:
    """The teacher sees the gateway's teacher key, never the client's key."""
    client(gateway, key="client-secret-123").chat.completions.create(
        model="m", messages=[{"role": "user", "content": "x"}]
    )
    headers = {k.lower(): v for k, v in teacher.received[-1].headers.items()}
    assert headers["authorization"] == "Bearer teacher-secret"
    assert "client-secret-123" not in str(headers)


def test_response_format_json_schema_round_trip(
    gateway: RunningGateway, teacher: FakeTeacher
) -> None:
    """A json_schema response_format reaches the teacher as sent, and its JSON answer returns."""
    out = client(gateway).chat.completions.create(
        model="m", messages=[{"role": "user", "content": "great!"}], response_format=SCHEMA
    )
    assert teacher.received[-1].json["response_format"] == SCHEMA
    assert orjson.loads(out.choices[0].message.content or "")["label"] == "positive"


async def test_async_stream_passes_chunks_through(
    gateway: RunningGateway, teacher: FakeTeacher
) -> None:
    """An async streamed request gets every teacher event, usage chunk included, in order."""
    async with (
        aclient(gateway) as c,
        c.chat.completions.with_streaming_response.create(
            model="m",
            messages=[{"role": "user", "content": "tell me a story"}],
            stream=True,
            stream_options={"include_usage": True},
        ) as resp,
    ):
        body = b"".join([part async for part in resp.iter_bytes()])
    assert body == teacher.sent[-1]
    assert body.endswith(b"data: [DONE]\n\n")
    assert teacher.received[-1].json["stream_options"] == {"include_usage": True}


async def test_async_stream_with_tools_parses(gateway: RunningGateway) -> None:
    """The openai client assembles a streamed tool call relayed by the gateway."""
    async with aclient(gateway) as c:
        stream = await c.chat.completions.create(
            model="m", messages=[{"role": "user", "content": "weather?"}], tools=TOOLS, stream=True
        )
        args = ""
        async for chunk in stream:
            for choice in chunk.choices:
                for call in choice.delta.tool_calls or []:
                    args += call.function.arguments or "" if call.function else ""
    assert orjson.loads(args) == {"city": "Paris"}


def test_sync_stream_and_records(gateway: RunningGateway, teacher: FakeTeacher) -> None:
    """Streams are captured assembled into one completion, with usage, complete=true."""
    c = client(gateway)
    text = "".join(
        chunk.choices[0].delta.content or ""
        for chunk in c.chat.completions.create(
            model="m",
            messages=[{"role": "user", "content": "a b c"}],
            stream=True,
            stream_options={"include_usage": True},
        )
        if chunk.choices
    )
    assert text == "echo: a b c"
    gateway.stop()
    (record,) = spooled_records(gateway.settings.spool.dir)
    assert record["stream"] is True and record["complete"] is True
    response = orjson.loads(record["response"])
    assert response["object"] == "chat.completion"
    assert response["choices"][0]["message"]["content"] == "echo: a b c"
    assert (record["prompt_tokens"], record["completion_tokens"]) == (11, 7)
    assert record["ttft_ms"] is not None and record["ttft_ms"] <= record["latency_ms"]


def test_completions_and_embeddings_pass_through(
    gateway: RunningGateway, teacher: FakeTeacher
) -> None:
    """Legacy completions and embeddings are forwarded and captured with their endpoint."""
    c = client(gateway)
    assert c.completions.create(model="m", prompt="say hi").choices[0].text == "echo: say hi"
    emb = c.embeddings.create(model="e", input=["a", "b"])
    assert len(emb.data) == 2
    gateway.stop()
    endpoints = sorted(r["endpoint"] for r in spooled_records(gateway.settings.spool.dir))
    assert endpoints == ["completions", "embeddings"]


def test_models_lists_aliases_and_teacher_models(make_gateway: Any) -> None:
    """/v1/models lists the configured aliases, then the teacher's own models."""
    gw = make_gateway(routes=[{"alias": "tickets", "task": "tickets", "teacher_model": "big"}])
    ids = [m.id for m in client(gw).models.list()]
    assert ids == ["tickets", "teacher-large"]


def test_alias_maps_task_and_teacher_model(make_gateway: Any, teacher: FakeTeacher) -> None:
    """A route alias sends the teacher its model, and records the route's task."""
    gw = make_gateway(routes=[{"alias": "tickets", "task": "support", "teacher_model": "big"}])
    client(gw).chat.completions.create(
        model="tickets", messages=[{"role": "user", "content": "x"}], temperature=0.2
    )
    sent = teacher.received[-1].json
    assert sent["model"] == "big" and sent["temperature"] == 0.2
    gw.stop()
    (record,) = spooled_records(gw.settings.spool.dir)
    assert record["task"] == "support"
    assert orjson.loads(record["request"])["model"] == "tickets"


def test_every_response_carries_id_and_server_timing(gateway: RunningGateway) -> None:
    """x-protege-request-id matches the record; Server-Timing reports the gateway's overhead."""
    raw = client(gateway).chat.completions.with_raw_response.create(
        model="m", messages=[{"role": "user", "content": "x"}]
    )
    rid = raw.headers["x-protege-request-id"]
    assert "gateway;dur=" in raw.headers["server-timing"]
    assert raw.headers["x-ratelimit-remaining-requests"] == "99"
    gateway.stop()
    (record,) = spooled_records(gateway.settings.spool.dir)
    assert record["request_id"] == rid
    assert record["client"] is not None and record["client"] != "client-key"
