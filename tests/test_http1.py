"""``gateway.http1`` against a raw asyncio server on 127.0.0.1, scripted per test to misbehave
precisely; each test under plain asyncio and under uvloop (the loop the gateway runs on)."""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import socket
import ssl
import struct
from collections.abc import AsyncIterator, Callable, Coroutine
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import uvloop

from gateway import http1
from gateway.errors import UpstreamFailed, UpstreamTimeout, UpstreamUnreachable
from gateway.metrics import Metrics
from gateway.upstream import Upstream
from tests.scripted_http import Peer, Script, Server, answer, keep_alive

LOOPS: dict[str, Callable[[], asyncio.AbstractEventLoop]] = {
    "asyncio": asyncio.new_event_loop,
    "uvloop": uvloop.new_event_loop,
}
TEST_S = 3.0  # the most any one test may take
Run = Callable[[Coroutine[Any, Any, Any]], Any]


@pytest.fixture(params=sorted(LOOPS))
def run(request: pytest.FixtureRequest) -> Run:
    """Runs a coroutine to its end on a fresh loop of the parametrized kind, within TEST_S."""

    async def bounded(coro: Coroutine[Any, Any, Any]) -> Any:
        async with asyncio.timeout(TEST_S):
            return await coro

    def run(coro: Coroutine[Any, Any, Any]) -> Any:
        with asyncio.Runner(loop_factory=LOOPS[request.param]) as runner:
            return runner.run(bounded(coro))

    return run


@asynccontextmanager
async def pool_for(url: str, **kw: Any) -> AsyncIterator[http1.Pool]:
    options: dict[str, Any] = {
        "connect_timeout_s": 1.0, "read_timeout_s": 1.0, "max_connections": 4, **kw,
    }  # fmt: skip
    pool = http1.Pool(url, options.pop("headers", {}), **options)
    try:
        yield pool
    finally:
        await pool.aclose()


async def eventually(condition: Callable[[], bool]) -> None:
    """Waits for ``condition`` (work the server does after the client is answered)."""
    for _ in range(200):
        if condition():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("condition not met in 2 s")


def free_port() -> int:
    """A port on 127.0.0.1 nothing listens on."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


# --- answers read whole


def test_post_answers_status_and_whole_body(run: Run) -> None:
    """A POST gets the answer's status and its whole body."""

    async def script(peer: Peer) -> None:
        while await peer.request() is not None:
            await peer.answer(b'{"id": "x"}' * 1000, "Content-Type: application/json", status=201)

    async def scenario() -> None:
        async with Server(script) as server, pool_for(server.url()) as pool:
            assert await pool.post("/v1/x", b"{}") == http1.Answer(201, b'{"id": "x"}' * 1000)

    run(scenario())


def test_request_on_the_wire(run: Run) -> None:
    """The request names the base URL's path plus the path, Host, the given headers, the
    body's length and the body, in that order."""
    body = b'{"model": "m", "messages": []}'

    async def scenario() -> None:
        async with Server(keep_alive) as server:
            headers = {"Authorization": "Bearer k", "Content-Type": "application/json"}
            async with pool_for(server.url() + "/v1/", headers=headers) as pool:
                await pool.post("/chat/completions", body)
        [request] = server.requests
        assert request.raw == (
            b"POST /v1/chat/completions HTTP/1.1\r\n"
            b"Host: 127.0.0.1:%d\r\n"
            b"Authorization: Bearer k\r\nContent-Type: application/json\r\n"
            b"Connection: keep-alive\r\nContent-Length: %d\r\n\r\n%s"
        ) % (server.port, len(body), body)

    run(scenario())


def test_empty_body_is_sent_with_zero_length(run: Run) -> None:
    """An empty body goes as ``Content-Length: 0`` and nothing after the head."""

    async def scenario() -> None:
        async with Server(keep_alive) as server, pool_for(server.url()) as pool:
            await pool.post("/", b"")
        [request] = server.requests
        assert request.line == "POST / HTTP/1.1"
        assert request.headers["content-length"] == "0"
        assert request.body == b""

    run(scenario())


