"""Watching students at work: output checks, shadow agreement, and the guardrails they feed.

Every student answer (primary or shadow) goes through the task's output checks; every call's
failure and every shadow score lands in the task's guardrail window. For a task judged pairwise
(``gateway.judged``) the window's shadow agreement is the judge's verdicts instead (pass 1,
fail 0: their mean is the pass rate); its character agreement is still exported, not judged.
After each event the window is judged (``gateway.guard``): a tripped guardrail steps the task
back to shadow, a held one may promote it (``auto_promote``). The rollout change is made
through ``Rollouts``, so it is shared with every replica and survives a restart.

While the task has a challenger, the scores of both students' challenge calls land in its duel
(``gateway.challenge``), never in the guardrail window; after each, and after every guardrail
event, the duel is judged too, but only once the guardrails hold (a step-back always comes
first, and keeps the challenger). A challenger past its deadline is retired even without
traffic: ``expire`` looks at every task on each rollouts sync tick (``expire_forever``). The
changes the gateway makes on its own (promoted, retired, stepped_back) are also written to the
task's timeline in the store (``core.events``), in the background.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from dataclasses import asdict
from typing import Final

import structlog

from core.events import Event, record_soon
from core.live import Scores
from core.store import Store
from gateway.agreement import Agreement
from gateway.background import Background
from gateway.challenge import ROLES, Duel, Role, figures, outcome, summary
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
        store: Store | None = None,
    ) -> None:
        self._rollouts = rollouts
        self._store = store  # where events are written; None: only logged
        self._metrics = metrics
        self._background = background
        self._labels = labels
        self._clock = clock
        self._windows: dict[str, Window] = {}
        self._since: dict[str, float] = {}
        self._checks: dict[str, tuple[OutputChecksConfig, OutputChecks]] = {}
        self._fields: dict[str, set[str]] = {}
        self._changing: set[str] = set()
        self._duels: dict[str, Duel] = {}
        rollouts.subscribe(self._changed)

    def _changed(self, task: str, before: Active | None, after: Active | None) -> None:
        """A new rollout is judged on its own evidence: its window starts with its next event;
        a duel goes on while its champion and challenger do."""
        self._windows.pop(task, None)
        self._since[task] = self._clock()
        duel = self._duels.get(task)
        if duel is not None and (after is None or not duel.matches(after.policy)):
            del self._duels[task]
            self._export_duel(task)

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
            self._step_back(task, active.policy, stats, reason)
            return
        promoted = promotion(active.policy, stats, now - self._since.get(task, now))
        if promoted is not None:
            log.info("guardrails held for a window: promoting", task=task, mode=promoted.mode)
            self._set(task, promoted, "promotion", f"held for {active.policy.window_s:g}s",
                      _climbed(task, active.policy, promoted, stats))  # fmt: skip
            return
        self._referee(task, active)

    def _step_back(self, task: str, policy: RolloutPolicy, stats: Stats, reason: str) -> None:
        self._metrics.stepbacks.labels(self._labels(task), reason).inc()
        log.warning(
            "guardrail tripped: stepping back to shadow",
            task=task,
            reason=reason,
            mode=policy.mode,
            calls=stats.calls,
            error_rate=round(stats.error_rate, 4),
            check_failure_rate=round(stats.check_failure_rate, 4),
            agreement=stats.mean_agreement,
        )
        mean = stats.mean_agreement
        event = Event(
            task, "stepped_back",
            f"guardrail {reason}: {policy.mode} stepped back to shadow (error rate "
            f"{stats.error_rate:.3f} over {stats.calls}, check failures "
            f"{stats.check_failure_rate:.3f} over {stats.checked}, agreement "
            f"{'n/a' if mean is None else f'{mean:.3f}'} over {stats.scored})",
            "gateway",
            figures={**asdict(stats), "reason": reason, "mode": policy.mode,
                     "error_rate": stats.error_rate, "mean_agreement": mean,
                     "check_failure_rate": stats.check_failure_rate},
            adapter=policy.adapter,
        )  # fmt: skip
        self._set(task, step_back(policy), "guardrail", reason, event)

    # -- the duel ------------------------------------------------------------------------------

    def dueled(self, task: str, role: Role, adapter: str, score: float) -> None:
        """A challenge call of ``adapter`` as ``role`` was scored (a failed one: 0); a score
        from an earlier duel (its champion or challenger since changed) is dropped."""
        policy = self._rollouts.policy(task)
        if policy is None or policy.challenger is None:
            return
        if adapter != (policy.adapter if role == "champion" else policy.challenger):
            return
        duel = self._duels.get(task)
        if duel is None or not duel.matches(policy):
            assert policy.adapter is not None  # a challenger has a champion
            duel = self._duels[task] = Duel(policy.adapter, policy.challenger, policy.window_s)
        duel.scored(self._clock(), role, score)
        self._export_duel(task)
        self._judge(task)

    def duel(self, task: str) -> tuple[Scores | None, Scores | None]:
        """(champion, challenger) scores over the current duel window; (None, None) while the
        task has no challenger."""
        policy = self._rollouts.policy(task)
        if policy is None or policy.challenger is None or policy.adapter is None:
            return None, None
        duel = self._duels.get(task)
        if duel is None or not duel.matches(policy):
            return Scores(policy.adapter, 0, None), Scores(policy.challenger, 0, None)
        now = self._clock()
        return duel.scores(now, "champion"), duel.scores(now, "challenger")

    def expire(self) -> None:
        """Judge every challenged task now: a challenger past its deadline is retired even when
        no traffic comes (called on each rollouts sync tick)."""
        for task, active in self._rollouts.all().items():
            if active.policy.challenger is not None:
                self._export_duel(task)
                self._judge(task)

    async def expire_forever(self, interval_s: float) -> None:
        while True:
            await asyncio.sleep(interval_s)
            try:
                self.expire()
            except Exception:  # a bug here must not stop the deadlines: logged, tried again
                log.exception("challenge deadlines not checked")

    def _duel_stats(self, task: str, policy: RolloutPolicy) -> tuple[Stats, Stats]:
        duel = self._duels.get(task)
        if duel is None or not duel.matches(policy):
            return Stats(), Stats()
        now = self._clock()
        return duel.stats(now, "champion"), duel.stats(now, "challenger")

    def _referee(self, task: str, active: Active) -> None:
        """Promote or retire the challenger when its duel is decided (the guardrails held)."""
        policy = active.policy
        if policy.challenger is None:
            return
        champion, challenger = self._duel_stats(task, policy)
        started = active.challenge_started
        elapsed = 0.0 if started is None else self._rollouts.now() - started
        decided = outcome(policy, champion, challenger, elapsed)
        if decided is None:
            return
        said = summary(policy, champion, challenger)
        if decided == "promote":
            update = {"adapter": policy.challenger, "challenger": None}
            kind, text = "promoted", f"promoted: {said}"
        else:
            update = {"challenger": None}
            kind, text = "retired", f"retired after {elapsed:.0f}s: {said}"
        self._metrics.challenges.labels(self._labels(task), kind).inc()
        log.info("challenge decided", task=task, outcome=kind, reason=said)
        event = Event(task, kind, text, "gateway", figures=figures(champion, challenger),
                      adapter=policy.challenger)  # fmt: skip
        self._set(task, policy.model_copy(update=update), "challenge", text, event)

    def _export_duel(self, task: str) -> None:
        label = self._labels(task)
        for role, scores in zip(ROLES, self.duel(task), strict=True):
            self._metrics.challenge_samples.labels(label, role).set(scores.scored if scores else 0)
            gauge = self._metrics.challenge_agreement
            if scores is not None and scores.agreement is not None:
                gauge.labels(label, role).set(scores.agreement)
            else:
                with contextlib.suppress(KeyError):  # never set
                    gauge.remove(label, role)

    def _set(
        self, task: str, policy: RolloutPolicy, source: str, reason: str, event: Event | None = None
    ) -> None:
        self._changing.add(task)

        async def change() -> None:
            try:
                await self._rollouts.force(task, policy, source, reason)
            finally:
                self._changing.discard(task)
            if event is not None and self._store is not None:
                await record_soon(self._store, event)

        if self._background.spawn(change(), f"rollout-{source}-{task}") is None:
            self._changing.discard(task)


def _climbed(task: str, before: RolloutPolicy, after: RolloutPolicy, stats: Stats) -> Event:
    """The timeline's note of an ``auto_promote`` step, with the window that earned it."""
    def where(p: RolloutPolicy) -> str:
        return f"canary {p.percent:g} %" if p.mode == "canary" else p.mode

    mean = stats.mean_agreement
    held = (
        f"agreement {'n/a' if mean is None else f'{mean:.3f}'} over {stats.scored}, "
        f"errors {stats.error_rate:.3f} over {stats.calls}, check failures "
        f"{stats.check_failure_rate:.3f} over {stats.checked}"
    )
    return Event(
        task, "climbed", f"{where(before)} -> {where(after)}: guardrails held for "
        f"{before.window_s:g}s ({held})", "gateway",
        figures={**asdict(stats), "from": before.mode, "to": after.mode,
                 "percent": after.percent, "mean_agreement": mean},
        adapter=after.adapter,
    )  # fmt: skip
