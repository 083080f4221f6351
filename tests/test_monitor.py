"""The monitor's wiring: student events in, guardrail step-backs and promotions out, through the
shared rollouts (a real file store), with the clock in the test's hands."""

from __future__ import annotations

import asyncio
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


async def watched(tmp_path: Path, **policy: Any) -> tuple[Monitor, Rollouts, Metrics, Clock]:
    rollout = RolloutPolicy.model_validate({"adapter": "t/v1", "guardrails": GUARDS, **policy})
    metrics, clock = Metrics(), Clock()
    rollouts = Rollouts({"t": rollout}, FileStore(tmp_path), metrics, str)
    await rollouts.load()
    monitor = Monitor(rollouts, metrics, Background(), str, clock)
    return monitor, rollouts, metrics, clock


async def settle(rollouts: Rollouts, mode: str) -> bool:
    for _ in range(100):
        policy = rollouts.policy("t")
        if policy is not None and policy.mode == mode:
            return True
        await asyncio.sleep(0.01)
    return False


async def test_failing_calls_step_a_canary_back(tmp_path: Path) -> None:
    """Once the error rate over enough calls breaks its threshold, the task is in shadow mode,
    stored with source guardrail, and the step-back is counted once."""
    monitor, rollouts, metrics, _ = await watched(tmp_path, mode="canary", percent=20)
    for failed in (False, False, True):
        monitor.called("t", failed)
    assert rollouts.policy("t").mode == "canary"  # type: ignore[union-attr]
    monitor.called("t", failed=True)  # 2 of 4: 50 % > 25 %
    monitor.called("t", failed=True)  # while the change is in flight: not a second step-back
    assert await settle(rollouts, "shadow")
    active = rollouts.get("t")
    assert active is not None and (active.source, active.reason) == ("guardrail", "error_rate")
    get = metrics.registry.get_sample_value
    assert get("protege_rollout_stepbacks_total", {"task": "t", "reason": "error_rate"}) == 1


async def test_failed_checks_step_a_full_rollout_back(tmp_path: Path) -> None:
    """Answers failing their checks trip the check guardrail; the counters say which checks."""
    monitor, rollouts, metrics, _ = await watched(tmp_path, mode="student")
    for _ in range(4):
        monitor.checked("t", ("json_parse",))
    assert await settle(rollouts, "shadow")
    get = metrics.registry.get_sample_value
    assert get("protege_output_checks_failed_total", {"task": "t"}) == 4
    assert get("protege_output_check_failures_total", {"task": "t", "check": "json_parse"}) == 4


async def test_agreement_held_for_a_window_promotes(tmp_path: Path) -> None:
    """With auto_promote steps, a shadow task that agrees over a whole window moves to the next
    step; before the window has passed it stays."""
    steps = [{"mode": "canary", "percent": 10}, {"mode": "student"}]
    monitor, rollouts, _, clock = await watched(
        tmp_path, mode="shadow", window_s=60, auto_promote=steps
    )
    for _ in range(4):
        monitor.shadowed("t", (), AGREE)
    await asyncio.sleep(0.05)
    assert rollouts.policy("t").mode == "shadow"  # type: ignore[union-attr]
    clock.now += 61
    for _ in range(4):
        monitor.shadowed("t", (), AGREE)
    assert await settle(rollouts, "canary")
    active = rollouts.get("t")
    assert active is not None and active.source == "promotion" and active.policy.percent == 10


async def test_a_new_rollout_is_judged_on_its_own_evidence(tmp_path: Path) -> None:
    """Failures seen before an operator's change do not count against the new rollout."""
    monitor, rollouts, _, _ = await watched(tmp_path, mode="canary", percent=20)
    for _ in range(3):
        monitor.called("t", failed=True)
    policy = rollouts.policy("t")
    assert policy is not None
    await rollouts.change("t", policy.model_copy(update={"percent": 30}), "admin")
    monitor.called("t", failed=True)
    await asyncio.sleep(0.05)
    assert rollouts.policy("t").mode == "canary"  # type: ignore[union-attr]


async def test_field_labels_are_bounded(tmp_path: Path) -> None:
    """Per-field agreement gets its own series for the first MAX_FIELDS field names only."""
    monitor, _, metrics, _ = await watched(tmp_path, mode="shadow")
    fields = {f"f{i}": True for i in range(MAX_FIELDS + 5)}
    monitor.shadowed("t", (), Agreement(1.0, 1.0, 1.0, fields, 1.0))
    get = metrics.registry.get_sample_value
    assert get("protege_shadow_fields_total", {"task": "t", "field": "f0"}) == 1
    assert get("protege_shadow_fields_total", {"task": "t", "field": "other"}) == 5
    assert get("protege_shadow_agreement_count", {"task": "t", "measure": "overall"}) == 1
