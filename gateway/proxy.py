"""Forward an admitted request to a backend, answer the client, capture the exchange.

A ``Backend`` is an upstream plus how requests reach it and answers come back: the teacher
takes the client's body and its answers pass untouched; the student (``gateway.student``)
rewrites both ways. Plain answers are read whole, captured, then returned. Streams are relayed
chunk by chunk (see ``gateway.relay``). Either way the record is in the spool (written to the
OS, fsynced per policy) before the client sees the end of the answer, so a killed gateway never
loses an exchange whose answer completed. Every answer says who gave it, as its record does
(``backend_headers``).
"""

from __future__ import annotations

import asyncio
import time
from typing import Protocol

import aiohttp
import orjson
import structlog
from multidict import CIMultiDictProxy
from starlette.responses import Response

from core.ids import new_id
from gateway.capture import Exchange, completion_of
from gateway.disconnect import GONE_ERROR, GONE_STATUS, ClientGone, unless_gone
from gateway.errors import UpstreamError
from gateway.intake import Incoming
from gateway.metrics import Metrics
from gateway.spool import SpoolWriter
from gateway.upstream import Upstream

log = structlog.get_logger("gateway")

# Upstream response headers worth passing on; hop-by-hop and framing headers never are.
_PASS_PREFIXES = ("x-ratelimit-", "openai-", "anthropic-ratelimit-")
_PASS_NAMES = frozenset({"retry-after", "x-request-id"})


class StreamEdit(Protocol):
    """Rewrites one upstream stream's events on their way to the client."""

    # Set once the upstream sent an error event; the client already got it, rewritten.
    error: str | None

    def events(self, block: bytes) -> bytes:
        """Complete events (never ``[DONE]``) as the client gets them."""
        ...

    def tail(self) -> tuple[bytes, bytes]:
        """At a clean end: (events the client gets before ``[DONE]``, events only recorded)."""
        ...


class Backend(Protocol):
    """An upstream that answers admitted requests, and how requests and answers are shaped."""

    name: str  # the record's backend and the metrics label: teacher | student
    upstream: Upstream
    # A failure before the first byte is answered by the teacher instead (route=fallback).
    falls_back: bool
    # A plain answer is asked for only while its client waits (``gateway.disconnect``).
    cancel_on_leave: bool

    def adapter(self, inc: Incoming) -> str | None:
        """The adapter answering ``inc`` (None for the teacher)."""
        ...

    def payload(self, inc: Incoming) -> bytes:
        """The body the upstream gets for ``inc``."""
        ...

    def answer(self, inc: Incoming, status: int, body: bytes) -> bytes:
        """The whole answer as the client gets it; raises ``UpstreamError`` for a failure."""
        ...

    def edit(self, inc: Incoming) -> StreamEdit | None:
        """How the stream answering ``inc`` is rewritten (None: relayed byte for byte)."""
        ...


class TeacherBackend:
    """The teacher: the client's body (the alias resolved) in, its answers out untouched."""

    name = "teacher"
    falls_back = False
    cancel_on_leave = False

    def __init__(self, upstream: Upstream) -> None:
        self.upstream = upstream

    def adapter(self, inc: Incoming) -> None:
        return None

    def payload(self, inc: Incoming) -> bytes:
        return inc.payload

    def answer(self, inc: Incoming, status: int, body: bytes) -> bytes:
        return body

    def edit(self, inc: Incoming) -> None:
        return None


def passthrough_headers(headers: CIMultiDictProxy[str]) -> dict[str, str]:
    """The upstream headers a client of the teacher would expect to see."""
    out: dict[str, str] = {}
    for name, value in headers.items():
        low = name.lower()
        if low in _PASS_NAMES or low.startswith(_PASS_PREFIXES):
            out[low] = value
    return out


def timing_headers(inc: Incoming, upstream_s: float) -> dict[str, str]:
    """``x-protege-request-id`` and a ``Server-Timing`` with the gateway's own overhead."""
    upstream_s += inc.failed_upstream_s
    total = time.perf_counter() - inc.started
    overhead_ms = max(total - upstream_s, 0.0) * 1000
    return {
        "x-protege-request-id": inc.request_id,
        "server-timing": f"gateway;dur={overhead_ms:.3f}, upstream;dur={upstream_s * 1000:.3f}",
    }


def backend_headers(ex: Exchange) -> dict[str, str]:
    """Who answered, as the record says: ``x-protege-backend`` (teacher | student) and, for a
    student, ``x-protege-adapter`` (``<task>/<version>``)."""
    if ex.adapter is None:
        return {"x-protege-backend": ex.backend}
    return {"x-protege-backend": ex.backend, "x-protege-adapter": ex.adapter}


