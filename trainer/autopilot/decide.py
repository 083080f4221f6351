"""When a task is retrained: a pure function of what the store and the gateway say now.

In order, the first rule that applies decides:

    paused            an operator paused the autopilot for the task        -> wait
    challenge         a challenger is being proven on live traffic         -> wait
    daily cap         max_runs_per_day runs started in the last 24 hours   -> wait
    drift             live drift above the threshold, with enough new data -> retrain now
                      (min_interval_s does not hold it back — unless the last run was itself
                      for drift against the same champion: one drift run per champion and
                      interval, or a drift the new data cannot fix would train all day)
    too soon          the last run started less than min_interval_s ago    -> wait
    new data          min_new_exchanges usable exchanges since the
                      champion's dataset (all of them, before any champion) -> retrain
    otherwise                                                              -> wait

Every decision carries a bounded ``why`` (metrics, status) and a sentence with its figures.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from trainer.autopilot.config import TaskRules

DAY_S: Final = 86_400.0
RETRAIN: Final = frozenset({"drift", "new_data"})


@dataclass(frozen=True, slots=True)
class LastRun:
    started_at: float  # Unix seconds
    trigger: str  # drift | new_data
    champion: str | None  # the adapter it was measured against


@dataclass(frozen=True, slots=True)
class Facts:
    now: float  # Unix seconds
    paused: bool
    champion: str | None  # the adapter serving the task (None: none yet)
    challenger: str | None  # an adapter being proven beside it
    new_exchanges: int  # usable (teacher, complete, 200) since the champion's dataset
    runs: tuple[float, ...]  # start times of recent runs (any outcome but abandoned)
    last_run: LastRun | None
    drift: float | None  # the largest live drift against the champion; None: unmeasured


@dataclass(frozen=True, slots=True)
class Decision:
    why: str  # paused | challenge | daily_cap | drift | too_soon | new_data | not_enough_data
    detail: str  # for a person, with the figures

    @property
    def retrain(self) -> bool:
        return self.why in RETRAIN


def decide(rules: TaskRules, facts: Facts) -> Decision:
    """Retrain ``facts``' task now, or why not yet."""
    new = facts.new_exchanges
    if facts.paused:
        return Decision("paused", "paused by an operator")
    if facts.challenger is not None:
        return Decision("challenge", f"challenger {facts.challenger} is being proven")
    today = sum(1 for t in facts.runs if facts.now - t < DAY_S)
    if today >= rules.max_runs_per_day:
        cap = rules.max_runs_per_day
        return Decision("daily_cap", f"{today} runs in the last 24 h (max {cap})")
    since = None if facts.last_run is None else facts.now - facts.last_run.started_at
    soon = since is not None and since < rules.min_interval_s
    if _drifted(rules, facts) and new >= rules.min_drift_exchanges:
        last = facts.last_run
        repeat = last is not None and last.trigger == "drift" and last.champion == facts.champion
        if not (repeat and soon):
            return Decision(
                "drift",
                f"live input drift {facts.drift:.3f} > {rules.drift_threshold:g} "
                f"against {facts.champion}, {new:,} new exchanges",
            )
    if soon:
        assert since is not None
        return Decision(
            "too_soon", f"last run {_duration(since)} ago (min {_duration(rules.min_interval_s)})"
        )
    against = f"since {facts.champion}'s dataset" if facts.champion else "in the store"
    detail = f"{new:,} new exchanges {against} (min {rules.min_new_exchanges:,})"
    return Decision("new_data" if new >= rules.min_new_exchanges else "not_enough_data", detail)


def _drifted(rules: TaskRules, facts: Facts) -> bool:
    threshold = rules.drift_threshold
    return (
        threshold is not None
        and facts.champion is not None
        and facts.drift is not None
        and facts.drift > threshold
    )


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f}s"
    if seconds < 7200:
        return f"{seconds / 60:.0f}m"
    return f"{seconds / 3600:.1f}h"
