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

A challenge sample (``gateway.challenge``; taken by ``gateway.dispatch``) is two such calls
sharing the one future: the champion's (the request's own shadow call where it has one) and the
challenger's, under the same concurrency bound and timeout, at most ``challenge.max_per_s`` a
second per task. Their records say ``detail.role`` ("champion" or "challenger"); each answer is
checked and scored against the teacher's with character agreement (``agreement.score``, judged
tasks included: the judge's verdicts feed the guardrails only) into the task's duel, a failed
call as 0. Only the champion's own shadow call counts in the guardrails and shadow metrics.
A request the student answers has no teacher answer to score against: for a sample of those
the teacher is asked too, in the background (``referee``: its exchange recorded with
``route=referee``, ``shadow_of`` = the client's request id), and both the champion's answer
to the client (``umpire``) and a challenger call are scored against it.
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
from gateway.capture import Exchange, completion_of
from gateway.challenge import Role
from gateway.checks import OutputChecks
from gateway.errors import UpstreamError
from gateway.intake import Incoming
from gateway.judged import ShadowJudge
from gateway.metrics import Metrics
from gateway.monitor import Monitor
from gateway.policy import RolloutPolicy
from gateway.proxy import Capture
from gateway.ratelimit import TokenBucket
from gateway.student import StudentBackend
from gateway.upstream import Upstream

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
    return checks.run(fields, student, learned), scored(student, teacher)


def scored(student: dict[str, Any], teacher: bytes | None) -> Agreement | None:
    """The student's answer scored against the teacher's recorded answer, if it completed."""
    try:
        reference = None if teacher is None else orjson.loads(teacher)
    except orjson.JSONDecodeError:
        reference = None
    return score(reference, student) if isinstance(reference, dict) else None


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
        share: float = 1.0,
    ) -> None:
        """``share``: this process's part of the rate caps (1/N for each of N workers)."""
        self._student = student
        self._judging = judging
        self._capture = capture
        self._monitor = monitor
        self._metrics = metrics
        self._background = background
        self._concurrency = concurrency
        self._timeout_s = timeout_s
        self._clock = clock
        self._share = share
        self._limits: dict[str, TokenBucket] = {}
        self._duel_limits: dict[str, TokenBucket] = {}
        self.in_flight = 0

    def start(
        self, inc: Incoming, adapter: str, max_per_s: float | None, role: Role | None = None
    ) -> asyncio.Future[bytes | None] | None:
        """Shadow ``inc`` with ``adapter`` unless its task had ``max_per_s`` calls this second;
        the future takes the client's answer once captured (``hand_over``). None: not shadowed
        (too many in flight, over the rate, or stopping). ``role``: the call is also the
        champion's side of a challenge sample."""
        if self.in_flight >= self._concurrency:
            self._metrics.shadow_requests.labels(inc.metrics_task, "skipped").inc()
            return None
        if max_per_s is not None and not self._take(self._limits, inc.task, max_per_s):
            self._metrics.shadow_requests.labels(inc.metrics_task, "limited").inc()
            return None
        answered: asyncio.Future[bytes | None] = asyncio.get_running_loop().create_future()
        return answered if self._spawn(inc, adapter, answered, role, guarded=True) else None

    def challenge(self, inc: Incoming, policy: RolloutPolicy) -> bool:
        """Whether ``inc``, sampled for its task's challenge, is taken: under the task's
        ``challenge.max_per_s`` with room for both calls in flight."""
        if self.in_flight + 2 > self._concurrency:
            self._metrics.shadow_requests.labels(inc.metrics_task, "skipped").inc()
            return False
        if not self._take(self._duel_limits, inc.task, policy.challenge.max_per_s):
            self._metrics.shadow_requests.labels(inc.metrics_task, "limited").inc()
            return False
        return True

    def _take(self, buckets: dict[str, TokenBucket], task: str, max_per_s: float) -> bool:
        """Whether ``task`` may have one more call now under this process's share of
        ``max_per_s`` calls a second."""
        rate, now = max_per_s * self._share, self._clock()
        bucket = buckets.get(task)
        if bucket is None or bucket.rate != rate:  # new, or its policy changed
            bucket = buckets[task] = TokenBucket(rate, now)
        return bucket.take(now)

    def duel(
        self, inc: Incoming, policy: RolloutPolicy, answered: asyncio.Future[bytes | None] | None
    ) -> asyncio.Future[bytes | None] | None:
        """The calls of a challenge sample taken (``challenge``): the challenger's, and the
        champion's unless ``answered`` is the future of its shadow call already started; the
        future both wait on for the client's answer (None: stopping)."""
        assert policy.adapter is not None and policy.challenger is not None
        if answered is None:
            answered = asyncio.get_running_loop().create_future()
            if not self._spawn(inc, policy.adapter, answered, "champion", guarded=False):
                return None
        self._spawn(inc, policy.challenger, answered, "challenger", guarded=False)
        return answered

    def referee(
        self, inc: Incoming, policy: RolloutPolicy, teacher: Upstream
    ) -> asyncio.Future[bytes | None] | None:
        """The calls of a challenge sample taken (``challenge``) that the student answers:
        the teacher's (``teacher``) and the challenger's; the future takes the teacher's
        answer, which the champion's answer to the client is scored against (``umpire``)."""
        assert policy.challenger is not None
        answered: asyncio.Future[bytes | None] = asyncio.get_running_loop().create_future()
        call = self._ask_teacher(inc, teacher, answered)
        if self._background.spawn(call, f"referee-{inc.request_id}") is None:
            return None
        self.in_flight += 1
        self._spawn(inc, policy.challenger, answered, "challenger", guarded=False)
        return answered

    async def umpire(
        self,
        inc: Incoming,
        adapter: str,
        answer: Exchange | dict[str, Any] | None,
        answered: asyncio.Future[bytes | None],
    ) -> None:
        """Score the champion's answer to the client (an exchange or its completion; None: the
        call failed, 0) against the referee's answer."""
        if answer is None:
            self._monitor.dueled(inc.task, "champion", adapter, 0.0)
            return
        completion = answer if isinstance(answer, dict) else completion_of(answer)
        teacher = await self._teacher(answered)
        if completion is None or teacher is None:
            return
        if len(teacher) > INLINE_BYTES:
            agreement = await asyncio.to_thread(scored, completion, teacher)
        else:
            agreement = scored(completion, teacher)
        if agreement is not None:
            self._monitor.dueled(inc.task, "champion", adapter, agreement.overall)

    async def _ask_teacher(
        self, inc: Incoming, teacher: Upstream, answered: asyncio.Future[bytes | None]
    ) -> None:
        started = time.perf_counter()
        ex = inc.exchange("teacher", "referee")
        ex.request_id, ex.shadow_of, ex.stream = new_id(), inc.request_id, False
        ex.detail = {"why": "referee"}
        try:
            async with asyncio.timeout(self._timeout_s):
                answer = await teacher.post(inc.path, _unary(inc.payload, inc.stream))
            ex.status, ex.response = answer.status, answer.body
            ex.complete = answer.status == 200
        except (UpstreamError, TimeoutError) as exc:
            timed_out = isinstance(exc, TimeoutError)
            ex.status = 504 if timed_out else getattr(exc, "status", 502)
            ex.error = "the referee call timed out" if timed_out else str(exc)
        finally:
            self.in_flight -= 1
        if not answered.done():
            answered.set_result(ex.response if ex.complete else None)
        self._capture.submit(inc, ex, started)

    def _spawn(
        self,
        inc: Incoming,
        adapter: str,
        answered: asyncio.Future[bytes | None],
        role: Role | None,
        guarded: bool,
    ) -> bool:
        call = self._run(inc, adapter, answered, role, guarded)
        name = f"shadow-{role or 'student'}-{inc.request_id}"
        if self._background.spawn(call, name) is None:
            return False
        self.in_flight += 1
        return True

    async def _run(
        self,
        inc: Incoming,
        adapter: str,
        answered: asyncio.Future[bytes | None],
        role: Role | None,
        guarded: bool,
    ) -> None:
        """One background call; ``guarded``: the task's shadow call (its guardrails and
        metrics count it); ``role``: its side of a challenge sample."""
        started = time.perf_counter()
        ex = inc.exchange("student", "shadow", adapter)
        ex.request_id, ex.shadow_of, ex.stream = new_id(), inc.request_id, False
        tag = {"why": "shadow" if guarded else "challenge"} | ({"role": role} if role else {})
        try:
            async with asyncio.timeout(self._timeout_s):
                completion = await self._student.complete(inc, adapter)
        except (UpstreamError, TimeoutError) as exc:
            timed_out = isinstance(exc, TimeoutError)
            ex.status = 504 if timed_out else getattr(exc, "status", 502)
            ex.error = "the shadow call timed out" if timed_out else str(exc)
            ex.detail = {**(ex.detail or {}), **tag}
            self._metrics.shadow_requests.labels(inc.metrics_task, "failed").inc()
            if role is not None:
                self._monitor.dueled(inc.task, role, adapter, 0.0)
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
        judging = judging if guarded else None
        if guarded:
            self._monitor.shadowed(inc.task, failed, agreement, judged=judging is not None)
        if role is not None and agreement is not None:
            self._monitor.dueled(inc.task, role, adapter, agreement.overall)
        ex.detail = {
            **(ex.detail or {}),  # the decoding the student was asked with
            **tag,
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




def _unary(payload: bytes, stream: bool) -> bytes:
    """``payload`` asking for a whole answer (a streamed request's, without its stream)."""
    if not stream:
        return payload
    fields = orjson.loads(payload)
    fields.pop("stream_options", None)
    return orjson.dumps({**fields, "stream": False})
