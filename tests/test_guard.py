"""Guardrail windows and decisions: pure functions of the window's stats and the policy."""

from __future__ import annotations

from typing import Any

import pytest

from gateway.guard import Stats, Window, next_step, promotion, step_back, verdict
from gateway.policy import RolloutPolicy

GUARDS = {"min_samples": 10, "max_error_rate": 0.1, "max_check_failure_rate": 0.2,
          "min_agreement": 0.8}  # fmt: skip


def policy(**fields: Any) -> RolloutPolicy:
    base = {"adapter": "t/v1", "window_s": 60, "guardrails": GUARDS}
    return RolloutPolicy.model_validate({**base, **fields})


def test_window_forgets_what_is_older_than_the_window() -> None:
    """Events older than window_s drop out of the stats; newer ones stay."""
    w = Window(60)
    w.call(0.0, failed=True)
    w.call(30.0, failed=False)
    assert (w.stats(31.0).calls, w.stats(31.0).errors) == (2, 1)
    assert (w.stats(65.0).calls, w.stats(65.0).errors) == (1, 0)
    assert w.stats(200.0).calls == 0


def test_window_accumulates_checks_and_agreement() -> None:
    """Checks and shadow scores add up within the window."""
    w = Window(60)
    for i in range(4):
        w.checked(float(i), failed=i == 0)
        w.scored(float(i), 0.5 + i / 10)
    s = w.stats(5.0)
    assert (s.checked, s.failed_checks, s.check_failure_rate) == (4, 1, 0.25)
    assert s.mean_agreement == pytest.approx(0.65)


@pytest.mark.parametrize(
    ("mode", "stats", "reason"),
    [
        ("canary", Stats(calls=20, errors=1), None),
        ("canary", Stats(calls=20, errors=3), "error_rate"),
        ("canary", Stats(calls=5, errors=5), None),  # too few to judge
        ("student", Stats(checked=20, failed_checks=5), "check_failures"),
        ("student", Stats(checked=20, failed_checks=4), None),
        ("hybrid", Stats(scored=10, agreement=7.0), "agreement"),
        ("hybrid", Stats(scored=10, agreement=9.0), None),
        ("shadow", Stats(calls=20, errors=20, scored=10, agreement=0.0), None),
        ("teacher", Stats(calls=20, errors=20), None),
    ],
)
def test_verdict(mode: str, stats: Stats, reason: str | None) -> None:
    """A guardrail trips once enough samples break its threshold, only where the student
    answers clients."""
    assert verdict(policy(mode=mode, percent=10), stats) == reason


def test_disabled_guardrails_never_trip() -> None:
    """With guardrails off, nothing steps back."""
    p = policy(mode="student", guardrails={**GUARDS, "enabled": False})
    assert verdict(p, Stats(calls=100, errors=100)) is None


def test_step_back_goes_to_shadow_keeping_the_rest() -> None:
    """A step-back keeps adapter and thresholds, mode becomes shadow."""
    p = step_back(policy(mode="canary", percent=25))
    assert (p.mode, p.adapter, p.percent, p.guardrails.min_samples) == ("shadow", "t/v1", 25, 10)


STEPS = [{"mode": "canary", "percent": 5}, {"mode": "canary", "percent": 50}, {"mode": "student"}]


@pytest.mark.parametrize(
    ("mode", "percent", "expected"),
    [
        ("shadow", 0, ("canary", 5)),
        ("canary", 5, ("canary", 50)),
        ("canary", 20, ("canary", 50)),
        ("canary", 50, ("student", 100)),
        ("student", 0, None),
    ],
)
def test_next_step(mode: str, percent: float, expected: tuple[str, float] | None) -> None:
    """The next promotion is the first configured step beyond the current mode and percent."""
    step = next_step(policy(mode=mode, percent=percent, auto_promote=STEPS))
    assert (None if step is None else (step.mode, step.percent)) == expected


@pytest.mark.parametrize(
    ("mode", "stats", "held_s", "promoted"),
    [
        ("shadow", Stats(scored=10, agreement=9.5), 60, ("canary", 5)),
        ("shadow", Stats(scored=10, agreement=9.5), 59, None),  # not a whole window yet
        ("shadow", Stats(scored=9, agreement=9.0), 60, None),  # too little evidence
        ("shadow", Stats(scored=10, agreement=7.0), 60, None),  # agreement too low
        ("shadow", Stats(scored=10, agreement=9.5, checked=10, failed_checks=5), 60, None),
        ("canary", Stats(calls=10), 60, ("canary", 50)),
        ("canary", Stats(calls=10, errors=5), 60, None),  # a tripped guardrail
        ("canary", Stats(calls=3), 60, None),
    ],
)
def test_promotion(mode: str, stats: Stats, held_s: float, promoted: Any) -> None:
    """Promotion needs a whole window held on enough evidence with every guardrail holding."""
    p = policy(mode=mode, percent=5, auto_promote=STEPS)
    result = promotion(p, stats, held_s)
    assert (None if result is None else (result.mode, result.percent)) == promoted


def test_no_promotion_without_steps() -> None:
    """Without auto_promote steps, promotion stays an operator decision."""
    assert promotion(policy(mode="shadow"), Stats(scored=100, agreement=100.0), 1e6) is None
