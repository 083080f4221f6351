"""The gateway's own HTTP/1.1 client against aiohttp: calls per second and client CPU per call.

    .venv/bin/python loadtests/http1_client.py [--rounds 7] [--seconds 1.5] [--quick]

``gateway.http1.Pool`` (the gateway's whole-answer calls to the student) and an
``aiohttp.ClientSession`` set up as ``gateway.upstream`` sets up its own (``TCPConnector`` limited
to the student's ``max_connections``, keep-alive, socket timeouts, default headers) POST the same
~1 KB chat request to the same fake student, this file run with ``--serve PORT`` in a child
process on the first CPU, and read and parse (orjson) its whole ~400 B chat completion. The
clients run here, on the second CPU, on uvloop, with the gateway's GC settings; CPU time is
``time.process_time()`` of this process only. At 1 and 16 concurrent calls each round measures
both clients (fresh client, warm-up, timed window), in an order alternating from round to
round; reported are medians over rounds and the median of the rounds' ratios. Always exits 0.
See loadtests/README.md ("HTTP/1.1 client").
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import platform
import re
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, Final

import aiohttp
import orjson
import procs
import uvloop
from payloads import chat_request

from gateway import heap, http1
from gateway.config import StudentConfig

CONCURRENCY: Final = (1, 16)
CLIENTS: Final = ("http1", "aiohttp")
HEADERS: Final = {"Content-Type": "application/json", "Accept-Encoding": "identity"}
PATH: Final = "/chat/completions"
REQUEST: Final = chat_request(stream=False)
_CONTENT = (
    "You don't need to return the keyboard: I have opened a ticket for a replacement left "
    "shift and enter keycap (ISO layout). They ship within two business days."
)
ANSWER_BODY: Final = orjson.dumps({
    "id": "cmpl-5f0e2c", "object": "chat.completion", "created": 1_732_000_000,
    "model": "support/3",
    "choices": [{"index": 0, "message": {"role": "assistant", "content": _CONTENT},
                 "finish_reason": "stop"}],
    "usage": {"prompt_tokens": 231, "completion_tokens": 38, "total_tokens": 269},
})  # fmt: skip
ANSWER: Final = (
    b"HTTP/1.1 200 OK\r\ndate: Wed, 27 Nov 2026 10:00:00 GMT\r\nserver: uvicorn\r\n"
    b"content-type: application/json\r\ncontent-length: %d\r\n\r\n%s"
) % (len(ANSWER_BODY), ANSWER_BODY)
_LENGTH = re.compile(rb"\r\ncontent-length:[ \t]*(\d+)", re.IGNORECASE)

Call = Callable[[], Awaitable[Any]]


# --- the fake student (child process)


class _Student(asyncio.Protocol):
    """Answers every request on a keep-alive connection with ``ANSWER``, in order."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport: Any = transport  # uvloop's transports are not asyncio subclasses
        self._buf = bytearray()

    def data_received(self, data: bytes) -> None:
        self._buf += data
        while (head_end := self._buf.find(b"\r\n\r\n")) >= 0:
            found = _LENGTH.search(self._buf, 0, head_end + 2)
            end = head_end + 4 + (int(found[1]) if found else 0)
            if len(self._buf) < end:
                return
            del self._buf[:end]
            self._transport.write(ANSWER)


async def serve(port: int) -> None:
    server = await asyncio.get_running_loop().create_server(_Student, procs.HOST, port)
    async with server:
        await server.serve_forever()


# --- the two clients


async def http1_client(url: str, config: StudentConfig) -> tuple[Call, Call]:
    pool = http1.Pool(
        url,
        HEADERS,
        connect_timeout_s=config.connect_timeout_s,
        read_timeout_s=config.read_timeout_s,
        max_connections=config.max_connections,
    )

    async def call() -> Any:
        answer = await pool.post(PATH, REQUEST)
        if answer.status != 200:
            raise RuntimeError(f"status {answer.status}")
        return orjson.loads(answer.body)

    return call, pool.aclose


async def aiohttp_client(url: str, config: StudentConfig) -> tuple[Call, Call]:
    session = aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(
            limit=config.max_connections, ttl_dns_cache=60, keepalive_timeout=http1.IDLE_S
        ),
        timeout=aiohttp.ClientTimeout(
            total=None, sock_connect=config.connect_timeout_s, sock_read=config.read_timeout_s
        ),
        headers=HEADERS,
        skip_auto_headers=("User-Agent",),
    )

    async def call() -> Any:
        async with session.post(url + PATH, data=REQUEST) as response:
            body = await response.read()
        if response.status != 200:
            raise RuntimeError(f"status {response.status}")
        return orjson.loads(body)

    return call, session.close


