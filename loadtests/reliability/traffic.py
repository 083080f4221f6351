"""Paced client load on the gateway, every answer accounted for.

``Traffic`` runs ``concurrency`` aiohttp workers that together send about ``rate`` requests a
second (each worker keeps its own schedule and never bursts to catch up), so latency is the
gateway's, not a queue the client built. Each request becomes an ``Outcome``: the phase it was
sent in (the scenario moves the phase as it provokes and clears its fault), its latency, the
status and ``x-protege-request-id`` the gateway answered with, and how the answer ended. An
answer counts as whole when a plain body was read to its end, or a stream ended with
``data: [DONE]`` or with the gateway's SSE error event; a refused, reset or cut connection is a
client error.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass, field

import aiohttp
import orjson
from mix import Mix, Request

WHOLE = frozenset({"body", "done", "error_event"})


@dataclass(frozen=True)
class Outcome:
    phase: str
    started: float  # monotonic seconds
    latency_s: float
    status: int  # 0: no HTTP answer
    request_id: str | None
    stream: bool
    # body | done | error_event (whole answers); eof (a stream ended with neither), cut (the
    # connection broke mid-answer), left (the client went away on purpose), failed (no answer)
    ended: str
    error: str | None = None
    nonce: str | None = None
    path: str = ""
    code: str | None = None  # an error answer's OpenAI error code
    shaped: bool | None = None  # an error answer: whether its body has the OpenAI error shape

    @property
    def whole(self) -> bool:
        return self.ended in WHOLE and self.request_id is not None

    @property
    def recorded(self) -> bool:
        """Whether the gateway owes a record for this answer: every whole answer but its own
        refusals before forwarding (the spool full under ``on_full: reject``)."""
        return self.whole and not (self.status == 503 and self.code == "capture_unavailable")


@dataclass(frozen=True)
class Latency:
    count: int
    p50_ms: float
    p99_ms: float
    max_ms: float


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile of sorted ``values``."""
    if not values:
        return math.nan
    rank = max(1, math.ceil(q / 100 * len(values)))
    return values[min(rank, len(values)) - 1]


def latency(outcomes: Iterable[Outcome]) -> Latency:
    """Latency of the whole 200 answers among ``outcomes``."""
    ms = sorted(o.latency_s * 1000 for o in outcomes if o.whole and o.status == 200)
    if not ms:
        return Latency(0, math.nan, math.nan, math.nan)
    return Latency(len(ms), percentile(ms, 50), percentile(ms, 99), ms[-1])


