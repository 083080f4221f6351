"""The student backend: LoRAX's OpenAI route, its answers made OpenAI's.

Requests: the client's chat body with the decoding routing chose applied (its adapter's
published policy and learned schema for what the client left unset, ``gateway.decoding``),
``model`` set to the task's adapter, and without what must not or cannot reach LoRAX:
``api_token`` and ``adapter_source`` (the gateway alone decides which adapter answers, with
which credentials) and ``stream_options`` (LoRAX has none; whether the client asked for usage
is kept here). The client's key is never forwarded: LoRAX copies an
``Authorization`` header into ``api_token``, so the student upstream sends only its own key.

Answers, as LoRAX gives them (see its router): ``"id": "null"``, ``created`` 0, the adapter as
``model``, ``object: text_completion`` on chat answers, a stop sequence reported as
``content_filter``, usage only on the last chunk of a stream, and errors as
``{"error": "<string>", "error_type": "..."}`` — with HTTP 4xx/5xx, or mid-stream as a 200 event
after which the stream ends without ``[DONE]``. The client gets OpenAI's shapes instead: a real
id (``chatcmpl-<request id>``), a creation time, the model it asked for, usage (as a last usage
chunk when ``stream_options.include_usage`` asked for it), and errors as
``{"error": {"message", "type", "param", "code"}}``.

Failures that are the student's own (5xx, 424 generation error, 429 overloaded, an unreadable
answer) raise ``UpstreamFailed`` so that the teacher can answer instead; other 4xx reach the
client, translated.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from typing import Any

import orjson
import structlog

from gateway.errors import UpstreamFailed, error_body
from gateway.intake import Incoming
from gateway.sse import error_event, iter_data
from gateway.upstream import Upstream

log = structlog.get_logger("gateway")

# Endpoints the student serves; other requests for a student route go to the teacher.
ENDPOINTS = frozenset({"chat.completions"})
# Client fields the student never gets.
_DROPPED = ("api_token", "adapter_source", "stream_options")
# LoRAX's finish reasons that OpenAI names otherwise (a stop sequence is not a content filter).
_FINISH_REASONS = {"content_filter": "stop", "eos_token": "stop", "stop_sequence": "stop"}
# LoRAX statuses that are the student's failure, not the request's: the teacher answers instead.
_STUDENT_FAILURES = frozenset({424, 429})


def student_body(fields: dict[str, Any], adapter: str) -> bytes:
    """The body LoRAX gets for a client's chat request ``fields``, answered by ``adapter``."""
    body = {key: value for key, value in fields.items() if key not in _DROPPED}
    body["model"] = adapter
    if "max_completion_tokens" in body and body.get("max_tokens") is None:
        body["max_tokens"] = body.pop("max_completion_tokens")  # LoRAX knows only max_tokens
    return orjson.dumps(body)


def student_fields(inc: Incoming) -> dict[str, Any]:
    """The request fields the student gets: the client's, with the decoding routing applied
    (``Incoming.decoding``, see ``gateway.decoding``)."""
    return inc.fields if inc.decoding is None else inc.decoding.fields


def wants_usage(fields: dict[str, Any]) -> bool:
    """Whether the client asked for a usage chunk at the end of its stream."""
    options = fields.get("stream_options")
    return isinstance(options, dict) and options.get("include_usage") is True


def usage_of(raw: Any) -> dict[str, int] | None:
    """OpenAI usage from LoRAX's (whose completion_tokens may be null); None when unusable."""
    if not isinstance(raw, dict):
        return None
    prompt, completion, total = (
        _count(raw.get(key)) for key in ("prompt_tokens", "completion_tokens", "total_tokens")
    )
    if prompt is None:
        return None
    if completion is None:
        if total is None or total < prompt:
            return None
        completion = total - prompt
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }


def error_parts(obj: Any) -> tuple[str, str | None]:
    """(message, code) of an error body: LoRAX's ``{"error": str, "error_type"}`` or OpenAI's."""
    error = obj.get("error") if isinstance(obj, dict) else None
    if isinstance(error, dict):
        message, code = error.get("message"), error.get("code") or error.get("type")
    else:
        message, code = error, obj.get("error_type") if isinstance(obj, dict) else None
    if not isinstance(message, str) or not message:
        message = "no error message"
    return message, code if isinstance(code, str) and code else None


@dataclass(frozen=True, slots=True)
class Stamp:
    """What identifies one answer to the client: its id, creation time and model."""

    id: str
    created: int
    model: str

    @classmethod
    def of(cls, inc: Incoming) -> Stamp:
        return cls(f"chatcmpl-{inc.request_id}", int(time.time()), inc.model)

    def apply(self, obj: dict[str, Any], kind: str) -> None:
        """Give a LoRAX answer or chunk ``obj`` OpenAI's identity and finish reasons, in place."""
        if not _real_id(obj.get("id")):
            obj["id"] = self.id
        obj["object"] = kind
        created = obj.get("created")
        if _count(created) is None or created == 0:
            obj["created"] = self.created
        obj["model"] = self.model
        for choice in obj.get("choices") or ():
            if isinstance(choice, dict) and choice.get("finish_reason") in _FINISH_REASONS:
                choice["finish_reason"] = _FINISH_REASONS[choice["finish_reason"]]


