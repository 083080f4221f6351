"""A raw HTTP server on 127.0.0.1 whose every connection runs a script: to misbehave precisely
(cut, reset, trickle, talk out of turn) where a real server would not."""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass


@dataclass
class Request:
    line: str
    headers: dict[str, str]  # names lower-cased
    body: bytes
    raw: bytes


class Peer:
    """One accepted connection, as the script sees it; ``index`` counts from 0 in accept order."""

    def __init__(self, server: Server, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        self.server, self.reader, self.writer = server, reader, writer
        self.index = server.connections

    async def request(self) -> Request | None:
        """The next request (recorded on the server), or None when the client closed."""
        try:
            head = await self.reader.readuntil(b"\r\n\r\n")
        except asyncio.IncompleteReadError as exc:
            if exc.partial:
                raise
            return None
        line, *fields = head.decode("latin-1").split("\r\n")[:-2]
        headers = {k.lower(): v for k, v in (f.split(": ", 1) for f in fields)}
        body = await self.reader.readexactly(int(headers.get("content-length", "0")))
        request = Request(line, headers, body, head + body)
        self.server.requests.append(request)
        return request

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def answer(self, body: bytes = b"ok", *headers: str, status: int = 200) -> None:
        await self.send(answer(body, f"Content-Length: {len(body)}", *headers, status=status))

    async def until_closed(self) -> None:
        """Reads (and drops) whatever comes until the client closes the connection."""
        while await self.reader.read(65536):
            pass


Script = Callable[[Peer], Awaitable[None]]


def answer(body: bytes, *headers: str, status: int = 200, version: str = "1.1") -> bytes:
    head = "".join(f"{h}\r\n" for h in (f"HTTP/{version} {status} Whatever", *headers))
    return head.encode() + b"\r\n" + body


class Server:
    """A raw HTTP server on 127.0.0.1 running ``script`` on every connection it accepts."""

    def __init__(self, script: Script, *, ssl_context: ssl.SSLContext | None = None) -> None:
        self._script, self._ssl = script, ssl_context
        self.connections = 0  # accepted so far
        self.open = 0
        self.peak = 0  # the most open at once
        self.ended = 0  # connections over: the script ended or the client closed
        self.requests: list[Request] = []
        self.flag = asyncio.Event()  # for a script to say "now"
        self._tasks: set[asyncio.Task[None]] = set()
        self._scripts: set[asyncio.Task[None]] = set()  # those still in their script
        self._errors: list[BaseException] = []
        self._stopping = False

    async def __aenter__(self) -> Server:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0, ssl=self._ssl)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._stopping = True
        self._server.close()
        for task in self._scripts:
            task.cancel()
        await asyncio.gather(*self._tasks)
        await self._server.wait_closed()
        if self._errors:
            raise self._errors[0]

    def url(self, scheme: str = "http") -> str:
        return f"{scheme}://127.0.0.1:{self.port}"

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self._scripts.add(task)
        peer = Peer(self, reader, writer)
        self.connections += 1
        self.open += 1
        self.peak = max(self.peak, self.open)
        try:
            await self._script(peer)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass  # the client went away: some tests make it
        except asyncio.CancelledError:
            if not self._stopping:
                raise
            task.uncancel()
        except Exception as exc:  # a broken script: fail the test with it
            self._errors.append(exc)
        finally:
            self._scripts.discard(task)
            self.open -= 1
            self.ended += 1
            writer.close()
            try:
                async with asyncio.timeout(1):
                    await writer.wait_closed()
            except (OSError, TimeoutError):
                writer.transport.abort()
            self._tasks.discard(task)


async def keep_alive(peer: Peer) -> None:
    """Answers ``ok`` to every request, keeping the connection open."""
    while await peer.request() is not None:
        await peer.answer()