@dataclass
class Traffic:
    base_url: str
    mix: Mix
    rate: float = 200.0  # requests per second, all workers together
    concurrency: int = 16
    timeout_s: float = 15.0
    # Of every N requests, one is a leaver (see ``Mix.leaver``); 0: none.
    leave_every: int = 0
    phase: str = "warm-up"
    outcomes: list[Outcome] = field(default_factory=list)
    _sent: int = 0

    def in_phase(self, *phases: str) -> list[Outcome]:
        return [o for o in self.outcomes if o.phase in phases]

    async def hold(self, phase: str, seconds: float) -> None:
        """Send under ``phase`` for ``seconds``."""
        self.phase = phase
        await asyncio.sleep(seconds)

    async def baseline(self, seconds: float) -> None:
        """One second of warm-up, then ``seconds`` of the "before" phase the fault is judged
        against."""
        await self.hold("warm-up", 1)
        await self.hold("before", seconds)

    async def wait_until(
        self, condition: Callable[[], bool], timeout_s: float, poll_s: float = 0.1
    ) -> float | None:
        """Seconds until ``condition()`` held (load keeps running), None if it never did."""
        start = time.monotonic()
        while time.monotonic() - start < timeout_s:
            if condition():
                return time.monotonic() - start
            await asyncio.sleep(poll_s)
        return None

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[Traffic]:
        """Load runs inside the block; leaving it waits for the requests in flight."""
        stop = asyncio.Event()
        task = asyncio.create_task(self._run(stop))
        try:
            yield self
        finally:
            stop.set()
            await task

    async def _run(self, stop: asyncio.Event) -> None:
        connector = aiohttp.TCPConnector(limit=self.concurrency * 2, force_close=False)
        timeout = aiohttp.ClientTimeout(total=self.timeout_s)
        async with (
            aiohttp.ClientSession(connector=connector, timeout=timeout) as session,
            asyncio.TaskGroup() as workers,
        ):
            for i in range(self.concurrency):
                workers.create_task(self._worker(session, i, stop))

    async def _worker(
        self, session: aiohttp.ClientSession, index: int, stop: asyncio.Event
    ) -> None:
        interval = self.concurrency / self.rate
        due = time.monotonic() + index * interval / self.concurrency
        while not stop.is_set():
            delay = due - time.monotonic()
            if delay > 0:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), delay)
                if stop.is_set():
                    return
            due = max(due + interval, time.monotonic())
            self.outcomes.append(await self._send(session, self._next()))

    def _next(self) -> Request:
        self._sent += 1
        if self.leave_every and self._sent % self.leave_every == 0:
            return self.mix.leaver(stream=(self._sent // self.leave_every) % 2 == 0)
        return self.mix.next()

    async def _send(self, session: aiohttp.ClientSession, req: Request) -> Outcome:
        phase, started = self.phase, time.monotonic()
        t0 = time.perf_counter()
        status, rid, ended, error = 0, None, "failed", None
        code: str | None = None
        shaped: bool | None = None
        timeout = aiohttp.ClientTimeout(total=0.15) if req.leave == "before_answer" else None
        try:
            async with session.post(
                self.base_url + req.path,
                data=orjson.dumps(req.body),
                headers={"content-type": "application/json", "authorization": "Bearer load"},
                timeout=timeout,
            ) as resp:
                status, rid = resp.status, resp.headers.get("x-protege-request-id")
                if req.stream and resp.content_type == "text/event-stream":
                    ended = await _read_stream(resp, req.leave == "after_first_event")
                else:
                    body = await resp.read()
                    ended = "body"
                    if status >= 400:
                        shaped, code = openai_error(body)
        except TimeoutError:
            ended = "left" if req.leave == "before_answer" else "failed"
            error = "timeout"
        except aiohttp.ClientPayloadError as exc:
            ended, error = "cut", type(exc).__name__
        except (aiohttp.ClientError, OSError) as exc:
            ended, error = ("cut" if status else "failed"), type(exc).__name__
        return Outcome(
            phase, started, time.perf_counter() - t0, status, rid, req.stream, ended, error,
            req.nonce, req.path, code, shaped,
        )  # fmt: skip


def openai_error(body: bytes) -> tuple[bool, str | None]:
    """(whether ``body`` is ``{"error": {"message", "type", "param", "code"}}``, its code)."""
    try:
        obj = orjson.loads(body)
    except orjson.JSONDecodeError:
        return False, None
    error = obj.get("error") if isinstance(obj, dict) else None
    if not isinstance(error, dict) or set(error) < {"message", "type", "param", "code"}:
        return False, None
    ok = isinstance(error["message"], str) and isinstance(error["type"], str)
    code = error["code"] if isinstance(error["code"], str) else None
    return ok, code


async def _read_stream(resp: aiohttp.ClientResponse, leave_early: bool) -> str:
    """How an SSE answer ended: done, error_event, eof, or left (closed after one event)."""
    done = errored = False
    async for line in resp.content:
        if not line.startswith(b"data: "):
            continue
        if leave_early:
            resp.close()  # drops the connection: the gateway sees the client go
            return "left"
        if line.startswith(b"data: [DONE]"):
            done = True
        elif line.startswith(b'data: {"error"'):
            errored = True
    if done and not errored:
        return "done"
    return "error_event" if errored else "eof"
