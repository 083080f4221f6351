"""SSE boundaries and stream assembly, as pure functions."""

from __future__ import annotations

import orjson
import pytest

from gateway.sse import assemble, error_of, event_end, iter_data, split_done
from tests.fake_teacher import completion, stream_events

TOOLS = [{"type": "function", "function": {"name": "lookup", "parameters": {}}}]


@pytest.mark.parametrize(
    ("buf", "end"),
    [
        (b"", 0),
        (b"data: {}", 0),
        (b"data: 1\n\ndata: 2", 9),
        (b"data: 1\r\n\r\ndata: 2\r\n\r\n", 22),
        (b"data: 1\r\rdata", 9),
    ],
)
def test_event_end(buf: bytes, end: int) -> None:
    """event_end finds the end of the last complete event for every SSE line ending."""
    assert event_end(buf) == end


@pytest.mark.parametrize(
    ("block", "kept", "held"),
    [
        (b"data: {}\n\ndata: [DONE]\n\n", b"data: {}\n\n", b"data: [DONE]\n\n"),
        (b"data: [DONE]\n\n", b"", b"data: [DONE]\n\n"),
        (b"data:[DONE]\r\n\r\n", b"", b"data:[DONE]\r\n\r\n"),
        (b'data: {"t": "data: [DONE]"}\n\n', b'data: {"t": "data: [DONE]"}\n\n', b""),
        (b"data: {}\n\n", b"data: {}\n\n", b""),
    ],
)
def test_split_done(block: bytes, kept: bytes, held: bytes) -> None:
    """Only a real closing [DONE] event is split off, never [DONE] inside a payload."""
    assert split_done(block) == (kept, held)


def test_iter_data_joins_multiline_and_skips_comments() -> None:
    """Multi-line data is joined with newlines; comment and id lines are ignored."""
    raw = b": keep-alive\n\nid: 1\ndata: a\ndata: b\n\ndata:c\n\n"
    assert list(iter_data(raw)) == [b"a\nb", b"c"]


@pytest.mark.parametrize(
    "request_",
    [
        {"model": "m", "messages": [{"role": "user", "content": "one two three"}]},
        {"model": "m", "messages": [{"role": "user", "content": "w"}], "tools": TOOLS},
        {
            "model": "m",
            "messages": [{"role": "user", "content": "x"}],
            "stream_options": {"include_usage": True},
        },
    ],
)
def test_assembled_stream_equals_plain_answer(request_: dict[str, object]) -> None:
    """A streamed answer assembles into the same choices (and usage) as the plain answer."""
    raw = b"".join(stream_events(request_, "/v1/chat/completions"))
    out = assemble(raw, "chat.completions")
    plain = completion(request_, "/v1/chat/completions")
    assert out.done and out.error is None and out.response is not None
    got, want = out.response["choices"][0], plain["choices"][0]
    assert got["message"]["content"] == want["message"]["content"]
    assert got["message"].get("tool_calls") == want["message"].get("tool_calls")
    assert got["finish_reason"] == want["finish_reason"]
    if "stream_options" in request_:
        assert out.usage == plain["usage"]


def test_assemble_legacy_completions_and_multiple_choices() -> None:
    """Text completions concatenate per choice index, choices kept in index order."""
    chunks = [
        {"id": "c", "object": "text_completion", "choices": [{"index": 1, "text": "B"}]},
        {"id": "c", "choices": [{"index": 0, "text": "A", "finish_reason": None}]},
        {"id": "c", "choices": [{"index": 0, "text": "a", "finish_reason": "stop"}]},
    ]
    raw = b"".join(b"data: " + orjson.dumps(c) + b"\n\n" for c in chunks) + b"data: [DONE]\n\n"
    out = assemble(raw, "completions")
    assert out.response is not None
    assert [c["text"] for c in out.response["choices"]] == ["Aa", "B"]
    assert out.response["choices"][0]["finish_reason"] == "stop"


def test_assemble_reports_error_event_and_missing_done() -> None:
    """An error event mid-stream and a missing [DONE] are both reported."""
    raw = b'data: {"choices": []}\n\ndata: {"error": {"message": "boom"}}\n\n'
    out = assemble(raw, "chat.completions")
    assert out.error == {"message": "boom"} and not out.done


@pytest.mark.parametrize(
    ("data", "error"),
    [
        (b'{"error": {"message": "x"}}', {"message": "x"}),
        (b'{"error": "plain string"}', "plain string"),
        (b'{"choices": [{"delta": {"content": "error"}}]}', None),
        (b"not json", None),
    ],
)
def test_error_of(data: bytes, error: object) -> None:
    """error_of finds error objects (and LoRAX's string errors), nothing else."""
    assert error_of(data) == error
