"""The teacher path: forward an admitted request, answer the client, capture the exchange.

Plain answers are read whole, captured, then returned with the teacher's status and body
untouched. Streams are relayed chunk by chunk (see ``gateway.relay``). Either way the record is
in the spool (written to the OS, fsynced per policy) before the client sees the end of the answer,
so a killed gateway never loses an exchange whose answer completed.
"""

from __future__ import annotations

import asyncio
import time

import structlog
from multidict import CIMultiDictProxy
from starlette.responses import Response

from gateway.capture import Exchange
from gateway.errors import UpstreamError
from gateway.intake import Incoming
from gateway.metrics import Metrics
from gateway.spool import SpoolWriter
from gateway.upstream import Upstream

log = structlog.get_logger("gateway")

# Upstream response headers worth passing on; hop-by-hop and framing headers never are.
_PASS_PREFIXES = ("x-ratelimit-", "openai-", "anthropic-ratelimit-")
_PASS_NAMES = frozenset({"retry-after", "x-request-id"})


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
    total = time.perf_counter() - inc.started
    overhead_ms = max(total - upstream_s, 0.0) * 1000
    return {
        "x-protege-request-id": inc.request_id,
        "server-timing": f"gateway;dur={overhead_ms:.3f}, upstream;dur={upstream_s * 1000:.3f}",
    }


class Capture:
    """Hands finished exchanges to the spool and accounts for them in metrics and logs."""

    def __init__(self, spool: SpoolWriter[Exchange], metrics: Metrics, access_log: bool) -> None:
        self._spool = spool
        self._metrics = metrics
        self._access_log = access_log

    def submit(self, inc: Incoming, ex: Exchange) -> asyncio.Future[None] | None:
        """Queue the record and account for the request; the future resolves once written."""
        latency = time.perf_counter() - inc.started
        ex.latency_ms = latency * 1000
        status = str(ex.status)
        m = self._metrics
        m.requests.labels(inc.metrics_task, ex.backend, ex.route, status).inc()
        m.latency.labels(inc.metrics_task, ex.backend, ex.route).observe(latency)
        if self._access_log:
            log.info(
                "answered",
                status=ex.status,
                stream=ex.stream,
                complete=ex.complete,
                latency_ms=round(ex.latency_ms, 2),
            )
        return self._spool.submit(ex)

    async def record(self, inc: Incoming, ex: Exchange) -> None:
        """``submit``, then wait until the record is in the spool."""
        written = self.submit(inc, ex)
        if written is not None:
            await written


class TeacherProxy:
    def __init__(self, teacher: Upstream, capture: Capture, metrics: Metrics) -> None:
        self.teacher = teacher
        self.capture = capture
        self.metrics = metrics

    async def unary(self, inc: Incoming) -> Response:
        """Forward a non-streaming request and return the teacher's answer as it came."""
        ex = inc.exchange()
        sent = time.perf_counter()
        try:
            async with self.teacher.request("POST", inc.path, inc.payload) as resp:
                body = await self.teacher.read(resp)
                status = resp.status
                headers = passthrough_headers(resp.headers)
                media_type = resp.headers.get("content-type", "application/json")
        except UpstreamError as exc:
            await self.fail(inc, ex, exc)
            raise
        upstream_s = time.perf_counter() - sent
        ex.status = status
        ex.response = body
        ex.complete = status == 200
        if status != 200:
            ex.error = f"teacher answered HTTP {status}"
        await self.capture.record(inc, ex)
        headers.update(timing_headers(inc, upstream_s))
        self.observe_overhead(inc, upstream_s)
        return Response(body, status_code=status, headers=headers, media_type=media_type)

    async def fail(self, inc: Incoming, ex: Exchange, exc: UpstreamError) -> None:
        """Record an exchange the upstream failed before the client got any byte."""
        ex.status = exc.status
        ex.error = exc.message
        log.warning("upstream failed", backend=exc.backend, error=exc.message, code=exc.code)
        await self.capture.record(inc, ex)

    def observe_overhead(self, inc: Incoming, upstream_s: float) -> None:
        overhead = time.perf_counter() - inc.started - upstream_s
        self.metrics.overhead.labels(inc.metrics_task).observe(max(overhead, 0.0))
