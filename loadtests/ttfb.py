"""A small HTTP/1.1 client that times each request to its first response body byte.

One keep-alive connection, requests one after another. Time to first byte (TTFB) runs from the
moment the request is written to the moment the first byte after the response head arrives; for
a streamed answer that is the first chunk, so a relay that buffers the stream shows up here.
"""

from __future__ import annotations

import asyncio
import math
import time
from dataclasses import dataclass

import uvloop

_TIMEOUT_S = 10.0
_MAX_ERRORS = 20


@dataclass(frozen=True)
class Response:
    status: int
    ttfb_s: float
    total_s: float
    body: bytes  # chunked transfer encoding decoded


@dataclass(frozen=True)
class TtfbResult:
    requests: int  # measured successfully
    errors: int
    sent: int  # all requests, warm-up and failures included
    p50_ms: float
    p99_ms: float
    mean_ms: float


def percentile(values: list[float], pct: float) -> float:
    """Nearest-rank percentile; NaN for no values."""
    if not values:
        return math.nan
    ordered = sorted(values)
    return ordered[max(0, math.ceil(pct / 100 * len(ordered)) - 1)]


def build_request(port: int, path: str, body: bytes) -> bytes:
    head = (
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\n"
        f"Accept: text/event-stream\r\nAuthorization: Bearer bench-client\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


async def _chunked_body(reader: asyncio.StreamReader, first: bytes) -> bytes:
    """The decoded payload of a chunked body whose first byte ``first`` was already read."""
    size_line = first + await reader.readuntil(b"\r\n")
    parts: list[bytes] = []
    while size := int(size_line.split(b";")[0], 16):
        parts.append((await reader.readexactly(size + 2))[:-2])
        size_line = await reader.readuntil(b"\r\n")
    await reader.readuntil(b"\r\n")  # the blank line ending the body (no trailers expected)
    return b"".join(parts)


async def exchange(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, request: bytes
) -> Response:
    """Send one request on an open connection and read the whole response."""
    start = time.perf_counter()
    writer.write(request)
    head = (await reader.readuntil(b"\r\n\r\n")).lower()
    status = int(head.split(b" ", 2)[1])
    chunked = b"\r\ntransfer-encoding: chunked" in head
    length = _content_length(head)
    if not chunked and length is None:
        raise ConnectionError("response has neither Content-Length nor chunked encoding")
    if not chunked and length == 0:
        now = time.perf_counter() - start
        return Response(status, now, now, b"")
    first = await reader.readexactly(1)
    ttfb = time.perf_counter() - start
    if chunked:
        body = await _chunked_body(reader, first)
    else:
        body = first + await reader.readexactly((length or 1) - 1)
    return Response(status, ttfb, time.perf_counter() - start, body)


def _content_length(head: bytes) -> int | None:
    start = head.find(b"\r\ncontent-length:")
    if start < 0:
        return None
    return int(head[start + 17 : head.find(b"\r\n", start + 2)].strip())


async def _series(
    port: int, request: bytes, count: int, deadline: float
) -> tuple[list[float], int]:
    """TTFBs (seconds) of up to ``count`` sequential requests, and how many failed."""
    ttfbs: list[float] = []
    errors = 0
    conn: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None
    for _ in range(count):
        if time.monotonic() > deadline or errors >= _MAX_ERRORS:
            break
        try:
            if conn is None:
                conn = await _connect(port)
            response = await asyncio.wait_for(exchange(*conn, request), _TIMEOUT_S)
        except (
            OSError,
            asyncio.IncompleteReadError,
            asyncio.LimitOverrunError,
            ValueError,
            TimeoutError,
        ):
            errors += 1
            _close(conn)
            conn = None
            continue
        if response.status == 200 and b"[DONE]" in response.body:
            ttfbs.append(response.ttfb_s)
        else:
            errors += 1
    _close(conn)
    return ttfbs, errors


async def _connect(port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), _TIMEOUT_S)


def _close(conn: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None) -> None:
    if conn is not None:
        conn[1].close()


def measure(
    port: int, path: str, body: bytes, count: int, warmup: int, budget_s: float = 120.0
) -> TtfbResult:
    """TTFB percentiles of ``count`` streamed requests after ``warmup`` unmeasured ones."""
    request = build_request(port, path, body)

    async def go() -> tuple[list[float], int, int]:
        deadline = time.monotonic() + budget_s
        warm, warm_errors = await _series(port, request, warmup, deadline)
        ttfbs, errors = await _series(port, request, count, deadline)
        return ttfbs, errors, len(warm) + warm_errors + len(ttfbs) + errors

    ttfbs, errors, sent = uvloop.run(go())
    ms = [t * 1000 for t in ttfbs]
    mean = sum(ms) / len(ms) if ms else math.nan
    return TtfbResult(len(ms), errors, sent, percentile(ms, 50), percentile(ms, 99), mean)


def probe(port: int, path: str, body: bytes) -> Response:
    """One request on a fresh connection, to check a server answers before measuring it."""
    request = build_request(port, path, body)

    async def go() -> Response:
        conn = await _connect(port)
        try:
            return await asyncio.wait_for(exchange(*conn, request), _TIMEOUT_S)
        finally:
            _close(conn)

    return uvloop.run(go())
