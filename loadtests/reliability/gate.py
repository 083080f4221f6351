"""A TCP gate in front of the S3 server: open, it relays; closed, the store is unreachable.

Closing stops listening and cuts every relayed connection, so clients see what an outage looks
like (connections reset, then refused) while the S3 server behind keeps its objects. Reopening
listens on the same port again. It runs on the scenario's event loop.
"""

from __future__ import annotations

import asyncio
import contextlib

import procs


class Gate:
    def __init__(self, target_port: int) -> None:
        self.port = procs.free_port()
        self._target = target_port
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    @property
    def endpoint(self) -> str:
        return f"http://{procs.HOST}:{self.port}"

    @property
    def is_open(self) -> bool:
        return self._server is not None

    async def open(self) -> None:
        self._server = await asyncio.start_server(
            self._relay, procs.HOST, self.port, reuse_address=True
        )

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None
        for writer in list(self._writers):
            writer.transport.abort()
        self._writers.clear()

    async def _relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(procs.HOST, self._target)
        except OSError:
            writer.transport.abort()
            return
        self._writers |= {writer, up_writer}
        try:
            async with asyncio.TaskGroup() as pipes:
                pipes.create_task(_pipe(reader, up_writer))
                pipes.create_task(_pipe(up_reader, writer))
        except* (OSError, asyncio.IncompleteReadError):
            pass
        finally:
            for w in (writer, up_writer):
                self._writers.discard(w)
                w.transport.abort()


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    finally:
        with contextlib.suppress(OSError):
            if writer.can_write_eof():
                writer.write_eof()
