"""Streaming relay: SSE from the upstream to the client, chunk by chunk as it arrives.

The client's response starts only once the upstream's first complete event is in: a stream
that opens with an error becomes a proper HTTP error (no byte has been sent, so nothing is
lost by waiting one event). After that, complete events are forwarded as they arrive, except
the closing ``data: [DONE]``, which is held back until the exchange is in the spool. A stream
the upstream cuts, or ends without ``[DONE]``, gets an SSE error event and no ``[DONE]``; a
client that goes away cancels the upstream request. Both are recorded with ``complete=false``.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack

import aiohttp
import orjson
from starlette.responses import Response, StreamingResponse

from gateway.capture import Exchange
from gateway.errors import UpstreamError, UpstreamFailed, UpstreamUnreachable
from gateway.intake import Incoming
from gateway.proxy import TeacherProxy, log, passthrough_headers, timing_headers
from gateway.sse import error_event, error_of, event_end, iter_data, split_done

# The first event must arrive within this many bytes; more is not an SSE stream we understand.
_FIRST_EVENT_MAX = 1024 * 1024
_SSE_HEADERS = {"cache-control": "no-cache", "x-accel-buffering": "no"}


async def stream(proxy: TeacherProxy, inc: Incoming) -> Response:
    """Open the upstream stream and answer with a relay of it (or with its error)."""
    ex = inc.exchange()
    sent = time.perf_counter()
    stack = AsyncExitStack()
    try:
        resp = await stack.enter_async_context(proxy.teacher.request("POST", inc.path, inc.payload))
        if resp.status != 200 or not resp.content_type.startswith("text/event-stream"):
            async with stack:  # not a stream: hand it on like a plain answer
                return await _plain(proxy, inc, ex, resp, sent)
        chunks = proxy.teacher.iter_chunks(resp)
        first = await _first_event(chunks)
        _raise_if_error(first, proxy.teacher.name)
    except UpstreamError as exc:
        await stack.aclose()
        await proxy.fail(inc, ex, exc)
        raise
    except BaseException:
        await stack.aclose()
        raise
    upstream_s = time.perf_counter() - sent
    headers = {**passthrough_headers(resp.headers), **timing_headers(inc, upstream_s)}
    headers.update(_SSE_HEADERS)
    proxy.observe_overhead(inc, upstream_s)
    body = _relay(proxy, inc, ex, stack, chunks, first)
    return StreamingResponse(body, headers=headers, media_type="text/event-stream")


async def _plain(
    proxy: TeacherProxy, inc: Incoming, ex: Exchange, resp: aiohttp.ClientResponse, sent: float
) -> Response:
    body = await proxy.teacher.read(resp)
    ex.status, ex.response = resp.status, body
    ex.complete = False
    ex.error = f"teacher answered HTTP {resp.status} to a stream request"
    await proxy.capture.record(inc, ex)
    headers = {
        **passthrough_headers(resp.headers),
        **timing_headers(inc, time.perf_counter() - sent),
    }
    media_type = resp.headers.get("content-type", "application/json")
    return Response(body, status_code=resp.status, headers=headers, media_type=media_type)


async def _first_event(chunks: AsyncIterator[bytes]) -> bytes:
    """Bytes up to at least the end of the first complete event."""
    buf = b""
    async for chunk in chunks:
        buf += chunk
        if event_end(buf):
            return buf
        if len(buf) > _FIRST_EVENT_MAX:
            break
    raise UpstreamUnreachable(
        "the teacher's stream ended before its first event", backend="teacher"
    )


def _raise_if_error(first: bytes, backend: str) -> None:
    data = next(iter_data(first[: event_end(first)]), b"")
    error = error_of(data)
    if error is None:
        return
    message = error.get("message") if isinstance(error, dict) else None
    raise UpstreamFailed(
        f"the {backend} stream failed: {message or orjson.dumps(error).decode()}",
        backend=backend,
    )


async def _relay(
    proxy: TeacherProxy,
    inc: Incoming,
    ex: Exchange,
    stack: AsyncExitStack,
    chunks: AsyncIterator[bytes],
    first: bytes,
) -> AsyncIterator[bytes]:
    raw = [first]
    held = b""  # the closing [DONE] event, sent once the record is safe
    pending = first
    ex.status = 200
    try:
        async with stack:
            while True:
                end = event_end(pending)
                if end:
                    block, pending = pending[:end], pending[end:]
                    block, done = split_done(block)
                    held += done
                    if block:
                        if ex.ttft_ms is None:
                            ex.ttft_ms = (time.perf_counter() - inc.started) * 1000
                        yield block
                chunk = await anext(chunks, None)
                if chunk is None:
                    break
                raw.append(chunk)
                pending += chunk
        ex.complete = bool(held)
        if not held:
            ex.error = "the teacher's stream ended without [DONE]"
    except UpstreamError as exc:
        ex.error = exc.message
    except (asyncio.CancelledError, GeneratorExit):
        ex.error = "client disconnected"
        ex.response = b"".join(raw)
        proxy.metrics.incomplete_streams.labels(inc.metrics_task, "client_disconnect").inc()
        proxy.capture.submit(inc, ex)
        raise
    ex.response = b"".join(raw)
    _observe_ttft(proxy, inc, ex)
    if not ex.complete:
        log.warning("stream cut", error=ex.error)
        proxy.metrics.incomplete_streams.labels(inc.metrics_task, "upstream_cut").inc()
        await proxy.capture.record(inc, ex)
        yield error_event(ex.error or "stream failed", "upstream_error", "stream_interrupted")
        return
    await proxy.capture.record(inc, ex)
    yield held


def _observe_ttft(proxy: TeacherProxy, inc: Incoming, ex: Exchange) -> None:
    if ex.ttft_ms is not None:
        proxy.metrics.ttft.labels(inc.metrics_task, ex.backend).observe(ex.ttft_ms / 1000)