@pytest.mark.parametrize("separately", [True, False], ids=["chunks-apart", "one-write"])
def test_chunked_answer_is_read_whole(run: Run, separately: bool) -> None:
    """A chunked answer is read whole, its chunks sent in separate writes or in one."""
    parts = [b"alpha", b"-" * 3000, b"omega"]

    async def script(peer: Peer) -> None:
        while await peer.request() is not None:
            await peer.send(answer(b"", "Transfer-Encoding: chunked"))
            chunks = [b"%x\r\n%s\r\n" % (len(p), p) for p in parts] + [b"0\r\n\r\n"]
            for chunk in chunks if separately else [b"".join(chunks)]:
                await peer.send(chunk)
                await asyncio.sleep(0.01)

    async def scenario() -> None:
        async with Server(script) as server, pool_for(server.url()) as pool:
            assert await pool.post("/", b"x") == http1.Answer(200, b"".join(parts))
            assert await pool.post("/", b"x") == http1.Answer(200, b"".join(parts))
            assert server.connections == 1

    run(scenario())


def test_answer_delimited_by_close_is_read_whole(run: Run) -> None:
    """An answer with neither a length nor chunks runs to the connection's close, read whole."""

    async def script(peer: Peer) -> None:
        await peer.request()
        await peer.send(answer(b"first part, "))
        await asyncio.sleep(0.02)
        await peer.send(b"last part")

    async def scenario() -> None:
        async with Server(script) as server, pool_for(server.url()) as pool:
            assert await pool.post("/", b"x") == http1.Answer(200, b"first part, last part")

    run(scenario())


def test_answer_without_body_keeps_the_connection(run: Run) -> None:
    """A 204 (no body, no length) ends at its head and its connection is reused."""

    async def script(peer: Peer) -> None:
        while await peer.request() is not None:
            await peer.send(answer(b"", status=204))

    async def scenario() -> None:
        async with Server(script) as server, pool_for(server.url()) as pool:
            assert await pool.post("/", b"x") == http1.Answer(204, b"")
            assert await pool.post("/", b"x") == http1.Answer(204, b"")
            assert server.connections == 1

    run(scenario())


@pytest.mark.parametrize("separately", [True, False], ids=["apart", "one-write"])
def test_interim_100_continue_is_skipped(run: Run, separately: bool) -> None:
    """An interim ``100 Continue`` then the real answer reads as the real answer."""

    async def script(peer: Peer) -> None:
        while await peer.request() is not None:
            interim, real = answer(b"", status=100), answer(b"done", "Content-Length: 4")
            if separately:
                await peer.send(interim)
                await asyncio.sleep(0.02)
                await peer.send(real)
            else:
                await peer.send(interim + real)

    async def scenario() -> None:
        async with Server(script) as server, pool_for(server.url()) as pool:
            assert await pool.post("/", b"x") == http1.Answer(200, b"done")
            assert await pool.post("/", b"x") == http1.Answer(200, b"done")

    run(scenario())


# --- keep-alive


def test_sequential_calls_reuse_one_connection(run: Run) -> None:
    """Calls one after another all go over one connection."""

    async def scenario() -> None:
        async with Server(keep_alive) as server, pool_for(server.url()) as pool:
            for _ in range(5):
                assert await pool.post("/", b"x") == http1.Answer(200, b"ok")
        assert (server.connections, len(server.requests)) == (1, 5)

    run(scenario())


def test_concurrent_calls_stay_within_max_connections(run: Run) -> None:
    """Concurrent calls open several connections, never more than ``max_connections``."""

    async def slow(peer: Peer) -> None:
        while await peer.request() is not None:
            await asyncio.sleep(0.05)
            await peer.answer()

    async def scenario() -> None:
        async with Server(slow) as server, pool_for(server.url(), max_connections=3) as pool:
            answers = await asyncio.gather(*(pool.post("/", b"x") for _ in range(10)))
        assert answers == [http1.Answer(200, b"ok")] * 10
        assert server.peak == 3
        assert server.connections == 3  # the later calls reused them

    run(scenario())


