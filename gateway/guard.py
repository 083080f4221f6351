"""Guardrails: what a task's student did over the policy's window, and what follows from it.

``Window`` counts student calls, failures, output checks and shadow agreement in time buckets
(the clock is passed in, so it is table-tested like the rest). ``verdict`` says whether a
rollout must step back, ``promotion`` whether it may step up — both pure functions of the
window's ``Stats`` and the policy.
"""

from __future__ import annotations

from dataclasses import dataclass

from gateway.policy import ANSWERING, MODES, PromotionStep, RolloutPolicy
from gateway.window import Buckets


@dataclass(slots=True)
class Stats:
    """Counts over one window."""

    calls: int = 0  # student calls answering clients (canary, hybrid, student)
    errors: int = 0  # of which failed (the teacher answered instead)
    checked: int = 0  # student answers put through the output checks (shadow ones included)
    failed_checks: int = 0  # of which failed at least one check
    scored: int = 0  # shadow answers scored against the teacher's (or judged: pass or fail)
    agreement: float = 0.0  # sum of their overall agreement (judged: pass 1, fail 0)

    def add(self, other: Stats) -> None:
        self.calls += other.calls
        self.errors += other.errors
        self.checked += other.checked
        self.failed_checks += other.failed_checks
        self.scored += other.scored
        self.agreement += other.agreement

    @property
    def error_rate(self) -> float:
        return self.errors / self.calls if self.calls else 0.0

    @property
    def check_failure_rate(self) -> float:
        return self.failed_checks / self.checked if self.checked else 0.0

    @property
    def mean_agreement(self) -> float | None:
        return self.agreement / self.scored if self.scored else None


class Window:
    """Stats over the last ``window_s`` seconds (see ``gateway.window``)."""

    def __init__(self, window_s: float) -> None:
        self._buckets = Buckets(window_s, Stats)

    def _slice(self, now: float) -> Stats:
        return self._buckets.current(now)

    def call(self, now: float, failed: bool) -> None:
        s = self._slice(now)
        s.calls += 1
        s.errors += failed

    def checked(self, now: float, failed: bool) -> None:
        s = self._slice(now)
        s.checked += 1
        s.failed_checks += failed

    def scored(self, now: float, agreement: float) -> None:
        s = self._slice(now)
        s.scored += 1
        s.agreement += agreement

    def stats(self, now: float) -> Stats:
        total = Stats()
        for s in self._buckets.live(now):
            total.add(s)
        return total


def verdict(policy: RolloutPolicy, stats: Stats) -> str | None:
    """Why the task must step back to shadow (a bounded reason), or None while it holds."""
    g = policy.guardrails
    if not g.enabled or policy.mode not in ANSWERING:
        return None
    if stats.calls >= g.min_samples and stats.error_rate > g.max_error_rate:
        return "error_rate"
    if stats.checked >= g.min_samples and stats.check_failure_rate > g.max_check_failure_rate:
        return "check_failures"
    agreement = stats.mean_agreement
    if stats.scored >= g.min_samples and agreement is not None and agreement < g.min_agreement:
        return "agreement"
    return None


def step_back(policy: RolloutPolicy) -> RolloutPolicy:
    """The policy after a guardrail tripped: shadow, everything else kept."""
    return policy.model_copy(update={"mode": "shadow"})


def _rank(mode: str, percent: float) -> tuple[int, float]:
    return MODES.index(mode), percent if mode == "canary" else 0.0


def next_step(policy: RolloutPolicy) -> PromotionStep | None:
    """The first ``auto_promote`` step beyond the policy's current mode and percent."""
    here = _rank(policy.mode, policy.percent)
    for step in policy.auto_promote:
        if _rank(step.mode, step.percent) > here:
            return step
    return None


def promotion(policy: RolloutPolicy, stats: Stats, held_s: float) -> RolloutPolicy | None:
    """The next policy when a whole window passed since the last change with every guardrail
    holding on enough evidence; None otherwise."""
    step = next_step(policy)
    g = policy.guardrails
    if step is None or held_s < policy.window_s or verdict(policy, stats) is not None:
        return None
    if policy.mode == "shadow":
        agreement = stats.mean_agreement
        if stats.scored < g.min_samples or agreement is None or agreement < g.min_agreement:
            return None
        if stats.checked >= g.min_samples and stats.check_failure_rate > g.max_check_failure_rate:
            return None
    elif stats.calls < g.min_samples:
        return None
    return policy.model_copy(update={"mode": step.mode, "percent": step.percent})
