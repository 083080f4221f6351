"""Which backend answers a request: pure decisions over the task's rollout policy.

``decide(policy, facts, rng)`` is the whole routing logic, free of I/O: the app gathers the
request's facts (who is asking, whether the student serves the endpoint, the task's input drift)
and acts on the ``Decision``. Canary stickiness hashes the task and the hashed user (else the
hashed client) into one of 10,000 buckets, so one person sees one model for as long as the
percent stays put, and raising the percent only ever moves people from teacher to student.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final, Literal

from gateway.policy import RolloutPolicy

BackendName = Literal["teacher", "student"]
# Canary buckets: the percent is applied with a resolution of 0.01 points.
BUCKETS: Final = 10_000


@dataclass(frozen=True, slots=True)
class Facts:
    """What routing needs to know about one request."""

    # The hashed user, else the hashed client; None: neither is known (the rng decides).
    sticky_key: str | None
    # Whether a student is configured and serves the request's endpoint.
    served: bool
    # The task's live input drift (max PSI/JS over features); None: not measured.
    drift: float | None = None
    # Why the prompt is outside what the student was trained on ("too_long", "charset").
    out_of_bounds: str | None = None


@dataclass(frozen=True, slots=True)
class Decision:
    """Who answers, under which route label, and why (the record's ``detail.why``)."""

    backend: BackendName
    route: str  # the record's route: the task's mode when the decision was taken
    why: str
    # Also ask the student in the background and score its answer against the teacher's.
    shadow: bool = False


def bucket(task: str, key: str) -> int:
    """The canary bucket (0..BUCKETS-1) of ``key`` for ``task``: stable, uniform, per task."""
    digest = hashlib.blake2b(f"{task}\x00{key}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") % BUCKETS


def in_canary(percent: float, task: str, key: str | None, rng: Callable[[], float]) -> bool:
    """Whether a request falls in a canary of ``percent`` (sticky by ``key`` when known)."""
    if key is None:
        return rng() * 100 < percent
    return bucket(task, key) < round(percent * BUCKETS / 100)


def sampled(percent: float, rng: Callable[[], float]) -> bool:
    return percent >= 100 or rng() * 100 < percent


def decide(
    task: str, policy: RolloutPolicy | None, facts: Facts, rng: Callable[[], float]
) -> Decision:
    """The backend answering one request of ``task`` under ``policy`` (None: teacher mode)."""
    if policy is None or policy.mode == "teacher":
        return Decision("teacher", "teacher", "mode")
    mode = policy.mode
    if not facts.served:
        return Decision("teacher", "teacher", "not_served")
    if mode == "shadow":
        shadow = sampled(policy.shadow_percent, rng)
        return Decision("teacher", mode, "shadow" if shadow else "not_sampled", shadow)
    if mode == "canary":
        if in_canary(policy.percent, task, facts.sticky_key, rng):
            return Decision("student", mode, "canary")
        return Decision("teacher", mode, "not_canary")
    if mode == "hybrid":
        if facts.out_of_bounds is not None:
            return Decision("teacher", mode, facts.out_of_bounds)
        if facts.drift is not None and facts.drift > policy.drift_threshold:
            return Decision("teacher", mode, "drift")
    return Decision("student", mode, mode)
