"""From a finished exchange to its record: what the gateway hands the spool, and how it is encoded.

The request path only fills an ``Exchange`` (cheap: references to bytes it already holds). The
spool writer thread calls ``encode`` on it, which assembles streams, reads usage, redacts and
serializes — all the costly work, away from the event loop.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import orjson
import structlog

from core.record import SCHEMA_VERSION
from core.redact import Redactor
from gateway.metrics import Metrics
from gateway.sse import assemble, json_member

log = structlog.get_logger("gateway")


@dataclass(slots=True)
class Exchange:
    """One request the gateway answered, as raw as it came."""

    request_id: str
    ts_us: int
    task: str
    endpoint: str
    request: bytes
    stream: bool
    backend: str = "teacher"
    route: str = "teacher"
    adapter: str | None = None
    shadow_of: str | None = None
    status: int = 0
    # The whole body for plain answers; the raw SSE bytes for streams.
    response: bytes | None = None
    complete: bool = False
    error: str | None = None
    latency_ms: float = 0.0
    ttft_ms: float | None = None
    client: str | None = None
    user: str | None = None
    # Why this backend answered, checks failed, shadow agreement (the record's ``detail``).
    detail: dict[str, Any] | None = None
    # Told, from the writer thread, of the answer as recorded (streams assembled; None unless
    # it completed with 200): a shadow call compares with it without assembling it again.
    answered: Callable[[bytes | None], None] | None = field(default=None, repr=False)
    metrics_task: str = field(default="", repr=False)


def completion_of(ex: Exchange) -> dict[str, Any] | None:
    """The answer an exchange holds, as one completion (streams assembled); None unless it
    completed with 200."""
    if ex.status != 200 or not ex.complete or ex.response is None:
        return None
    if ex.stream:
        return assemble(ex.response, ex.endpoint).response
    try:
        obj = orjson.loads(ex.response)
    except orjson.JSONDecodeError:
        return None
    return obj if isinstance(obj, dict) else None


def hash_id(value: str, salt: bytes) -> str:
    """A stable, non-reversible 16-hex-digit id for an API key or user name."""
    return hashlib.blake2b(value.encode(), key=salt[:64], digest_size=8).hexdigest()


def _text(data: bytes) -> str:
    return data.decode("utf-8", errors="replace")


class RecordEncoder:
    """``Exchange -> bytes`` (one JSON record of the schema in ``core.record``)."""

    def __init__(self, redactor: Redactor, metrics: Metrics) -> None:
        self._redactor = redactor
        self._metrics = metrics

    def __call__(self, ex: Exchange) -> bytes:
        response, usage, complete, error = self._response(ex)
        if ex.answered is not None:
            self._hand_over(ex, response if complete and ex.status == 200 else None)
        prompt_tokens = _int(usage, "prompt_tokens")
        completion_tokens = _int(usage, "completion_tokens")
        if ex.status == 200:
            self._count_tokens(ex, prompt_tokens, completion_tokens)
        record = {
            "request_id": ex.request_id,
            "schema_version": SCHEMA_VERSION,
            "ts": ex.ts_us,
            "task": ex.task,
            "endpoint": ex.endpoint,
            "backend": ex.backend,
            "adapter": ex.adapter,
            "route": ex.route,
            "shadow_of": ex.shadow_of,
            "stream": ex.stream,
            "complete": complete,
            "status": ex.status,
            "error": error,
            "request": _text(self._redactor.json(ex.request)),
            "response": None if response is None else _text(self._redactor.json(response)),
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "latency_ms": round(ex.latency_ms, 3),
            "ttft_ms": None if ex.ttft_ms is None else round(ex.ttft_ms, 3),
            "client": ex.client,
            "user": ex.user,
            "detail": None if ex.detail is None else _text(orjson.dumps(ex.detail)),
        }
        return orjson.dumps(record)

    @staticmethod
    def _hand_over(ex: Exchange, response: bytes | None) -> None:
        """Tell whoever waits for the answer; their failure never costs the record."""
        assert ex.answered is not None
        try:
            ex.answered(response)
        except Exception:
            log.exception("answer hand-over failed; the record is kept")

    def _response(self, ex: Exchange) -> tuple[bytes | None, Any, bool, str | None]:
        """(response JSON, usage, complete, error) of the exchange."""
        if ex.response is None:
            return None, None, False, ex.error
        if not ex.stream or ex.status != 200:
            usage = json_member(ex.response, "usage") if ex.status == 200 else None
            return ex.response, usage, ex.complete, ex.error
        stream = assemble(ex.response, ex.endpoint)
        complete = ex.complete and stream.done and stream.error is None
        error = ex.error
        if error is None and stream.error is not None:
            error = _text(orjson.dumps(stream.error))
        if error is None and not stream.done:
            error = "stream ended without [DONE]"
        body = None if stream.response is None else orjson.dumps(stream.response)
        return body, stream.usage, complete, error

    def _count_tokens(self, ex: Exchange, prompt: int | None, completion: int | None) -> None:
        task = ex.metrics_task or ex.task
        if prompt:
            self._metrics.tokens.labels(task, ex.backend, "prompt").inc(prompt)
        if completion:
            self._metrics.tokens.labels(task, ex.backend, "completion").inc(completion)


def _int(usage: Any, key: str) -> int | None:
    value = usage.get(key) if isinstance(usage, dict) else None
    return value if isinstance(value, int) and not isinstance(value, bool) else None
