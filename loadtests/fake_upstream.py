"""A very fast fake OpenAI-compatible teacher, so the benchmark never measures the upstream.

A raw asyncio ``Protocol`` HTTP/1.1 server on uvloop with keep-alive. Requests are parsed just
enough to route them; every answer is pre-built bytes:

* ``POST /v1/chat/completions`` - a chat completion JSON, or, when the body asks for
  ``"stream": true``, a chunked ``text/event-stream`` of chat.completion.chunk events;
* ``GET /v1/models`` and ``GET /healthz``;
* anything else - 404 in the OpenAI error shape.

Run: ``python loadtests/fake_upstream.py --port 9000``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
from typing import Final, cast

import uvloop
from payloads import MODEL, chat_completion, stream_events

_MAX_HEAD: Final = 64 * 1024


def _response(status: str, content_type: str, body: bytes) -> bytes:
    head = (
        f"HTTP/1.1 {status}\r\nServer: fake-upstream\r\nContent-Type: {content_type}\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


def _stream_response() -> bytes:
    head = (
        b"HTTP/1.1 200 OK\r\nServer: fake-upstream\r\nContent-Type: text/event-stream\r\n"
        b"Cache-Control: no-cache\r\nTransfer-Encoding: chunked\r\n\r\n"
    )
    chunks = [b"%x\r\n%s\r\n" % (len(event), event) for event in stream_events()]
    return head + b"".join(chunks) + b"0\r\n\r\n"


def _error(status: str, message: str) -> bytes:
    body = {
        "error": {"message": message, "type": "invalid_request_error", "param": None, "code": None}
    }
    return _response(status, "application/json", json.dumps(body).encode())


_CHAT: Final = _response("200 OK", "application/json", chat_completion())
_STREAM: Final = _stream_response()
_MODELS: Final = _response(
    "200 OK",
    "application/json",
    json.dumps(
        {
            "object": "list",
            "data": [
                {"id": MODEL, "object": "model", "created": 1_700_000_000, "owned_by": "fake"}
            ],
        }
    ).encode(),
)
_HEALTH: Final = _response("200 OK", "text/plain", b"ok")
_NOT_FOUND: Final = _error("404 Not Found", "no such route on the fake upstream")
_BAD_REQUEST: Final = _error("400 Bad Request", "the fake upstream could not parse the request")


def _header_value(head_lower: bytes, name: bytes) -> bytes | None:
    """The value of header ``name`` (lower case, with colon) in a lower-cased request head."""
    start = head_lower.find(b"\r\n" + name)
    if start < 0:
        return None
    start += 2 + len(name)
    end = head_lower.find(b"\r\n", start)
    return head_lower[start : end if end >= 0 else None].strip()


def _chunked_body(buf: bytearray, pos: int) -> tuple[bytes, int] | None:
    """Decode a chunked body starting at ``pos``: (body, end offset), or None if incomplete."""
    parts: list[bytes] = []
    while True:
        line_end = buf.find(b"\r\n", pos)
        if line_end < 0:
            return None
        size = int(bytes(buf[pos:line_end]).split(b";")[0], 16)
        pos = line_end + 2
        if size == 0:
            trailer_end = buf.find(b"\r\n\r\n", pos - 2)
            return (b"".join(parts), trailer_end + 4) if trailer_end >= 0 else None
        if len(buf) < pos + size + 2:
            return None
        parts.append(bytes(buf[pos : pos + size]))
        pos += size + 2


def _route(request_line: bytes, body: bytes) -> bytes:
    method, _, rest = request_line.partition(b" ")
    path = rest.partition(b" ")[0].partition(b"?")[0]
    if method == b"POST" and path == b"/v1/chat/completions":
        streaming = b'"stream": true' in body or b'"stream":true' in body
        return _STREAM if streaming else _CHAT
    if method == b"GET" and path == b"/v1/models":
        return _MODELS
    if method == b"GET" and path == b"/healthz":
        return _HEALTH
    return _NOT_FOUND


class _Connection(asyncio.Protocol):
    """One keep-alive client connection; answers requests in order as they complete."""

    def __init__(self) -> None:
        self._buf = bytearray()
        self._transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # uvloop's is duck-typed

    def data_received(self, data: bytes) -> None:
        self._buf += data
        try:
            while self._transport is not None and self._answer_one():
                pass
        except ValueError:  # a malformed Content-Length or chunk size
            self._finish(_BAD_REQUEST, close=True)

    def _answer_one(self) -> bool:
        """Answer the first complete request in the buffer; False if there is none yet."""
        assert self._transport is not None
        head_end = self._buf.find(b"\r\n\r\n")
        if head_end < 0:
            if len(self._buf) > _MAX_HEAD:
                self._finish(_BAD_REQUEST, close=True)
            return False
        head = bytes(self._buf[:head_end])
        lower = head.lower()
        request = self._body(lower, head_end + 4)
        if request is None:
            return False
        body, end = request
        del self._buf[:end]
        request_line = head.partition(b"\r\n")[0]
        close = _header_value(lower, b"connection:") == b"close" or request_line.endswith(b"1.0")
        self._finish(_route(request_line, body), close)
        return True

    def _body(self, lower: bytes, start: int) -> tuple[bytes, int] | None:
        if _header_value(lower, b"transfer-encoding:") == b"chunked":
            return _chunked_body(self._buf, start)
        length = int(_header_value(lower, b"content-length:") or 0)
        if len(self._buf) < start + length:
            return None
        return bytes(self._buf[start : start + length]), start + length

    def _finish(self, response: bytes, close: bool) -> None:
        assert self._transport is not None
        self._transport.write(response)
        if close:
            self._transport.close()
            self._transport = None


async def serve(host: str, port: int) -> None:
    """Serve until SIGINT or SIGTERM."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    server = await loop.create_server(_Connection, host, port, backlog=4096)
    async with server:
        await stop.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9000)
    args = parser.parse_args()
    uvloop.run(serve(args.host, args.port))


if __name__ == "__main__":
    main()
