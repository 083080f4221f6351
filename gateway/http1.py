"""Whole-answer HTTP/1.1 calls over pooled keep-alive connections: asyncio transports and
httptools' parser (llhttp, the one uvicorn serves the gateway with), nothing more.

For the calls the gateway makes on its own account — shadow calls, hybrid's checked answers —
whose every microsecond is taken from the clients' requests on the same core. aiohttp's request
machinery (cookies, redirects, tracing, header multidicts, payload writers) costs about 100 µs a
call on one core; a POST here costs about 15. Only what those calls need is here: POST a body,
get the status and the whole body back.

Connections are reused last-in first-out and dropped after ``IDLE_S`` idle, under the keep-alive
timeouts servers commonly use (uvicorn's 5 s), so the server rarely closes one under us. When it
does — a reused connection ends before any byte of the answer — the request is sent once more on
a new connection: a server that closes an idle connection has not seen the request on it.
Errors are this module's own; ``gateway.upstream`` makes them the gateway's.
"""

from __future__ import annotations

import asyncio
import ssl
from collections import deque
from dataclasses import dataclass
from typing import Final, cast
from urllib.parse import urlsplit

import httptools

# Connections idle longer than this are closed rather than reused.
IDLE_S: Final = 4.0
# The largest answer body read; a bigger one is refused (an answer is a chat completion).
MAX_ANSWER_BYTES: Final = 64 * 1024 * 1024
# The largest status line and headers read (the parser keeps them in memory).
MAX_HEAD_BYTES: Final = 64 * 1024


class Http1Error(Exception):
    """A call that got no usable answer."""


class ConnectFailed(Http1Error):
    """No connection could be opened: the server cannot have seen the request."""


class ConnectionBroken(Http1Error):
    """The connection ended, or was reset, before the whole answer came."""

    def __init__(self, message: str, *, answered: bool = False) -> None:
        super().__init__(message)
        self.answered = answered  # whether any byte of the answer had come


class ReadTimeout(Http1Error):
    """The server sent nothing for the read timeout."""


class BadAnswer(Http1Error):
    """What came back is not an HTTP/1.1 answer this reads (malformed, or too large)."""


@dataclass(frozen=True, slots=True)
class Answer:
    status: int
    body: bytes


class _Connection(asyncio.Protocol):
    """One keep-alive connection: one request at a time, its answer parsed as it arrives."""

    def __init__(self, loop: asyncio.AbstractEventLoop, read_timeout_s: float) -> None:
        self._loop = loop
        self._read_timeout_s = read_timeout_s
        self._transport: asyncio.Transport | None = None
        # One parser for the connection's life: llhttp reads one answer after another.
        self._parser = httptools.HttpResponseParser(self)
        self._waiter: asyncio.Future[Answer] | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._chunks: list[bytes] = []
        self._size = 0
        self._framed = False  # the answer declares its length or is chunked
        self._headers_done = False
        self._head_size = 0  # of the headers parsed
        self._head_pending = 0  # bytes received while the head is incomplete
        self._last_data = 0.0
        self.received = False  # any byte of the current answer came
        self.keep_alive = True
        self.closed = False
        self.idle_since = 0.0

    # --- the caller's side

    def send(self, request: bytes) -> asyncio.Future[Answer]:
        """Write ``request``; the future takes its whole answer."""
        assert self._transport is not None and self._waiter is None
        self._start_answer()
        self.received = False
        self._waiter = waiter = self._loop.create_future()
        self._last_data = self._loop.time()
        self._timer = self._loop.call_at(self._last_data + self._read_timeout_s, self._check_read)
        self._transport.write(request)
        return waiter

    def close(self) -> None:
        """Drop the connection at once (a half-read answer cannot be reused)."""
        self.closed = True
        if self._transport is not None:
            self._transport.abort()

    # --- the transport's side

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # uvloop's are not subclasses

    def data_received(self, data: bytes) -> None:
        if self._waiter is None:  # nothing asked: a server talking out of turn
            self.close()
            return
        self.received = True
        self._last_data = self._loop.time()
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._end(BadAnswer(f"malformed HTTP answer: {exc}"))
            self.close()
            return
        if not self._headers_done:  # the parser holds what it has of the head in memory
            self._head_pending += len(data)
            self._check_head()

    def eof_received(self) -> None:
        self.keep_alive = False  # returns None: the transport closes itself

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self._waiter is None:
            return
        if exc is None and self._headers_done and not self._framed:  # ran to an orderly close
            self._end(None)
            return
        why = f": {exc}" if exc else ""
        self._end(ConnectionBroken(f"connection closed before the answer ended{why}",
                                   answered=self.received))  # fmt: skip

    # --- the parser's callbacks

    def on_header(self, name: bytes, value: bytes) -> None:
        self._head_size += len(name) + len(value)
        self._check_head()
        if name.lower() in (b"content-length", b"transfer-encoding"):
            self._framed = True

    def on_headers_complete(self) -> None:
        self._headers_done = True

    def on_body(self, body: bytes) -> None:
        if self._waiter is None:
            return
        self._size += len(body)
        if self._size > MAX_ANSWER_BYTES:
            self._end(BadAnswer(f"the answer exceeds {MAX_ANSWER_BYTES} bytes"))
            self.close()
            return
        self._chunks.append(body)

    def on_message_complete(self) -> None:
        if self._waiter is None:  # a second answer to one request
            self.close()
            return
        status = self._parser.get_status_code()
        if 100 <= status < 200:  # an interim answer: the real one follows
            self._start_answer()
            return
        self.keep_alive = self.keep_alive and self._parser.should_keep_alive()
        self._end(None)

    # ---

    def _start_answer(self) -> None:
        self._chunks, self._size, self._framed, self._headers_done = [], 0, False, False
        self._head_size = self._head_pending = 0

    def _end(self, error: Http1Error | None) -> None:
        waiter, self._waiter = self._waiter, None
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if waiter is None or waiter.done():
            return
        if error is not None:
            waiter.set_exception(error)
        else:
            waiter.set_result(Answer(self._parser.get_status_code(), b"".join(self._chunks)))

    def _check_head(self) -> None:
        too_big = max(self._head_size, self._head_pending) > MAX_HEAD_BYTES
        if too_big and self._waiter is not None:
            self._end(BadAnswer(f"the answer's head exceeds {MAX_HEAD_BYTES} bytes"))
            self.close()

    def _check_read(self) -> None:
        deadline = self._last_data + self._read_timeout_s
        if self._loop.time() < deadline:
            self._timer = self._loop.call_at(deadline, self._check_read)
            return
        self._timer = None
        self._end(ReadTimeout(f"no byte of the answer in {self._read_timeout_s:g} s"))
        self.close()


