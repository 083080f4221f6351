"""Shadow calls: the student answers a sampled request in the background, never the client.

The call starts with the request (so it overlaps the teacher's), runs in ``Background`` (awaited
on shutdown), and is bounded twice: a request finding ``concurrency`` calls in flight is not
shadowed (counted as skipped), nor is one beyond its task's ``shadow_max_per_s`` (a token
bucket per task; counted as limited). Once both answers are in, the student's is checked and
scored against the teacher's (off the event loop when they are large), and recorded as its own
exchange (``route=shadow``, ``shadow_of`` = the client's request id, ``detail`` = checks,
agreement and the decoding the student was asked with). For a task judged pairwise the pair
also goes to the judge (``gateway.judged``) and the record waits, bounded, for its verdict
(``detail.judged``). Nothing here can delay or fail the client's request: its answer only
resolves a future this side awaits.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any, Final

import orjson
import structlog

from core.ids import new_id
from gateway.agreement import Agreement, score
from gateway.background import Background
from gateway.capture import Exchange
from gateway.checks import OutputChecks
from gateway.errors import UpstreamError
from gateway.intake import Incoming
from gateway.judged import ShadowJudge
from gateway.metrics import Metrics
from gateway.monitor import Monitor
from gateway.proxy import Capture
from gateway.ratelimit import TokenBucket
from gateway.student import StudentBackend

log = structlog.get_logger("gateway")

# Answers up to this size (both together) are judged on the event loop: assembling, checking
# and scoring them costs less than handing them to a thread.
INLINE_BYTES: Final = 16 * 1024


def hand_over(answered: asyncio.Future[bytes | None], ex: Exchange) -> None:
    """Give a shadow call waiting on ``answered`` the client's answer in ``ex`` (the teacher's
    exchange, being captured): a plain body at once; a stream once the record encoder has
    assembled it, off the loop (``Exchange.answered``)."""
    if answered.done() or ex.answered is not None:
        return
    if ex.stream:
        ex.answered = _resolver(answered)
    else:
        answered.set_result(ex.response if ex.status == 200 and ex.complete else None)


def _resolver(future: asyncio.Future[bytes | None]) -> Callable[[bytes | None], None]:
    """A callback, safe from any thread, that resolves ``future`` on its loop (once)."""
    loop = future.get_loop()

    def resolve(body: bytes | None) -> None:
        if not future.done():
            future.set_result(body)

    def call(body: bytes | None) -> None:
        if not loop.is_closed():  # a stopped gateway has nobody waiting
            loop.call_soon_threadsafe(resolve, body)

    return call


def judge(
    checks: OutputChecks,
    fields: dict[str, Any],
    student: dict[str, Any],
    teacher: bytes | None,
    learned: Any = None,
) -> tuple[tuple[str, ...], Agreement | None]:
    """(failed checks, agreement with the teacher's recorded answer if it completed): pure.
    ``learned``: the adapter's learned schema, where it applies (``OutputChecks.run``)."""
    failed = checks.run(fields, student, learned)
    try:
        reference = None if teacher is None else orjson.loads(teacher)
    except orjson.JSONDecodeError:
        reference = None
    if not isinstance(reference, dict):
        return failed, None
    return failed, score(reference, student)


class Shadow:
    """Starts, bounds and accounts for shadow calls to the student."""

    def __init__(
        self,
        student: StudentBackend,
        capture: Capture,
        monitor: Monitor,
        metrics: Metrics,
        background: Background,
        concurrency: int,
        timeout_s: float,
        judging: ShadowJudge | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._student = student
        self._judging = judging
        self._capture = capture
        self._monitor = monitor
        self._metrics = metrics
        self._background = background
        self._concurrency = concurrency
        self._timeout_s = timeout_s
        self._clock = clock
        self._limits: dict[str, TokenBucket] = {}
        self.in_flight = 0

    def start(
        self, inc: Incoming, adapter: str, max_per_s: float | None
    ) -> asyncio.Future[bytes | None] | None:
        """Shadow ``inc`` with ``adapter`` unless its task had ``max_per_s`` calls this second;
        the future takes the client's answer once captured (``hand_over``). None: not shadowed
        (too many in flight, over the rate, or stopping)."""
        if self.in_flight >= self._concurrency:
            self._metrics.shadow_requests.labels(inc.metrics_task, "skipped").inc()
            return None
        if max_per_s is not None and not self._limit(inc.task, max_per_s).take(self._clock()):
            self._metrics.shadow_requests.labels(inc.metrics_task, "limited").inc()
            return None
        answered: asyncio.Future[bytes | None] = asyncio.get_running_loop().create_future()
        call = self._run(inc, adapter, answered)
        if self._background.spawn(call, f"shadow-{inc.request_id}") is None:
            return None
        self.in_flight += 1
        return answered

    def _limit(self, task: str, rate: float) -> TokenBucket:
        bucket = self._limits.get(task)
        if bucket is None or bucket.rate != rate:  # new, or its policy changed
            bucket = self._limits[task] = TokenBucket(rate, self._clock())
        return bucket

    async def _run(
        self, inc: Incoming, adapter: str, answered: asyncio.Future[bytes | None]
    ) -> None:
        started = time.perf_counter()
        ex = inc.exchange("student", "shadow", adapter)
        ex.request_id, ex.shadow_of, ex.stream = new_id(), inc.request_id, False
        try:
            async with asyncio.timeout(self._timeout_s):
                completion = await self._student.complete(inc, adapter)
        except (UpstreamError, TimeoutError) as exc:
            timed_out = isinstance(exc, TimeoutError)
            ex.status = 504 if timed_out else getattr(exc, "status", 502)
            ex.error = "the shadow call timed out" if timed_out else str(exc)
            self._metrics.shadow_requests.labels(inc.metrics_task, "failed").inc()
            self._capture.submit(inc, ex, started)
            return
        finally:
            self.in_flight -= 1
        teacher = await self._teacher(answered)
        ex.status, ex.complete = 200, True
        ex.response = orjson.dumps(completion)
        checks = self._monitor.checks(inc.task)
        learned = None if inc.decoding is None else inc.decoding.schema
        args = (checks, inc.fields, completion, teacher, learned)
        if teacher is not None and len(teacher) + len(ex.response) > INLINE_BYTES:
            failed, agreement = await asyncio.to_thread(judge, *args)
        else:  # tens of microseconds: cheaper here than a thread hop
            failed, agreement = judge(*args)
        judging = self._judging if self._judging and self._judging.judges(inc.task) else None
        self._monitor.shadowed(inc.task, failed, agreement, judged=judging is not None)
        ex.detail = {
            **(ex.detail or {}),  # the decoding the student was asked with
            "why": "shadow",
            "checks": list(failed),
            "agreement": None if agreement is None else agreement.to_dict(),
        }
        outcome = "scored" if agreement is not None else "unscored"
        self._metrics.shadow_requests.labels(inc.metrics_task, outcome).inc()
        if judging is not None and agreement is not None and teacher is not None:
            judged = await judging.verdict(inc.task, inc.fields, completion, teacher)
            if judged is not None:
                ex.detail["judged"] = judged
        self._capture.submit(inc, ex, started)

    async def _teacher(self, answered: asyncio.Future[bytes | None]) -> bytes | None:
        """The client's answer once captured; None if it did not complete, or is not captured
        within the shadow timeout (its request failed before capture)."""
        if answered.done():
            return answered.result()
        try:
            async with asyncio.timeout(self._timeout_s):
                return await answered
        except TimeoutError:
            return None