def test_idle_connection_closed_by_server_is_retried_once(run: Run) -> None:
    """A reused connection the server closes without answering is retried on a new one."""

    async def script(peer: Peer) -> None:
        if peer.index == 0:  # answers, then drops the next request as an idle close would
            await peer.request()
            await peer.answer()
            await peer.request()
            return
        await keep_alive(peer)

    async def scenario() -> None:
        async with Server(script) as server, pool_for(server.url()) as pool:
            assert await pool.post("/", b"one") == http1.Answer(200, b"ok")
            assert await pool.post("/", b"two") == http1.Answer(200, b"ok")
        assert server.connections == 2
        assert [r.body for r in server.requests] == [b"one", b"two", b"two"]

    run(scenario())


def test_connection_the_server_closed_after_answering_is_not_reused(run: Run) -> None:
    """A connection the server closed while idle (no ``Connection: close`` said) is replaced."""

    async def script(peer: Peer) -> None:
        await peer.request()
        await peer.answer()

    async def scenario() -> None:
        async with Server(script) as server, pool_for(server.url()) as pool:
            assert await pool.post("/", b"x") == http1.Answer(200, b"ok")
            # The client has seen the close: the next call is not a reuse that fails and retries.
            await eventually(lambda: [conn.closed for conn in pool._idle] == [True])
            assert await pool.post("/", b"x") == http1.Answer(200, b"ok")
        assert (server.connections, len(server.requests)) == (2, 2)

    run(scenario())


@pytest.mark.parametrize(
    "ending",
    [answer(b"ok", "Content-Length: 2", "Connection: close"),
     answer(b"ok", "Content-Length: 2", version="1.0")],
    ids=["connection-close", "http-1.0"],
)  # fmt: skip
def test_answer_that_says_close_is_not_reused(run: Run, ending: bytes) -> None:
    """After an answer saying ``Connection: close`` (or an HTTP/1.0 one) the client closes the
    connection and the next call opens another."""

    async def script(peer: Peer) -> None:  # says close, but leaves closing to the client
        while await peer.request() is not None:
            await peer.send(ending)

    async def scenario() -> None:
        async with Server(script) as server, pool_for(server.url()) as pool:
            assert await pool.post("/", b"x") == http1.Answer(200, b"ok")
            await eventually(lambda: server.ended == 1)
            assert await pool.post("/", b"x") == http1.Answer(200, b"ok")
        assert server.connections == 2

    run(scenario())


@pytest.mark.parametrize("when", ["later", "with-answer"])
def test_server_talking_out_of_turn_loses_the_connection(run: Run, when: str) -> None:
    """Bytes after the answer (later, or a second answer with it) drop that connection."""

    async def script(peer: Peer) -> None:
        while await peer.request() is not None:
            if when == "later":
                await peer.answer()
                await asyncio.sleep(0.02)
                await peer.send(b"X")
            else:
                await peer.send(answer(b"ok", "Content-Length: 2") * 2)

    async def scenario() -> None:
        async with Server(script) as server, pool_for(server.url()) as pool:
            assert await pool.post("/", b"x") == http1.Answer(200, b"ok")
            await eventually(lambda: server.ended == 1)
            assert await pool.post("/", b"x") == http1.Answer(200, b"ok")
        assert server.connections == 2

    run(scenario())


