"""Server-sent events as OpenAI streams them: splitting, and assembling a stream into one answer.

Pure functions over bytes and dicts. The relay uses the cheap boundary helpers on the event loop;
assembly runs on the spool writer thread when a streamed exchange becomes a record.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import orjson

DONE = b"[DONE]"
_BOUNDARIES = (b"\n\n", b"\r\n\r\n", b"\r\r")
_DONE_EVENT = re.compile(rb"(?:^|\n|\r)data: ?\[DONE\][ \t]*(?:\r\n|\n|\r)(?:\r\n|\n|\r)?$")


def event_end(buf: bytes) -> int:
    """Offset just past the last complete event in ``buf`` (0 when there is none)."""
    end = 0
    for sep in _BOUNDARIES:
        i = buf.rfind(sep)
        if i >= 0 and i + len(sep) > end:
            end = i + len(sep)
    return end


def split_done(block: bytes) -> tuple[bytes, bytes]:
    """``block`` (complete events) split before a closing ``data: [DONE]`` event, if any."""
    m = _DONE_EVENT.search(block, max(0, len(block) - 32))
    if m is None:
        return block, b""
    start = m.start() + (1 if block[m.start() : m.start() + 1] in (b"\n", b"\r") else 0)
    return block[:start], block[start:]


def iter_data(raw: bytes) -> Iterator[bytes]:
    """The ``data`` payload of each event in ``raw``, multi-line data joined with newlines."""
    text = raw.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
    for event in text.split(b"\n\n"):
        lines = [line for line in event.split(b"\n") if line.startswith(b"data:")]
        if lines:
            yield b"\n".join(line[6:] if line[5:6] == b" " else line[5:] for line in lines)


def json_member(data: bytes, key: str) -> Any | None:
    """``key`` of the JSON object in ``data``; None when absent or not a JSON object.

    A substring test first keeps the common case (no such key) free of a parse.
    """
    if f'"{key}"'.encode() not in data:
        return None
    try:
        obj = orjson.loads(data)
    except orjson.JSONDecodeError:
        return None
    return obj.get(key) if isinstance(obj, dict) else None


def error_of(data: bytes) -> Any | None:
    """The ``error`` member of an event payload, or None when the event is not an error."""
    return json_member(data, "error")


def error_event(message: str, type_: str, code: str | None) -> bytes:
    """An SSE event carrying an OpenAI error object, sent when a stream cannot finish."""
    error = {"message": message, "type": type_, "param": None, "code": code}
    return b"data: " + orjson.dumps({"error": error}) + b"\n\n"


class Assembly:
    """What a stream amounted to: the assembled answer, and whether it finished cleanly."""

    __slots__ = ("done", "error", "response", "usage")

    def __init__(self) -> None:
        self.response: dict[str, Any] | None = None
        self.usage: dict[str, Any] | None = None
        self.done = False
        self.error: Any | None = None


def assemble(raw: bytes, endpoint: str) -> Assembly:
    """Fold a raw SSE stream of ``chat.completions`` or ``completions`` chunks into one answer.

    The result has the shape of the non-streamed response (``chat.completion`` with messages,
    or ``text_completion`` with text), including tool calls, refusals, logprobs and usage.
    """
    out = Assembly()
    chunks: list[dict[str, Any]] = []
    for data in iter_data(raw):
        if data.strip() == DONE:
            out.done = True
            continue
        try:
            obj = orjson.loads(data)
        except orjson.JSONDecodeError:
            continue
        if not isinstance(obj, dict):
            continue
        if "error" in obj:
            out.error = obj["error"]
            continue
        chunks.append(obj)
    if chunks:
        out.response = _fold(chunks, endpoint)
        out.usage = out.response.get("usage")
    return out


def _fold(chunks: list[dict[str, Any]], endpoint: str) -> dict[str, Any]:
    first = chunks[0]
    chat = endpoint == "chat.completions"
    result: dict[str, Any] = {
        "id": first.get("id"),
        "object": "chat.completion" if chat else "text_completion",
        "created": first.get("created"),
        "model": first.get("model"),
    }
    choices: dict[int, dict[str, Any]] = {}
    for chunk in chunks:
        for key in ("system_fingerprint", "service_tier"):
            if chunk.get(key) is not None:
                result[key] = chunk[key]
        if chunk.get("usage"):
            result["usage"] = chunk["usage"]
        for delta_choice in chunk.get("choices") or ():
            index = delta_choice.get("index", 0)
            choice = choices.setdefault(index, _new_choice(index, chat))
            if chat:
                _merge_chat_delta(choice, delta_choice)
            else:
                choice["text"] += delta_choice.get("text") or ""
                _merge_logprobs(choice, delta_choice.get("logprobs"))
            if delta_choice.get("finish_reason") is not None:
                choice["finish_reason"] = delta_choice["finish_reason"]
    result["choices"] = [_finish_choice(choices[i]) for i in sorted(choices)]
    return result


def _new_choice(index: int, chat: bool) -> dict[str, Any]:
    if chat:
        message = {"role": "assistant", "content": None}
        return {"index": index, "message": message, "logprobs": None, "finish_reason": None}
    return {"index": index, "text": "", "logprobs": None, "finish_reason": None}


def _merge_chat_delta(choice: dict[str, Any], delta_choice: dict[str, Any]) -> None:
    delta = delta_choice.get("delta") or {}
    message = choice["message"]
    if delta.get("role"):
        message["role"] = delta["role"]
    for key in ("content", "refusal", "reasoning_content"):
        if delta.get(key) is not None:
            message[key] = (message.get(key) or "") + delta[key]
    for call in delta.get("tool_calls") or ():
        calls = message.setdefault("_calls", {})
        slot = calls.setdefault(call.get("index", len(calls)), {"function": {"arguments": ""}})
        for key in ("id", "type"):
            if call.get(key):
                slot[key] = call[key]
        fn = call.get("function") or {}
        if fn.get("name"):
            slot["function"]["name"] = fn["name"]
        slot["function"]["arguments"] += fn.get("arguments") or ""
    if delta.get("function_call"):
        fc = message.setdefault("function_call", {"name": "", "arguments": ""})
        fc["name"] += delta["function_call"].get("name") or ""
        fc["arguments"] += delta["function_call"].get("arguments") or ""
    _merge_logprobs(choice, delta_choice.get("logprobs"))


def _merge_logprobs(choice: dict[str, Any], logprobs: Any) -> None:
    if not isinstance(logprobs, dict):
        return
    merged = choice["logprobs"] = choice["logprobs"] or {}
    for key, value in logprobs.items():
        if isinstance(value, list):
            merged[key] = (merged.get(key) or []) + value
        else:
            merged[key] = value


def _finish_choice(choice: dict[str, Any]) -> dict[str, Any]:
    message = choice.get("message")
    if message is not None and "_calls" in message:
        calls = message.pop("_calls")
        message["tool_calls"] = [calls[i] for i in sorted(calls)]
    return choice


def replay(completion: dict[str, Any], include_usage: bool) -> bytes:
    """A whole ``chat.completion`` as the stream a client asked for, ``[DONE]`` included.

    Per choice, one chunk with the role and everything said (text, refusal, tool calls),
    then one with the finish reason; a usage chunk when the client asked for it.
    """
    base = {k: completion.get(k) for k in ("id", "created", "model", "system_fingerprint")}
    base = {"object": "chat.completion.chunk", **{k: v for k, v in base.items() if v is not None}}
    events = []
    for choice in completion.get("choices") or ():
        index = choice.get("index", 0)
        message = choice.get("message") or {}
        delta = {k: v for k, v in message.items() if v is not None}
        if "tool_calls" in delta:
            delta["tool_calls"] = [{"index": i, **c} for i, c in enumerate(delta["tool_calls"])]
        said = {"index": index, "delta": delta, "logprobs": None, "finish_reason": None}
        end = {"index": index, "delta": {}, "finish_reason": choice.get("finish_reason")}
        events += [{**base, "choices": [said]}, {**base, "choices": [end]}]
    if include_usage and completion.get("usage") is not None:
        events.append({**base, "choices": [], "usage": completion["usage"]})
    return b"".join(b"data: " + orjson.dumps(e) + b"\n\n" for e in events) + b"data: [DONE]\n\n"
