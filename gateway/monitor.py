"""Watching students at work: output checks, shadow agreement, and the guardrails they feed.

Every student answer (primary or shadow) goes through the task's output checks; every call's
failure and every shadow score lands in the task's guardrail window. For a task judged pairwise
(``gateway.judged``) the window's shadow agreement is the judge's verdicts instead (pass 1,
fail 0: their mean is the pass rate); its character agreement is still exported, not judged.
After each event the window is judged (``gateway.guard``): a tripped guardrail steps the task
back to shadow, a held one may promote it (``auto_promote``). The rollout change is made
through ``Rollouts``, so it is shared with every replica and survives a restart.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Final

import structlog

from gateway.agreement import Agreement
from gateway.background import Background
from gateway.checks import OutputChecks
from gateway.guard import Stats, Window, promotion, step_back, verdict
from gateway.metrics import Metrics
from gateway.policy import OutputChecksConfig, RolloutPolicy
from gateway.rollouts import Active, Rollouts

log = structlog.get_logger("gateway")

# JSON fields per task given their own agreement series; later ones are counted as "other".
MAX_FIELDS: Final = 32
_MEASURES: Final = ("exact", "normalized", "similarity", "overall")


class Monitor:
    """Per task: compiled checks, a guardrail window, and the step-back/promotion decisions."""

    def __init__(
        self,
        rollouts: Rollouts,
        metrics: Metrics,
        background: Background,
        labels: Callable[[str], str],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._rollouts = rollouts
        self._metrics = metrics
        self._background = background
        self._labels = labels
        self._clock = clock
        self._windows: dict[str, Window] = {}
        self._since: dict[str, float] = {}
        self._checks: dict[str, tuple[OutputChecksConfig, OutputChecks]] = {}
        self._fields: dict[str, set[str]] = {}
        self._changing: set[str] = set()
        rollouts.subscribe(self._changed)

    def _changed(self, task: str, before: Active | None, after: Active | None) -> None:
        """A new rollout is judged on its own evidence: its window starts with its next event."""
        self._windows.pop(task, None)
        self._since[task] = self._clock()

    def _window(self, task: str) -> Window:
        window = self._windows.get(task)
        if window is None:
            policy = self._rollouts.policy(task)
            window = self._windows[task] = Window(policy.window_s if policy else 300.0)
            self._since.setdefault(task, self._clock())
        return window

    def checks(self, task: str) -> OutputChecks:
        policy = self._rollouts.policy(task)
        config = policy.checks if policy else OutputChecksConfig()
        cached = self._checks.get(task)
        if cached is None or cached[0] is not config:
            cached = self._checks[task] = (config, OutputChecks(config))
        return cached[1]

    def checked(self, task: str, failed: tuple[str, ...]) -> None:
        """A student answer went through the task's checks and failed ``failed``."""
        self._count_checks(task, failed)
        self._judge(task)

    def shadowed(
        self,
        task: str,
        failed: tuple[str, ...],
        agreement: Agreement | None,
        judged: bool = False,
    ) -> None:
        """A shadow answer was checked and, if the teacher's answer completed, scored;
        ``judged``: the task's agreement is the judge's (``judged``), not this score."""
        self._count_checks(task, failed)
        if agreement is not None:
            self._count_agreement(task, agreement)
            if not judged:
                self._window(task).scored(self._clock(), agreement.overall)
        self._judge(task)

    def judged(self, task: str, passed: bool) -> None:
        """The judge found a shadow answer as good as the teacher's (``passed``) or not."""
        window = self._window(task)
        now = self._clock()
        window.scored(now, 1.0 if passed else 0.0)
        rate = window.stats(now).mean_agreement
        if rate is not None:
            self._metrics.shadow_judged_pass_rate.labels(self._labels(task)).set(rate)
        self._judge(task)

    def stats(self, task: str) -> Stats:
        """What the task's guardrails see now."""
        return self._window(task).stats(self._clock())

    def _count_checks(self, task: str, failed: tuple[str, ...]) -> None:
        label = self._labels(task)
        self._metrics.checks.labels(label).inc()
        if failed:
            self._metrics.checks_failed.labels(label).inc()
        for name in failed:
            self._metrics.check_failures.labels(label, name).inc()
        self._window(task).checked(self._clock(), bool(failed))

    def called(self, task: str, failed: bool) -> None:
        """A student call answering a client ended; ``failed``: the teacher answered instead."""
        self._window(task).call(self._clock(), failed)
        self._judge(task)

    def _count_agreement(self, task: str, agreement: Agreement) -> None:
        label = self._labels(task)
        histogram = self._metrics.shadow_agreement
        for measure in _MEASURES:
            histogram.labels(label, measure).observe(getattr(agreement, measure))
        if agreement.json_fields is not None:
            histogram.labels(label, "json_fields").observe(agreement.json_fields)
        for name, same in (agreement.fields or {}).items():
            field = self._field_label(task, name)
            self._metrics.shadow_fields.labels(label, field).inc()
            if same:
                self._metrics.shadow_fields_agreed.labels(label, field).inc()

    def _field_label(self, task: str, name: str) -> str:
        known = self._fields.setdefault(task, set())
        if name in known:
            return name
        if len(known) >= MAX_FIELDS:
            return "other"
        known.add(name)
        return name

    def _judge(self, task: str) -> None:
        active = self._rollouts.get(task)
        if active is None or task in self._changing:
            return
        now = self._clock()
        stats = self._window(task).stats(now)
        reason = verdict(active.policy, stats)
        if reason is not None:
            self._metrics.stepbacks.labels(self._labels(task), reason).inc()
            log.warning(
                "guardrail tripped: stepping back to shadow",
                task=task,
                reason=reason,
                mode=active.policy.mode,
                calls=stats.calls,
                error_rate=round(stats.error_rate, 4),
                check_failure_rate=round(stats.check_failure_rate, 4),
                agreement=stats.mean_agreement,
            )
            self._set(task, step_back(active.policy), "guardrail", reason)
            return
        promoted = promotion(active.policy, stats, now - self._since.get(task, now))
        if promoted is not None:
            log.info("guardrails held for a window: promoting", task=task, mode=promoted.mode)
            self._set(task, promoted, "promotion", f"held for {active.policy.window_s:g}s")

    def _set(self, task: str, policy: RolloutPolicy, source: str, reason: str) -> None:
        self._changing.add(task)

        async def change() -> None:
            try:
                await self._rollouts.force(task, policy, source, reason)
            finally:
                self._changing.discard(task)

        if self._background.spawn(change(), f"rollout-{source}-{task}") is None:
            self._changing.discard(task)