class Pool:
    """Keep-alive connections to the origin of ``base_url``, at most ``max_connections``."""

    def __init__(
        self,
        base_url: str,
        headers: dict[str, str],
        *,
        connect_timeout_s: float,
        read_timeout_s: float,
        max_connections: int,
    ) -> None:
        url = urlsplit(base_url)
        if url.scheme not in ("http", "https") or not url.hostname:
            raise ValueError(f"not an http(s) URL: {base_url!r}")
        self._host = url.hostname
        self._port = url.port or (443 if url.scheme == "https" else 80)
        self._ssl = ssl.create_default_context() if url.scheme == "https" else None
        self._prefix = url.path.rstrip("/")
        host = f"[{url.hostname}]" if ":" in url.hostname else url.hostname
        fixed = {"Host": f"{host}:{url.port}" if url.port else host, **headers,
                 "Connection": "keep-alive"}  # fmt: skip
        self._head = "".join(f"{k}: {v}\r\n" for k, v in fixed.items()).encode("latin-1")
        self._connect_timeout_s = connect_timeout_s
        self._read_timeout_s = read_timeout_s
        self._slots = asyncio.Semaphore(max_connections)
        self._idle: deque[_Connection] = deque()
        self._busy: set[_Connection] = set()

    async def post(self, path: str, body: bytes) -> Answer:
        """POST ``body`` to ``path`` (under the base URL's path); the whole answer."""
        if not (path.startswith("/") and path.isascii() and path.isprintable()) or " " in path:
            raise ValueError(f"not a request path: {path!r}")
        request = b"".join((
            b"POST ", (self._prefix + path).encode(), b" HTTP/1.1\r\n", self._head,
            b"Content-Length: %d\r\n\r\n" % len(body), body,
        ))  # fmt: skip
        async with self._slots:
            conn = self._reused()
            if conn is not None:
                try:
                    return await self._exchange(conn, request)
                except ConnectionBroken as exc:
                    if exc.answered:
                        raise
                    # Closed while idle, under us: the server never took the request.
            return await self._exchange(await self._connect(), request)

    async def aclose(self) -> None:
        """Close every connection, idle or busy (a busy call fails with ConnectionBroken)."""
        for conn in (*self._idle, *self._busy):
            conn.close()
        self._idle.clear()
        await asyncio.sleep(0)  # let the transports report the loss

    def _reused(self) -> _Connection | None:
        """The most recently used idle connection still fit for reuse; older ones closed."""
        now = asyncio.get_running_loop().time()
        while self._idle:
            conn = self._idle.pop()
            if not conn.closed and now - conn.idle_since < IDLE_S:
                return conn
            conn.close()
        return None

    async def _connect(self) -> _Connection:
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(self._connect_timeout_s):
                _, conn = await loop.create_connection(
                    lambda: _Connection(loop, self._read_timeout_s),
                    self._host,
                    self._port,
                    ssl=self._ssl,
                )
        except TimeoutError as exc:
            raise ConnectFailed(f"connect timed out after {self._connect_timeout_s:g} s") from exc
        except OSError as exc:  # refused, unreachable, name not known, TLS handshake
            raise ConnectFailed(str(exc) or exc.__class__.__name__) from exc
        return conn

    async def _exchange(self, conn: _Connection, request: bytes) -> Answer:
        self._busy.add(conn)
        try:
            answer = await conn.send(request)
        except BaseException:  # failed, timed out or cancelled: the connection is spent
            conn.close()
            raise
        finally:
            self._busy.discard(conn)
        if conn.keep_alive and not conn.closed:
            conn.idle_since = asyncio.get_running_loop().time()
            self._idle.append(conn)
        else:
            conn.close()
        return answer
