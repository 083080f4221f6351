"""One exchange made readable: its request's messages and its answer's choices, as plain
values the template prints (escaped); JSON and tool calls pretty-printed for ``<pre>``.
Pure functions of the record, so they are tested without a server.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import orjson

from protege.console.markup import pretty


@dataclass(frozen=True)
class Message:
    role: str
    text: str  # the content as text (parts joined); JSON pretty-printed
    is_json: bool = False
    name: str | None = None
    tool_calls: str | None = None  # pretty JSON
    extra: list[str] = field(default_factory=list)  # non-text parts (images...), pretty JSON


def messages(request: Any, endpoint: str | None) -> list[Message]:
    """The request's input: chat messages, or a completion's prompt, or embeddings' input."""
    if not isinstance(request, dict):
        return [Message("request", *_text(request))]
    if isinstance(request.get("messages"), list):
        return [_message(m) for m in request["messages"]]
    for key in ("prompt", "input"):
        if key in request:
            return [Message(key, *_text(request[key]))]
    return [Message("request", pretty(request), True)]


def _message(m: Any) -> Message:
    if not isinstance(m, dict):
        return Message("message", *_text(m))
    text, is_json, extra = _content(m.get("content"))
    calls = m.get("tool_calls") or m.get("function_call")
    return Message(
        role=str(m.get("role", "message")),
        text=text,
        is_json=is_json,
        name=m.get("name") or m.get("tool_call_id"),
        tool_calls=pretty(calls) if calls else None,
        extra=extra,
    )


def _content(content: Any) -> tuple[str, bool, list[str]]:
    if isinstance(content, list):
        texts, extra = [], []
        for part in content:
            if isinstance(part, dict) and part.get("type") == "text":
                texts.append(str(part.get("text", "")))
            else:
                extra.append(pretty(part))
        return (*_text("\n".join(texts)), extra)
    return (*_text(content), [])


def _text(value: Any) -> tuple[str, bool]:
    """``value`` as text, and whether it is JSON (then pretty-printed)."""
    if value is None:
        return "", False
    if isinstance(value, str):
        stripped = value.strip()
        if stripped[:1] in ("{", "["):
            try:
                orjson.loads(stripped)
            except orjson.JSONDecodeError:
                return value, False
            return pretty(stripped), True
        return value, False
    return pretty(value), True


def answers(response: Any) -> list[Message]:
    """The answer's choices (a chat message, a completion's text), else the body as JSON."""
    if not isinstance(response, dict):
        return [] if response is None else [Message("answer", *_text(response))]
    choices = response.get("choices")
    if isinstance(choices, list) and choices:
        out = []
        for choice in choices:
            if isinstance(choice, dict) and isinstance(choice.get("message"), dict):
                out.append(_message(choice["message"]))
            elif isinstance(choice, dict) and "text" in choice:
                out.append(Message("completion", *_text(choice["text"])))
        if out:
            return out
    if isinstance(response.get("data"), list):  # embeddings: the vectors are not for reading
        return [Message("embeddings", f"{len(response['data'])} vector(s)")]
    return [Message("answer", pretty(response), True)]


def tokens(record: dict[str, Any]) -> str:
    p, c = record.get("prompt_tokens"), record.get("completion_tokens")
    if p is None and c is None:
        return "—"
    return f"{p if p is not None else '?'} in / {c if c is not None else '?'} out"


def detail(record: dict[str, Any]) -> dict[str, Any]:
    """The record's ``detail`` (why, checks, agreement, decoding) as a dict."""
    value = record.get("detail")
    if isinstance(value, str):
        try:
            value = orjson.loads(value)
        except orjson.JSONDecodeError:
            return {"detail": value}
    return value if isinstance(value, dict) else {}
