"""Routing decisions: pure functions of (task, policy, facts, rng), tested without a server."""

from __future__ import annotations

import random
from typing import Any

import pytest

from gateway.policy import RolloutPolicy
from gateway.routing import Decision, Facts, bucket, decide, in_canary

ADAPTER = "tickets/v3"
SERVED = Facts("user-1", served=True)


def policy(**fields: Any) -> RolloutPolicy:
    return RolloutPolicy.model_validate({"adapter": ADAPTER, **fields})


def never() -> float:
    return 0.999999


def always() -> float:
    return 0.0


@pytest.mark.parametrize(
    ("rollout", "facts", "rng", "decision"),
    [
        (None, SERVED, always, Decision("teacher", "teacher", "mode")),
        (policy(), SERVED, always, Decision("teacher", "teacher", "mode")),
        (policy(mode="shadow"), SERVED, always, Decision("teacher", "shadow", "shadow", True)),
        (policy(mode="shadow", shadow_percent=50), SERVED, never,
         Decision("teacher", "shadow", "not_sampled")),
        (policy(mode="canary", percent=100), SERVED, never,
         Decision("student", "canary", "canary")),
        (policy(mode="canary", percent=0), SERVED, always,
         Decision("teacher", "canary", "not_canary")),
        (policy(mode="canary", percent=50), Facts(None, True), always,
         Decision("student", "canary", "canary")),
        (policy(mode="canary", percent=50, shadow_percent=0), Facts(None, True), never,
         Decision("teacher", "canary", "not_canary")),
        (policy(mode="hybrid"), SERVED, always, Decision("student", "hybrid", "hybrid")),
        (policy(mode="hybrid"), Facts("u", True, drift=0.05), always,
         Decision("student", "hybrid", "hybrid")),
        (policy(mode="hybrid"), Facts("u", True, drift=0.2), always,
         Decision("teacher", "hybrid", "drift")),
        (policy(mode="hybrid", drift_threshold=0.3), Facts("u", True, drift=0.2), always,
         Decision("student", "hybrid", "hybrid")),
        (policy(mode="hybrid"), Facts("u", True, out_of_bounds="too_long"), always,
         Decision("teacher", "hybrid", "too_long")),
        (policy(mode="student"), Facts("u", True, drift=0.9), always,
         Decision("student", "student", "student")),
        (policy(mode="student"), Facts("u", served=False), always,
         Decision("teacher", "teacher", "not_served")),
        (policy(mode="shadow"), Facts("u", served=False), always,
         Decision("teacher", "teacher", "not_served")),
    ],
)  # fmt: skip
def test_decide(rollout: RolloutPolicy | None, facts: Facts, rng: Any, decision: Decision) -> None:
    """Each mode sends the request where its definition says, and says why."""
    assert decide("tickets", rollout, facts, rng) == decision


def test_canary_share_is_exact_over_many_users() -> None:
    """Over 100k distinct users, a 10 % canary sends 10 % ± 1 point to the student."""
    rollout = policy(mode="canary", percent=10)
    hits = sum(
        decide("tickets", rollout, Facts(f"user-{i}", True), never).backend == "student"
        for i in range(100_000)
    )
    assert abs(hits / 100_000 - 0.10) < 0.01


@pytest.mark.parametrize("percent", [0.5, 5, 33.3, 50, 90])
def test_canary_share_without_users_follows_the_rng(percent: float) -> None:
    """Requests with no user or client split by the rng, within ± 1 point over 100k."""
    rng = random.Random(7).random
    hits = sum(in_canary(percent, "t", None, rng) for _ in range(100_000))
    assert abs(hits / 1000 - percent) < 1.0


def test_canary_is_sticky_per_user() -> None:
    """One user gets the same backend on every request while the percent stays put."""
    rollout = policy(mode="canary", percent=30)
    rng = random.Random(1).random
    for i in range(500):
        first = decide("tickets", rollout, Facts(f"u{i}", True), rng).backend
        again = {decide("tickets", rollout, Facts(f"u{i}", True), rng).backend for _ in range(5)}
        assert again == {first}


def test_raising_the_percent_only_moves_users_to_the_student() -> None:
    """Everyone in a 10 % canary is still in it at 20 %: users never flip back and forth."""
    users = [f"user-{i}" for i in range(20_000)]
    at_10 = {u for u in users if in_canary(10, "tickets", u, never)}
    at_20 = {u for u in users if in_canary(20, "tickets", u, never)}
    assert at_10 <= at_20 and 0.09 < len(at_10) / len(users) < 0.11


def test_buckets_differ_per_task() -> None:
    """A user's bucket is drawn per task, so one user is not the canary of every task."""
    same = sum(bucket("a", f"u{i}") == bucket("b", f"u{i}") for i in range(1000))
    assert same < 5


def test_shadow_share_follows_shadow_percent() -> None:
    """A 25 % shadow sample shadows 25 % ± 1 point of 100k requests."""
    rollout = policy(mode="shadow", shadow_percent=25)
    rng = random.Random(3).random
    shadowed = sum(decide("t", rollout, SERVED, rng).shadow for _ in range(100_000))
    assert abs(shadowed / 1000 - 25) < 1.0