def test_connection_idle_past_idle_s_is_not_reused(
    run: Run, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A connection idle longer than ``IDLE_S`` is closed and a new one opened."""
    monkeypatch.setattr(http1, "IDLE_S", 0.05)

    async def scenario() -> None:
        async with Server(keep_alive) as server, pool_for(server.url()) as pool:
            await pool.post("/", b"x")
            await asyncio.sleep(0.1)
            await pool.post("/", b"x")
            await eventually(lambda: server.ended == 1)  # the client closed the stale one
        assert server.connections == 2

    run(scenario())


# --- failures


def test_refused_connect_is_connect_failed(run: Run) -> None:
    """A refused connect raises ConnectFailed."""

    async def scenario() -> None:
        async with pool_for(f"http://127.0.0.1:{free_port()}") as pool:
            with pytest.raises(http1.ConnectFailed):
                await pool.post("/", b"x")

    run(scenario())


def test_connection_closed_mid_answer_is_broken_and_not_retried(run: Run) -> None:
    """A reused connection closed partway through the body raises ConnectionBroken with
    ``answered`` set, and the request is not sent again."""

    async def script(peer: Peer) -> None:
        await peer.request()
        await peer.answer()
        await peer.request()
        await peer.send(answer(b"0123456789", "Content-Length: 100"))

    async def scenario() -> None:
        async with Server(script) as server, pool_for(server.url()) as pool:
            await pool.post("/", b"x")
            with pytest.raises(http1.ConnectionBroken) as caught:
                await pool.post("/", b"x")
        assert caught.value.answered
        assert (server.connections, len(server.requests)) == (1, 2)

    run(scenario())


def test_new_connection_closed_unanswered_is_broken_and_not_retried(run: Run) -> None:
    """A new connection closed before any byte of the answer raises ConnectionBroken without
    ``answered``, and is not retried (only a reused connection is)."""

    async def script(peer: Peer) -> None:
        await peer.request()

    async def scenario() -> None:
        async with Server(script) as server, pool_for(server.url()) as pool:
            with pytest.raises(http1.ConnectionBroken) as caught:
                await pool.post("/", b"x")
        assert not caught.value.answered
        assert (server.connections, len(server.requests)) == (1, 1)

    run(scenario())


@pytest.mark.parametrize(
    "silent_after", [b"", answer(b"0123", "Content-Length: 10")], ids=["before", "within"]
)
def test_silent_server_is_read_timeout(run: Run, silent_after: bytes) -> None:
    """A server silent for the read timeout (before the answer, or after part of it: bytes
    that came earlier do not keep the call alive) raises ReadTimeout, and the connection is
    closed."""

    async def script(peer: Peer) -> None:
        await peer.request()
        await peer.send(silent_after)
        await peer.until_closed()

    async def scenario() -> None:
        async with Server(script) as server, pool_for(server.url(), read_timeout_s=0.2) as pool:
            with pytest.raises(http1.ReadTimeout, match=r"no byte of the answer in 0\.2 s"):
                await pool.post("/", b"x")
            await eventually(lambda: server.ended == 1)

    run(scenario())


def test_trickling_answer_is_not_a_timeout(run: Run) -> None:
    """The read timeout bounds the longest silence, not the whole answer: an answer trickled
    a byte at a time for twice the read timeout (by the server's clock), each byte well within
    it, is read whole."""
    timeout_s = 0.3
    sent = 0

    async def script(peer: Peer) -> None:
        nonlocal sent
        await peer.request()
        await peer.send(answer(b"", "Transfer-Encoding: chunked"))
        loop = asyncio.get_running_loop()
        until = loop.time() + 2 * timeout_s
        while loop.time() < until:
            await asyncio.sleep(timeout_s / 15)
            await peer.send(b"1\r\n.\r\n")
            sent += 1
        await peer.send(b"0\r\n\r\n")

    async def scenario() -> None:
        async with (
            Server(script) as server,
            pool_for(server.url(), read_timeout_s=timeout_s) as pool,
        ):
            assert await pool.post("/", b"x") == http1.Answer(200, b"." * sent)

    run(scenario())


@pytest.mark.parametrize(
    "garbage",
    [b"garbage\r\n\r\n", b"HTTP/1.1 2x0 OK\r\n\r\n",
     answer(b"zz\r\nhello\r\n", "Transfer-Encoding: chunked")],
    ids=["not-http", "bad-status", "bad-chunk"],
)  # fmt: skip
def test_malformed_answer_is_bad_answer(run: Run, garbage: bytes) -> None:
    """What does not parse as an HTTP/1.1 answer raises BadAnswer."""

    async def script(peer: Peer) -> None:
        await peer.request()
        await peer.send(garbage)
        await peer.until_closed()

    async def scenario() -> None:
        async with Server(script) as server, pool_for(server.url()) as pool:
            with pytest.raises(http1.BadAnswer):
                await pool.post("/", b"x")

    run(scenario())


OVERSIZED = {
    "length": answer(b"x" * 101, "Content-Length: 101"),
    "chunked": answer(b"40\r\n%s\r\n40\r\n%s\r\n0\r\n\r\n" % (b"x" * 64, b"x" * 64),
                      "Transfer-Encoding: chunked"),
    "to-close": answer(b"x" * 101),
}  # fmt: skip


@pytest.mark.parametrize("framing", sorted(OVERSIZED))
def test_answer_over_max_bytes_is_bad_answer(
    run: Run, monkeypatch: pytest.MonkeyPatch, framing: str
) -> None:
    """A body over ``MAX_ANSWER_BYTES``, however framed, raises BadAnswer."""
    monkeypatch.setattr(http1, "MAX_ANSWER_BYTES", 100)

    async def script(peer: Peer) -> None:
        await peer.request()
        await peer.send(OVERSIZED[framing])
        await peer.until_closed()

    async def scenario() -> None:
        async with Server(script) as server, pool_for(server.url()) as pool:
            with pytest.raises(http1.BadAnswer, match="exceeds 100 bytes"):
                await pool.post("/", b"x")

    run(scenario())


def test_answer_of_exactly_max_bytes_is_read(run: Run, monkeypatch: pytest.MonkeyPatch) -> None:
    """A body of exactly ``MAX_ANSWER_BYTES`` is read."""
    monkeypatch.setattr(http1, "MAX_ANSWER_BYTES", 100)

    async def script(peer: Peer) -> None:
        while await peer.request() is not None:
            await peer.answer(b"x" * 100)

    async def scenario() -> None:
        async with Server(script) as server, pool_for(server.url()) as pool:
            assert await pool.post("/", b"x") == http1.Answer(200, b"x" * 100)

    run(scenario())


def test_answer_head_over_max_head_bytes_is_bad_answer(
    run: Run, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An answer whose head is over ``MAX_HEAD_BYTES`` raises BadAnswer."""
    monkeypatch.setattr(http1, "MAX_HEAD_BYTES", 100)

    async def script(peer: Peer) -> None:
        await peer.request()
        await peer.send(answer(b"ok", "X-Big: " + "a" * 5000, "Content-Length: 2"))
        await peer.until_closed()

    async def scenario() -> None:
        async with Server(script) as server, pool_for(server.url()) as pool:
            with pytest.raises(http1.BadAnswer):
                await pool.post("/", b"x")

    run(scenario())


def test_reset_during_answer_delimited_by_close_is_broken(run: Run) -> None:
    """A connection reset partway through an answer delimited by the close raises
    ConnectionBroken: only an orderly close (EOF) ends such an answer."""

    async def script(peer: Peer) -> None:
        await peer.request()
        await peer.send(answer(b"partial"))
        await asyncio.sleep(0.05)
        sock = peer.writer.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        peer.writer.transport.abort()  # RST, not FIN

    async def scenario() -> None:
        async with Server(script) as server, pool_for(server.url()) as pool:
            with pytest.raises(http1.ConnectionBroken):
                await pool.post("/", b"x")

    run(scenario())


# --- cancelling, closing


def test_cancelled_call_closes_its_connection(run: Run) -> None:
    """Cancelling a call mid-answer closes its connection; the next call opens a new one."""

    async def script(peer: Peer) -> None:
        if peer.index > 0:
            return await keep_alive(peer)
        await peer.request()
        await peer.send(answer(b"0123", "Content-Length: 100"))
        peer.server.flag.set()
        await peer.until_closed()

    async def scenario() -> None:
        async with (
            Server(script) as server,
            pool_for(server.url(), read_timeout_s=2.5) as pool,  # no timeout closes it
        ):
            call = asyncio.create_task(pool.post("/", b"x"))
            await server.flag.wait()
            await eventually(lambda: any(conn.received for conn in pool._busy))  # mid-answer
            call.cancel()
            with pytest.raises(asyncio.CancelledError):
                await call
            await eventually(lambda: server.ended == 1)
            assert await pool.post("/", b"x") == http1.Answer(200, b"ok")
        assert server.connections == 2

    run(scenario())


def test_aclose_closes_idle_connections(run: Run) -> None:
    """``aclose()`` closes the idle connections: the server sees them end."""

    async def scenario() -> None:
        async with Server(keep_alive) as server:
            async with pool_for(server.url()) as pool:
                await asyncio.gather(pool.post("/", b"x"), pool.post("/", b"x"))
                assert (server.connections, server.ended) == (2, 0)
            await eventually(lambda: server.ended == 2)

    run(scenario())


def test_aclose_fails_a_call_in_flight(run: Run) -> None:
    """``aclose()`` during a call fails that call with ConnectionBroken."""

    async def script(peer: Peer) -> None:
        await peer.request()
        await peer.until_closed()

    async def scenario() -> None:
        async with Server(script) as server, pool_for(server.url()) as pool:
            call = asyncio.create_task(pool.post("/", b"x"))
            await eventually(lambda: len(server.requests) == 1)
            await pool.aclose()
            with pytest.raises(http1.ConnectionBroken):
                await call

    run(scenario())


# --- arguments


@pytest.mark.parametrize("path", ["/a b", "/a\tb", "/a\r\nX: y", "/a\x00", "/a\x7f", "v1/x", ""])
def test_bad_path_is_value_error(run: Run, path: str) -> None:
    """A path with a space or control character, or not starting with ``/``, is refused."""

    async def scenario() -> None:
        async with pool_for(f"http://127.0.0.1:{free_port()}") as pool:
            with pytest.raises(ValueError, match="not a request path"):
                await pool.post(path, b"x")

    run(scenario())


def test_host_header_leaves_out_userinfo(run: Run) -> None:
    """A base URL with user:password@ sends a Host of host:port only (RFC 9110 7.2)."""

    async def scenario() -> None:
        async with (
            Server(keep_alive) as server,
            pool_for(f"http://user:pw@127.0.0.1:{server.port}") as pool,
        ):
            await pool.post("/", b"x")
        assert server.requests[0].headers["host"] == f"127.0.0.1:{server.port}"

    run(scenario())


@pytest.mark.parametrize("url", ["ftp://127.0.0.1/", "127.0.0.1:80", "http://", "unix:///tmp/s"])
def test_non_http_url_is_value_error(url: str) -> None:
    """A base URL that is not http(s) with a host is refused."""
    with pytest.raises(ValueError, match="not an http"):
        http1.Pool(url, {}, connect_timeout_s=1, read_timeout_s=1, max_connections=1)


# --- through gateway.upstream


@asynccontextmanager
async def upstream_for(url: str, **kw: Any) -> AsyncIterator[Upstream]:
    options: dict[str, Any] = {
        "api_key": "sk-test", "connect_timeout_s": 1.0, "read_timeout_s": 1.0,
        "connect_retries": 0, "max_connections": 4, "metrics": Metrics(), **kw,
    }  # fmt: skip
    upstream = Upstream("student", url, **options)
    await upstream.start()
    try:
        yield upstream
    finally:
        await upstream.aclose()


def test_upstream_post_answers(run: Run) -> None:
    """``Upstream.post`` returns the whole answer, sent under the base path with its headers."""

    async def scenario() -> None:
        async with Server(keep_alive) as server, upstream_for(server.url() + "/v1/") as up:
            assert await up.post("/chat/completions", b"{}") == http1.Answer(200, b"ok")
        [request] = server.requests
        assert request.line == "POST /v1/chat/completions HTTP/1.1"
        assert request.headers["authorization"] == "Bearer sk-test"
        assert request.headers["content-type"] == "application/json"

    run(scenario())


def test_upstream_retries_refused_connects_then_is_unreachable(
    run: Run, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A refused connect is retried ``connect_retries`` times (counted), then raises
    UpstreamUnreachable, marked retryable."""
    monkeypatch.setattr("gateway.upstream._RETRY_BASE_S", 0.001)
    metrics = Metrics()

    async def scenario() -> None:
        url = f"http://127.0.0.1:{free_port()}"
        async with upstream_for(url, connect_retries=2, metrics=metrics) as up:
            with pytest.raises(UpstreamUnreachable) as caught:
                await up.post("/", b"x")
        assert caught.value.retryable
        assert caught.value.code == "upstream_unreachable"
        assert isinstance(caught.value.__cause__, http1.ConnectFailed)

    run(scenario())
    get = metrics.registry.get_sample_value
    assert get("protege_upstream_retries_total", {"backend": "student"}) == 2
    labels = {"backend": "student", "reason": "connect"}
    assert get("protege_upstream_errors_total", labels) == 3


async def _silent(peer: Peer) -> None:
    await peer.request()
    await peer.until_closed()


async def _garbage(peer: Peer) -> None:
    await peer.request()
    await peer.send(b"garbage\r\n\r\n")
    await peer.until_closed()


async def _cut(peer: Peer) -> None:
    await peer.request()
    await peer.send(answer(b"01234", "Content-Length: 100"))


@pytest.mark.parametrize(
    ("script", "error", "code"),
    [(_silent, UpstreamTimeout, "upstream_timeout"),
     (_garbage, UpstreamFailed, "upstream_error"),
     (_cut, UpstreamUnreachable, "upstream_disconnected")],
    ids=["timeout", "bad-answer", "broken"],
)  # fmt: skip
def test_upstream_translates_failures_without_retrying(
    run: Run, script: Script, error: type[Exception], code: str
) -> None:
    """ReadTimeout, BadAnswer and ConnectionBroken become UpstreamTimeout, UpstreamFailed and
    UpstreamUnreachable (``upstream_disconnected``), none of them retried."""

    async def scenario() -> None:
        async with (
            Server(script) as server,
            upstream_for(server.url(), read_timeout_s=0.2, connect_retries=3) as up,
        ):
            with pytest.raises(error) as caught:
                await up.post("/", b"x")
        assert getattr(caught.value, "code", None) == code
        assert not getattr(caught.value, "retryable", False)
        assert len(server.requests) == 1

    run(scenario())


# --- HTTPS


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 and its key, as PEM files."""
    x509 = pytest.importorskip("cryptography.x509", reason="cryptography makes the test cert")
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    folder = tmp_path_factory.mktemp("tls")
    (folder / "cert.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (folder / "key.pem").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return folder / "cert.pem", folder / "key.pem"


def server_context(certificate: tuple[Path, Path]) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(*certificate)
    return context


def test_https_pool_works_with_a_trusted_certificate(
    run: Run, monkeypatch: pytest.MonkeyPatch, certificate: tuple[Path, Path]
) -> None:
    """An https base URL speaks TLS to a server whose certificate the context trusts."""
    tls = server_context(certificate)
    default_context = ssl.create_default_context

    def trusting() -> ssl.SSLContext:
        return default_context(cafile=certificate[0])

    monkeypatch.setattr("gateway.http1.ssl.create_default_context", trusting)

    async def scenario() -> None:
        async with (
            Server(keep_alive, ssl_context=tls) as server,
            pool_for(server.url("https")) as pool,
        ):
            assert await pool.post("/", b"x") == http1.Answer(200, b"ok")
            assert await pool.post("/", b"x") == http1.Answer(200, b"ok")
        assert server.connections == 1

    run(scenario())


def test_https_untrusted_certificate_is_connect_failed(
    run: Run, certificate: tuple[Path, Path]
) -> None:
    """A certificate the default context does not trust fails the connect: ConnectFailed."""
    tls = server_context(certificate)

    async def scenario() -> None:
        async with (
            Server(keep_alive, ssl_context=tls) as server,
            pool_for(server.url("https")) as pool,
        ):
            with pytest.raises(http1.ConnectFailed, match="CERTIFICATE_VERIFY_FAILED"):
                await pool.post("/", b"x")
        assert server.requests == []

    run(scenario())


def test_handshake_past_connect_timeout_is_connect_failed(run: Run) -> None:
    """A TLS handshake that gets no answer within the connect timeout raises ConnectFailed."""

    async def scenario() -> None:
        async with (
            Server(Peer.until_closed) as server,
            pool_for(server.url("https"), connect_timeout_s=0.2) as pool,
        ):
            # Not the read timeout, nor the test's own bound (a TimeoutError): the connect one.
            with pytest.raises(http1.ConnectFailed, match=r"connect timed out after 0\.2 s"):
                await pool.post("/", b"x")

    run(scenario())
