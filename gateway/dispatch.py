"""Answering one admitted request under its task's rollout: teacher, shadow, canary, hybrid or
student, with the fallbacks and the monitoring each mode calls for.

The decision itself is ``gateway.routing.decide`` (pure); this module gathers its facts, acts
on it, and tells the monitor what the student did. Teacher mode takes the shortest path: no
facts, no watching, exactly the proxy it was before rollouts existed (unless a challenger is
being proven). While the task has a challenger, a sample of its requests also starts the
challenge calls (``gateway.shadow``): beside the teacher's answer, or, where the champion
answers the client, beside a referee's.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable
from typing import Any, Final

import orjson
import structlog
from starlette.responses import Response

from core.ids import new_id
from core.text import prompt_text
from gateway.adapters import References
from gateway.background import Background
from gateway.capture import Exchange, completion_of
from gateway.challenge import Role
from gateway.checks import OutputChecks
from gateway.decoding import StudentDecoding, apply
from gateway.disconnect import ClientGone, unless_gone
from gateway.drift import DriftMonitor, out_of_bounds
from gateway.errors import UpstreamError
from gateway.intake import Incoming
from gateway.metrics import Metrics
from gateway.monitor import Monitor
from gateway.policy import RolloutPolicy
from gateway.proxy import Backend, Proxy, TeacherBackend, backend_headers, timing_headers
from gateway.relay import stream
from gateway.rollouts import Rollouts
from gateway.routing import Decision, Facts, decide, sampled
from gateway.shadow import INLINE_BYTES, Shadow, hand_over
from gateway.sse import replay
from gateway.student import StudentBackend, wants_usage

log = structlog.get_logger("gateway")

# Reasons hybrid routing sends a request to the teacher without asking the student.
_DECLINED: Final = frozenset({"drift", "too_long", "charset"})
# The decoding of a request no route names (its task from a header or the model name).
_NO_OVERRIDE: Final = StudentDecoding()


class Dispatch:
    """Routes admitted requests to their backends and watches the student's answers."""

    def __init__(
        self,
        proxy: Proxy,
        teacher: TeacherBackend,
        student: StudentBackend | None,
        rollouts: Rollouts,
        monitor: Monitor,
        shadow: Shadow | None,
        drift: DriftMonitor,
        references: References,
        background: Background,
        rng: Callable[[], float] = random.random,
    ) -> None:
        self.proxy = proxy
        self.teacher = teacher
        self.student = student
        self.rollouts = rollouts
        self.monitor = monitor
        self.shadow = shadow
        self.drift = drift
        self.references = references
        self.background = background
        self.rng = rng

    @property
    def metrics(self) -> Metrics:
        return self.proxy.metrics

    async def answer(self, inc: Incoming) -> Response:
        policy = self.rollouts.policy(inc.task)
        if policy is None or policy.adapter is None:
            return await self._answer(inc, self.teacher, "teacher")
        if policy.mode == "teacher" and policy.challenger is None:
            return await self._answer(inc, self.teacher, "teacher")
        if policy.mode != "teacher":
            self.drift.observe(inc.task, inc.fields.get("messages"))
        decision = decide(inc.task, policy, self._facts(inc, policy), self.rng)
        inc.why, inc.watch = decision.why, self._watch
        duel = self._challenged(inc, policy, decision)
        if decision.shadow and self.shadow is not None:
            self._decode(inc, policy.adapter)
            role: Role | None = "champion" if duel else None
            inc.answered = self.shadow.start(inc, policy.adapter, policy.shadow_max_per_s, role)
            if inc.answered is None:
                inc.why = "shadow_skipped"  # sampled, but over the rate or the concurrency
        if duel and self.shadow is not None:
            if inc.decoding is None:
                self._decode(inc, policy.adapter)  # the champion's decoding, for both
            if decision.backend == "teacher":
                shadowed = inc.answered if decision.shadow else None
                inc.answered = self.shadow.duel(inc, policy, shadowed)
            else:  # the champion answers the client: the teacher referees
                inc.answered = self.shadow.referee(inc, policy, self.teacher.upstream)
        if decision.backend == "teacher" or self.student is None:
            if decision.why in _DECLINED:
                self.metrics.hybrid_declined.labels(inc.metrics_task, decision.why).inc()
            return await self._answer(inc, self.teacher, decision.route)
        inc.adapter = policy.adapter
        self._decode(inc, policy.adapter)
        if policy.mode == "hybrid":
            return await self._hybrid(inc, self.student, decision.route)
        return await self._student_first(inc, self.student, decision.route)

    def _challenged(self, inc: Incoming, policy: RolloutPolicy, decision: Decision) -> bool:
        """Whether ``inc`` is a challenge sample: its task has a challenger, the student serves
        it, and it is sampled (``challenge.percent``) and taken (``Shadow.challenge``). One the
        teacher answers (by routing's decision; fallbacks aside) is scored against its answer;
        one the champion answers, against a referee's (``Shadow.referee``)."""
        if policy.challenger is None or self.shadow is None:
            return False
        if self.student is None or not self.student.serves(inc):
            return False
        if not sampled(policy.challenge.percent, self.rng):
            return False
        return self.shadow.challenge(inc, policy)

    def _facts(self, inc: Incoming, policy: RolloutPolicy) -> Facts:
        served = self.student is not None and self.student.serves(inc)
        if policy.mode != "hybrid" or not served:
            return Facts(inc.user or inc.client, served)
        text = prompt_text(inc.fields.get("messages"))
        reference = self.references.profile(inc.task)
        if reference is not None:
            bounds = out_of_bounds(text, reference, policy.max_prompt_chars)
        elif policy.max_prompt_chars is not None and len(text) > policy.max_prompt_chars:
            bounds = "too_long"
        else:
            bounds = None
        return Facts(inc.user or inc.client, served, self.drift.score(inc.task), bounds)

    def _decode(self, inc: Incoming, adapter: str) -> None:
        """How the student is asked: the adapter's published decoding, the route's override."""
        route = inc.route.student_decoding if inc.route is not None else _NO_OVERRIDE
        inc.decoding = apply(inc.fields, self.references.published(inc.task, adapter), route)

    async def _answer(self, inc: Incoming, backend: Backend, route: str) -> Response:
        if inc.stream:
            return await stream(self.proxy, inc, backend, route)
        return await self.proxy.unary(inc, backend, route)

    async def _student_first(self, inc: Incoming, student: StudentBackend, route: str) -> Response:
        """canary/student: the student answers; the teacher when it fails before a byte."""
        began = time.perf_counter()
        try:
            return await self._answer(inc, student, route)
        except UpstreamError as exc:
            if exc.backend != student.name:
                raise
            inc.failed_upstream_s += time.perf_counter() - began
            return await self._fall_back(inc, exc.code or "error", "student_failed", exc.message)

    async def _fall_back(self, inc: Incoming, reason: str, why: str, message: str) -> Response:
        self.metrics.fallbacks.labels(inc.metrics_task, reason).inc()
        log.warning("the teacher answers for the student", reason=reason, error=message)
        inc.why = why
        return await self._answer(inc, self.teacher, "fallback")

    async def _hybrid(self, inc: Incoming, student: StudentBackend, route: str) -> Response:
        """The student's whole answer, checked before any byte reaches the client; the
        teacher's instead when it fails a check or the student fails."""
        began = time.perf_counter()
        ex = inc.exchange(student.name, route, inc.adapter)
        try:
            completion = await unless_gone(inc, student.complete(inc, student.adapter(inc)))
        except UpstreamError as exc:
            self.monitor.called(inc.task, failed=True)
            self._umpire(inc, None)
            await self.proxy.fail(inc, ex, student, exc)
            inc.failed_upstream_s += time.perf_counter() - began
            return await self._fall_back(inc, exc.code or "error", "student_failed", exc.message)
        except ClientGone:  # nobody waits: no teacher either
            self.monitor.called(inc.task, failed=False)
            return await self.proxy.gone(inc, ex)
        upstream_s = time.perf_counter() - began
        failed = self.monitor.checks(inc.task).run(inc.fields, completion, _learned(inc))
        self.monitor.called(inc.task, failed=False)
        self.monitor.checked(inc.task, failed)
        self._umpire(inc, completion)
        ex.detail = {**(ex.detail or {}), "why": inc.why, "checks": list(failed)}
        ex.status, ex.complete = 200, True
        if inc.stream:
            ex.response = replay(completion, wants_usage(inc.fields))
            ex.ttft_ms = (time.perf_counter() - inc.started) * 1000
        else:
            ex.response = orjson.dumps(completion)
        if failed:
            # The rejected answer is kept (under its own id) for whoever curates the data.
            ex.request_id = new_id()
            await self.proxy.capture.record(inc, ex)
            inc.failed_upstream_s += upstream_s
            reason = f"check_{failed[0]}"
            return await self._fall_back(inc, reason, "check_failed", ",".join(failed))
        await self.proxy.capture.record(inc, ex)
        self.proxy.observe_overhead(inc, upstream_s)
        media = "text/event-stream" if inc.stream else "application/json"
        headers = {**timing_headers(inc, upstream_s), **backend_headers(ex)}
        return Response(ex.response, headers=headers, media_type=media)

    def _watch(self, inc: Incoming, ex: Exchange) -> None:
        """Told of each exchange recorded for a request under a rollout."""
        if ex.shadow_of is not None:
            return
        if ex.backend == "teacher":
            if inc.answered is not None:
                hand_over(inc.answered, ex)
            return
        if ex.route == "hybrid":
            return  # judged where it was asked
        cut = ex.status == 200 and not ex.complete and ex.error != "client disconnected"
        self.monitor.called(inc.task, failed=ex.status >= 500 or cut)
        whole = ex.status == 200 and ex.complete
        if whole or ex.status >= 500 or cut:
            self._umpire(inc, ex if whole else None)
        if not whole:
            return
        # The output checks on an answer already sent: counted, not acted on. A small plain
        # answer is checked here (microseconds); a stream must be assembled first, off the loop.
        checks = self.monitor.checks(inc.task)
        if ex.stream or len(ex.response or b"") > INLINE_BYTES:
            work = self._check_off_loop(inc, checks, ex)
            self.background.spawn(work, f"checks-{ex.request_id}")
        else:
            self.monitor.checked(inc.task, _run_checks(checks, inc, ex))

    def _umpire(self, inc: Incoming, answer: Exchange | dict[str, Any] | None) -> None:
        """Score the champion's answer to a refereed challenge sample (None: it failed)."""
        if inc.answered is None or self.shadow is None or inc.adapter is None:
            return
        work = self.shadow.umpire(inc, inc.adapter, answer, inc.answered)
        self.background.spawn(work, f"umpire-{inc.request_id}")

    async def _check_off_loop(self, inc: Incoming, checks: OutputChecks, ex: Exchange) -> None:
        failed = await asyncio.to_thread(_run_checks, checks, inc, ex)
        self.monitor.checked(inc.task, failed)


def _learned(inc: Incoming) -> Any:
    """The learned schema the checks fall back on for ``inc`` (None: none applies)."""
    return None if inc.decoding is None else inc.decoding.schema


def _run_checks(checks: OutputChecks, inc: Incoming, ex: Exchange) -> tuple[str, ...]:
    completion = completion_of(ex)
    return () if completion is None else checks.run(inc.fields, completion, _learned(inc))
