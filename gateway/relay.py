"""Streaming relay: SSE from the upstream to the client, chunk by chunk as it arrives.

The client's response starts only once the upstream's first complete event is in: a stream
that opens with an error becomes a proper HTTP error (no byte has been sent, so nothing is
lost by waiting one event). After that, complete events are forwarded as they arrive, except
the closing ``data: [DONE]``, which is held back until the exchange is in the spool. A stream
the upstream cuts, or ends without ``[DONE]``, gets an SSE error event and no ``[DONE]``; a
client that goes away cancels the upstream request. Both are recorded with ``complete=false``.
A student's stream is also cancelled when its client leaves before the first event
(``gateway.disconnect``).

A backend may rewrite the events on their way (the student's are made OpenAI's, see
``gateway.student``); the record keeps the stream as the client got it.
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
from gateway.disconnect import ClientGone, unless_gone
from gateway.errors import UpstreamError, UpstreamFailed, UpstreamUnreachable
from gateway.intake import Incoming
from gateway.proxy import (
    Backend,
    Proxy,
    StreamEdit,
    backend_headers,
    log,
    passthrough_headers,
    timing_headers,
)
from gateway.sse import error_event, error_of, event_end, iter_data, split_done

# The first event must arrive within this many bytes; more is not an SSE stream we understand.
_FIRST_EVENT_MAX = 1024 * 1024
_SSE_HEADERS = {"cache-control": "no-cache", "x-accel-buffering": "no"}


async def stream(proxy: Proxy, inc: Incoming, backend: Backend, route: str) -> Response:
    """Open the backend's stream and answer with a relay of it (or with its error)."""
    ex = inc.exchange(backend.name, route, backend.adapter(inc))
    sent = time.perf_counter()
    stack = AsyncExitStack()
    try:
        # A backend that cancels on leave is asked only while the client waits, its first
        # event included (a queued student may take long to send it).
        opening = _open(stack, inc, backend)
        resp, chunks, first = await (
            unless_gone(inc, opening) if backend.cancel_on_leave else opening
        )
        if chunks is None:  # not a stream: handed on like a plain answer
            return await proxy.reply(inc, ex, backend, resp, first, time.perf_counter() - sent)
    except UpstreamError as exc:
        await stack.aclose()
        await proxy.fail(inc, ex, backend, exc)
        raise
    except ClientGone:
        await stack.aclose()
        return await proxy.gone(inc, ex)
    except BaseException:
        await stack.aclose()
        raise
    upstream_s = time.perf_counter() - sent
    headers = {**passthrough_headers(resp.headers), **timing_headers(inc, upstream_s)}
    headers.update(backend_headers(ex))
    headers.update(_SSE_HEADERS)
    proxy.observe_overhead(inc, upstream_s)
    events = _relay(proxy, inc, ex, stack, chunks, first, backend.edit(inc))
    return StreamingResponse(events, headers=headers, media_type="text/event-stream")


async def _open(
    stack: AsyncExitStack, inc: Incoming, backend: Backend
) -> tuple[aiohttp.ClientResponse, AsyncIterator[bytes] | None, bytes]:
    """``(response, chunks, first event)`` of the backend's stream, the connection held by
    ``stack``; for an answer that is not a stream, ``(response, None, whole body)``, the
    connection released."""
    upstream = backend.upstream
    request = upstream.request("POST", inc.path, backend.payload(inc))
    resp = await stack.enter_async_context(request)
    if resp.status != 200 or not resp.content_type.startswith("text/event-stream"):
        async with stack:
            return resp, None, await upstream.read(resp)
    chunks = upstream.iter_chunks(resp)
    first = await _first_event(chunks, upstream.name)
    _raise_if_error(first, upstream.name)
    return resp, chunks, first


async def _first_event(chunks: AsyncIterator[bytes], backend: str) -> bytes:
    """Bytes up to at least the end of the first complete event."""
    buf = b""
    async for chunk in chunks:
        buf += chunk
        if event_end(buf):
            return buf
        if len(buf) > _FIRST_EVENT_MAX:
            break
    raise UpstreamUnreachable(
        f"the {backend}'s stream ended before its first event", backend=backend
    )


def _raise_if_error(first: bytes, backend: str) -> None:
    data = next(iter_data(first[: event_end(first)]), b"")
    error = error_of(data)
    if error is None:
        return
    message = error.get("message") if isinstance(error, dict) else error
    if not isinstance(message, str) or not message:
        message = orjson.dumps(error).decode()
    raise UpstreamFailed(f"the {backend} stream failed: {message}", backend=backend)


async def _relay(
    proxy: Proxy,
    inc: Incoming,
    ex: Exchange,
    stack: AsyncExitStack,
    chunks: AsyncIterator[bytes],
    first: bytes,
    edit: StreamEdit | None,
) -> AsyncIterator[bytes]:
    kept: list[bytes] = []  # what the client got: the record's response
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
                    if block and edit is not None:
                        block = edit.events(block)
                    if block:
                        if ex.ttft_ms is None:
                            ex.ttft_ms = (time.perf_counter() - inc.started) * 1000
                        kept.append(block)
                        yield block
                chunk = await anext(chunks, None)
                if chunk is None:
                    break
                pending += chunk
            ex.complete = bool(held) and (edit is None or edit.error is None)
            if ex.complete and edit is not None:
                tail, recorded = edit.tail()
                kept += (tail, recorded)
                if tail:
                    yield tail
        if not ex.complete:
            relayed = edit.error if edit is not None else None
            ex.error = relayed or f"the {ex.backend}'s stream ended without [DONE]"
    except UpstreamError as exc:
        ex.error = exc.message
    except (asyncio.CancelledError, GeneratorExit):
        # A client that leaves once the upstream's error event reached it: the error is why
        # the stream ended, not the leaving.
        ex.error = (edit.error if edit is not None else None) or "client disconnected"
        ex.response = b"".join(kept)
        proxy.metrics.incomplete_streams.labels(inc.metrics_task, "client_disconnect").inc()
        proxy.capture.submit(inc, ex)
        raise
    ex.response = b"".join(kept) + held
    last = await _finish(proxy, inc, ex, held, relayed_error=edit is not None and bool(edit.error))
    if last:
        yield last


async def _finish(
    proxy: Proxy, inc: Incoming, ex: Exchange, held: bytes, relayed_error: bool
) -> bytes:
    """Record the exchange; the bytes that end the client's stream."""
    if ex.ttft_ms is not None:
        proxy.metrics.ttft.labels(inc.metrics_task, ex.backend).observe(ex.ttft_ms / 1000)
    if ex.complete:
        await proxy.capture.record(inc, ex)
        return held
    log.warning("stream cut", backend=ex.backend, error=ex.error)
    reason = "upstream_error" if relayed_error else "upstream_cut"
    proxy.metrics.incomplete_streams.labels(inc.metrics_task, reason).inc()
    await proxy.capture.record(inc, ex)
    if relayed_error:  # the upstream's own error event already told the client
        return b""
    return error_event(ex.error or "stream failed", "upstream_error", "stream_interrupted")