async def calls_for(call: Call, concurrency: int, seconds: float) -> int:
    """Calls completed by ``concurrency`` loops calling back to back for ``seconds``."""
    stop_at, done = time.perf_counter() + seconds, 0

    async def loop() -> None:
        nonlocal done
        while time.perf_counter() < stop_at:
            await call()
            done += 1

    await asyncio.gather(*(loop() for _ in range(concurrency)))
    return done


async def measure(client: str, url: str, concurrency: int, args: argparse.Namespace) -> dict:
    """One measurement: calls/s, CPU µs per call, and the share of its core each side used."""
    make = http1_client if client == "http1" else aiohttp_client
    call, close = await make(url, StudentConfig())
    try:
        await calls_for(call, concurrency, args.seconds / 5)  # connections opened, code warm
        gc.collect()
        student0 = procs.cpu_seconds(args.student_pid)
        cpu0, wall0 = time.process_time(), time.perf_counter()
        done = await calls_for(call, concurrency, args.seconds)
        cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
        student = procs.cpu_seconds(args.student_pid) - student0
    finally:
        await close()
    return {"calls_s": done / wall, "cpu_us": cpu / done * 1e6, "core": cpu / wall,
            "student_core": student / wall}  # fmt: skip


async def run_rounds(url: str, args: argparse.Namespace) -> dict[tuple[str, int], list[dict]]:
    results: dict[tuple[str, int], list[dict]] = {}
    for rnd in range(args.rounds):
        for concurrency in CONCURRENCY:
            order = CLIENTS if (rnd + concurrency) % 2 == 0 else CLIENTS[::-1]
            for client in order:
                figures = await measure(client, url, concurrency, args)
                results.setdefault((client, concurrency), []).append(figures)
        print(f"  round {rnd + 1}/{args.rounds} done", flush=True)
    return results


def median(rows: list[dict], key: str) -> float:
    return statistics.median(r[key] for r in rows)


def report(results: dict[tuple[str, int], list[dict]]) -> str:
    head = (
        f"{'conc':>4}  {'client':<8}{'calls/s':>10}{'CPU µs/call':>13}{'client core':>13}"
        f"{'student core':>14}"
    )
    lines = [head, "-" * len(head)]
    for concurrency in CONCURRENCY:
        for client in CLIENTS:
            rows = results[(client, concurrency)]
            lines.append(
                f"{concurrency:>4}  {client:<8}{median(rows, 'calls_s'):>10,.0f}"
                f"{median(rows, 'cpu_us'):>13.1f}{median(rows, 'core'):>13.0%}"
                f"{median(rows, 'student_core'):>14.0%}"
            )
    lines += ["", "aiohttp / http1, median of the rounds' ratios (min - max):"]
    for concurrency in CONCURRENCY:
        pairs = list(zip(results[("aiohttp", concurrency)], results[("http1", concurrency)],
                         strict=True))  # fmt: skip
        for key, what in (("cpu_us", "CPU per call"), ("calls_s", "calls/s")):
            ratios = [a[key] / h[key] for a, h in pairs]
            lines.append(
                f"  {concurrency:>2} concurrent, {what:<13}{statistics.median(ratios):>6.2f}x"
                f"  ({min(ratios):.2f} - {max(ratios):.2f})"
            )
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--rounds", type=int, default=7, help="measurements of each client")
    p.add_argument("--seconds", type=float, default=1.5, help="timed window of a measurement")
    p.add_argument("--quick", action="store_true", help="3 rounds of 0.5 s: a check it works")
    p.add_argument("--serve", type=int, metavar="PORT", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.quick:
        args.rounds, args.seconds = 3, 0.5
    if args.rounds < 1 or args.seconds <= 0:
        p.error("--rounds must be >= 1 and --seconds > 0")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.serve is not None:
        uvloop.run(serve(args.serve))
        return 0
    cores = procs.bench_cores()
    port = procs.free_port()
    print(
        f"HTTP/1.1 client: {os.cpu_count()} CPUs ({procs.cpu_model()}), Python "
        f"{platform.python_version()}, aiohttp {aiohttp.__version__}; {args.rounds} rounds of "
        f"{args.seconds:g} s; request {len(REQUEST)} B, answer body {len(ANSWER_BODY)} B"
    )
    with tempfile.TemporaryDirectory(prefix="protege-http1-bench-") as tmp:
        log = Path(tmp) / "student.log"
        argv_ = [sys.executable, str(Path(__file__).resolve()), "--serve", str(port)]
        student = procs.start(argv_, cores[0], log, procs.local_env({}))
        try:
            procs.wait_healthy(student, port, "/healthz", log)
            os.sched_setaffinity(0, {cores[1]})
            args.student_pid = student.pid
            heap.settle()
            url = f"http://{procs.HOST}:{port}/v1"
            results = uvloop.run(run_rounds(url, args))
        finally:
            procs.stop(student)
    print()
    print(report(results))
    load = ", ".join(f"{v:.1f}" for v in os.getloadavg())
    print(f"\nload average at the end (1, 5, 15 min): {load}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
