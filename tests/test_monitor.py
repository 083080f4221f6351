"""The monitor's wiring: student events in, guardrail step-backs and promotions out, through the
shared rollouts (a real file store), with the clock in the test's hands.

The monitor judges each event as it is reported and starts any rollout change as background
work; the tests wait for that work to finish, then read the rollout in force.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

from core.store import FileStore
from gateway.agreement import Agreement
from gateway.background import Background
from gateway.metrics import Metrics
from gateway.monitor import MAX_FIELDS, Monitor
from gateway.policy import RolloutPolicy
from gateway.rollouts import Rollouts

GUARDS = {"min_samples": 4, "max_error_rate": 0.25, "min_agreement": 0.8}
AGREE = Agreement(1.0, 1.0, 1.0, None, None)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Tracked(Background):
    """Background work the test can wait for: every task spawned is kept until drained."""

    def __init__(self) -> None:
        super().__init__()
        self.spawned: list[asyncio.Task[None]] = []

    def spawn(self, coro: Coroutine[Any, Any, None], name: str) -> asyncio.Task[None] | None:
        task = super().spawn(coro, name)
        if task is not None:
            self.spawned.append(task)
        return task

    async def drained(self) -> int:
        """Waits for every task spawned so far; how many there were."""
        done = 0
        while len(self.spawned) > done:
            await asyncio.gather(*self.spawned[done:])
            done = len(self.spawned)
        return done


Watched = tuple[Monitor, Rollouts, Tracked, Metrics, Clock]


async def watched(tmp_path: Path, **policy: Any) -> Watched:
    rollout = RolloutPolicy.model_validate({"adapter": "t/v1", "guardrails": GUARDS, **policy})
    metrics, clock, background = Metrics(), Clock(), Tracked()
    rollouts = Rollouts({"t": rollout}, FileStore(tmp_path), metrics, str)
    await rollouts.load()
    monitor = Monitor(rollouts, metrics, background, str, clock)
    return monitor, rollouts, background, metrics, clock


async def settled(background: Tracked, rollouts: Rollouts) -> tuple[int, str | None]:
    """Once the rollout changes the monitor started are done: how many, and the mode in force."""
    changes = await background.drained()
    policy = rollouts.policy("t")
    return changes, None if policy is None else policy.mode


async def test_failing_calls_step_a_canary_back(tmp_path: Path) -> None:
    """Once the error rate over enough calls breaks its threshold, the task is in shadow mode,
    stored with source guardrail, and the step-back is counted once."""
    monitor, rollouts, background, metrics, _ = await watched(tmp_path, mode="canary", percent=20)
    for failed in (False, False, True):
        monitor.called("t", failed)
    assert rollouts.policy("t").mode == "canary"  # type: ignore[union-attr]
    monitor.called("t", failed=True)  # 2 of 4: 50 % > 25 %
    monitor.called("t", failed=True)  # while the change is in flight: not a second step-back
    assert await settled(background, rollouts) == (1, "shadow")
    active = rollouts.get("t")
    assert active is not None and (active.source, active.reason) == ("guardrail", "error_rate")
    get = metrics.registry.get_sample_value
    assert get("protege_rollout_stepbacks_total", {"task": "t", "reason": "error_rate"}) == 1


async def test_failed_checks_step_a_full_rollout_back(tmp_path: Path) -> None:
    """Answers failing their checks trip the check guardrail; the counters say which checks."""
    monitor, rollouts, background, metrics, _ = await watched(tmp_path, mode="student")
    for _ in range(4):
        monitor.checked("t", ("json_parse",))
    assert await settled(background, rollouts) == (1, "shadow")
    get = metrics.registry.get_sample_value
    assert get("protege_output_checks_failed_total", {"task": "t"}) == 4
    assert get("protege_output_check_failures_total", {"task": "t", "check": "json_parse"}) == 4


async def test_agreement_held_for_a_window_promotes(tmp_path: Path) -> None:
    """With auto_promote steps, a shadow task that agrees over a whole window moves to the next
    step; before the window has passed it stays."""
    steps = [{"mode": "canary", "percent": 10}, {"mode": "student"}]
    monitor, rollouts, background, _, clock = await watched(
        tmp_path, mode="shadow", window_s=60, auto_promote=steps
    )
    for _ in range(4):
        monitor.shadowed("t", (), AGREE)
    assert await settled(background, rollouts) == (0, "shadow")
    clock.now += 61
    for _ in range(4):
        monitor.shadowed("t", (), AGREE)
    assert await settled(background, rollouts) == (1, "canary")
    active = rollouts.get("t")
    assert active is not None and active.source == "promotion" and active.policy.percent == 10


async def test_a_new_rollout_is_judged_on_its_own_evidence(tmp_path: Path) -> None:
    """Failures seen before an operator's change do not count against the new rollout."""
    monitor, rollouts, background, _, _ = await watched(tmp_path, mode="canary", percent=20)
    for _ in range(3):
        monitor.called("t", failed=True)
    policy = rollouts.policy("t")
    assert policy is not None
    await rollouts.change("t", policy.model_copy(update={"percent": 30}), "admin")
    monitor.called("t", failed=True)
    assert await settled(background, rollouts) == (0, "canary")


async def test_field_labels_are_bounded(tmp_path: Path) -> None:
    """Per-field agreement gets its own series for the first MAX_FIELDS field names only."""
    monitor, _, _, metrics, _ = await watched(tmp_path, mode="shadow")
    fields = {f"f{i}": True for i in range(MAX_FIELDS + 5)}
    monitor.shadowed("t", (), Agreement(1.0, 1.0, 1.0, fields, 1.0))
    get = metrics.registry.get_sample_value
    assert get("protege_shadow_fields_total", {"task": "t", "field": "f0"}) == 1
    assert get("protege_shadow_fields_total", {"task": "t", "field": "other"}) == 5
    assert get("protege_shadow_agreement_count", {"task": "t", "measure": "overall"}) == 1