class Capture:
    """Hands finished exchanges to the spool and accounts for them in metrics and logs."""

    def __init__(self, spool: SpoolWriter[Exchange], metrics: Metrics, access_log: bool) -> None:
        self._spool = spool
        self._metrics = metrics
        self._access_log = access_log

    def submit(
        self, inc: Incoming, ex: Exchange, started: float | None = None
    ) -> asyncio.Future[None] | None:
        """Queue the record and account for the request; the future resolves once written.

        ``started``: when the exchange began, if not with the request (a shadow call).
        """
        latency = time.perf_counter() - (inc.started if started is None else started)
        ex.latency_ms = latency * 1000
        status = str(ex.status)
        m = self._metrics
        m.requests.labels(inc.metrics_task, ex.backend, ex.route, status).inc()
        m.latency.labels(inc.metrics_task, ex.backend, ex.route).observe(latency)
        if self._access_log:
            log.info(
                "answered",
                status=ex.status,
                backend=ex.backend,
                route=ex.route,
                stream=ex.stream,
                complete=ex.complete,
                latency_ms=round(ex.latency_ms, 2),
            )
        if inc.watch is not None:
            inc.watch(inc, ex)
        written = self._spool.submit(ex)
        if written is None and ex.answered is not None:
            # Not captured (spool full): hand the answer over from here instead.
            answer = completion_of(ex)
            ex.answered(None if answer is None else orjson.dumps(answer))
        return written

    async def record(self, inc: Incoming, ex: Exchange) -> None:
        """``submit``, then wait until the record is in the spool."""
        written = self.submit(inc, ex)
        if written is not None:
            await written


class Proxy:
    """Answers admitted requests from a backend, capturing every exchange."""

    def __init__(self, capture: Capture, metrics: Metrics) -> None:
        self.capture = capture
        self.metrics = metrics

    async def unary(self, inc: Incoming, backend: Backend, route: str) -> Response:
        """Forward a non-streaming request and answer with the backend's whole answer; a
        backend that ``cancel_on_leave`` is called only while the client waits."""
        ex = inc.exchange(backend.name, route, backend.adapter(inc))
        sent = time.perf_counter()
        call = _whole(inc, backend)
        try:
            resp, body = await (unless_gone(inc, call) if backend.cancel_on_leave else call)
            return await self.reply(inc, ex, backend, resp, body, time.perf_counter() - sent)
        except UpstreamError as exc:
            await self.fail(inc, ex, backend, exc)
            raise
        except ClientGone:
            return await self.gone(inc, ex)

    async def reply(
        self,
        inc: Incoming,
        ex: Exchange,
        backend: Backend,
        resp: aiohttp.ClientResponse,
        body: bytes,
        upstream_s: float,
    ) -> Response:
        """Record a whole answer of the backend, then return it with the backend's status."""
        status = resp.status
        body = backend.answer(inc, status, body)
        ex.status, ex.response = status, body
        ex.complete = status == 200 and not inc.stream
        if not ex.complete:
            to_stream = " to a stream request" if inc.stream else ""
            ex.error = f"{backend.name} answered HTTP {status}{to_stream}"
        await self.capture.record(inc, ex)
        headers = {**passthrough_headers(resp.headers), **timing_headers(inc, upstream_s)}
        headers.update(backend_headers(ex))
        self.observe_overhead(inc, upstream_s)
        media_type = resp.headers.get("content-type", "application/json")
        return Response(body, status_code=status, headers=headers, media_type=media_type)

    async def fail(self, inc: Incoming, ex: Exchange, backend: Backend, exc: UpstreamError) -> None:
        """Record an exchange the backend failed before the client got any byte."""
        if backend.falls_back:
            # The teacher's answer keeps the request's id (readers keep one record per id).
            ex.request_id = new_id()
        ex.status = exc.status
        ex.error = exc.message
        log.warning("upstream failed", backend=exc.backend, error=exc.message, code=exc.code)
        await self.capture.record(inc, ex)

    async def gone(self, inc: Incoming, ex: Exchange) -> Response:
        """Record an exchange whose client went away before its answer (the call cancelled);
        the response nobody reads."""
        ex.status, ex.error = GONE_STATUS, GONE_ERROR
        self.metrics.incomplete_answers.labels(inc.metrics_task, "client_disconnect").inc()
        log.info("client went away; its call was cancelled", backend=ex.backend)
        await self.capture.record(inc, ex)
        return Response(status_code=GONE_STATUS)

    def observe_overhead(self, inc: Incoming, upstream_s: float) -> None:
        overhead = time.perf_counter() - inc.started - upstream_s - inc.failed_upstream_s
        self.metrics.overhead.labels(inc.metrics_task).observe(max(overhead, 0.0))


async def _whole(inc: Incoming, backend: Backend) -> tuple[aiohttp.ClientResponse, bytes]:
    """The backend's response to ``inc`` and its whole body."""
    upstream = backend.upstream
    async with upstream.request("POST", inc.path, backend.payload(inc)) as resp:
        return resp, await upstream.read(resp)