def openai_completion(obj: dict[str, Any], by: Stamp) -> dict[str, Any]:
    """LoRAX's chat answer as OpenAI's ``chat.completion`` (usage dropped if unusable)."""
    by.apply(obj, "chat.completion")
    usage = usage_of(obj.pop("usage", None))
    if usage is not None:
        obj["usage"] = usage
    return obj


class StudentStream:
    """Rewrites one LoRAX stream into OpenAI chunks (a ``gateway.proxy.StreamEdit``)."""

    def __init__(self, by: Stamp, include_usage: bool) -> None:
        self.error: str | None = None
        self._by = by
        self._include_usage = include_usage
        self._usage: dict[str, int] | None = None

    def events(self, block: bytes) -> bytes:
        return b"".join(self._event(data) for data in iter_data(block))

    def _event(self, data: bytes) -> bytes:
        obj = _json_object(data)
        if obj is None:
            return _sse(data)  # not a chunk this knows: passed on as it came
        if "error" in obj:
            message, code = error_parts(obj)
            self.error = f"the student's stream failed ({code or 'error'}): {message}"
            return error_event(self.error, "upstream_error", "stream_interrupted")
        usage = usage_of(obj.pop("usage", None))
        if usage is not None:
            self._usage = usage  # sent once, at the end, as OpenAI does
        if _real_id(obj.get("id")):
            self._by = replace(self._by, id=obj["id"])
        if not obj.get("choices") and usage is not None:
            return b""  # a usage-only chunk
        self._by.apply(obj, "chat.completion.chunk")
        return _sse(orjson.dumps(obj))

    def tail(self) -> tuple[bytes, bytes]:
        """The usage chunk: for the client if it asked, else for the record only."""
        if self._usage is None:
            if self._include_usage:
                log.warning("the student's stream carried no usage; no usage chunk sent")
            return b"", b""
        chunk: dict[str, Any] = {"choices": [], "usage": self._usage}
        self._by.apply(chunk, "chat.completion.chunk")
        event = _sse(orjson.dumps(chunk))
        return (event, b"") if self._include_usage else (b"", event)


class StudentBackend:
    """LoRAX's OpenAI route as a ``gateway.proxy.Backend``: one adapter per task."""

    name = "student"
    falls_back = True
    cancel_on_leave = True

    def __init__(self, upstream: Upstream, adapter_prefix: str = "") -> None:
        self.upstream = upstream
        self._prefix = adapter_prefix

    def serves(self, inc: Incoming) -> bool:
        return inc.endpoint in ENDPOINTS

    def adapter(self, inc: Incoming) -> str:
        if inc.adapter is None:  # routing sends the student only requests it chose one for
            raise RuntimeError(f"task {inc.task!r} has no student adapter")
        return inc.adapter

    def payload(self, inc: Incoming) -> bytes:
        return student_body(student_fields(inc), self._prefix + self.adapter(inc))

    def answer(self, inc: Incoming, status: int, body: bytes) -> bytes:
        obj = _json_object(body)
        if status == 200:
            if inc.stream or obj is None or not isinstance(obj.get("choices"), list):
                raise UpstreamFailed(
                    "the student's answer is not a chat completion", backend=self.name
                )
            completion = openai_completion(obj, Stamp.of(inc))
            if "usage" not in completion:
                log.warning("the student's answer carried no usage")
            return orjson.dumps(completion)
        message, code = error_parts(obj)
        if status >= 500 or status in _STUDENT_FAILURES:
            raise UpstreamFailed(
                f"the student answered HTTP {status}: {message}", backend=self.name
            )
        return error_body(message, "invalid_request_error", None, code)

    def edit(self, inc: Incoming) -> StudentStream:
        return StudentStream(Stamp.of(inc), wants_usage(inc.fields))

    async def complete(self, inc: Incoming, adapter: str) -> dict[str, Any]:
        """The student's whole answer to ``inc``, asked for without streaming, as an OpenAI
        ``chat.completion`` (for shadow scoring and hybrid checks). Any answer but a
        completion — a 4xx included — is a failure the teacher answers for."""
        body = student_body({**student_fields(inc), "stream": False}, self._prefix + adapter)
        answer = await self.upstream.post(inc.path, body)
        obj = _json_object(answer.body)
        if answer.status != 200:
            message, _ = error_parts(obj)
            raise UpstreamFailed(
                f"the student answered HTTP {answer.status}: {message}", backend=self.name
            )
        if obj is None or not isinstance(obj.get("choices"), list):
            raise UpstreamFailed("the student's answer is not a chat completion", backend=self.name)
        return openai_completion(obj, Stamp.of(inc))


def _count(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else None


def _real_id(value: Any) -> bool:
    return isinstance(value, str) and value not in ("", "null")


def _json_object(data: bytes) -> dict[str, Any] | None:
    try:
        obj = orjson.loads(data)
    except orjson.JSONDecodeError:
        return None
    return obj if isinstance(obj, dict) else None


def _sse(data: bytes) -> bytes:
    return b"data: " + data + b"\n\n"
