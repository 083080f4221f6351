"""The demo's rollout: shadow, then canary, then full, moved by the operator through the admin
API, with traffic at each step and the gateway's monitors read after it.

The guardrails stay on: if one steps the rollout back (the student errs, fails its output
checks or disagrees with the teacher), the stage fails saying why and the teacher keeps the
traffic.
"""

from __future__ import annotations

from collections.abc import Callable

from protege.demo_procs import DemoError
from protege.demo_traffic import Batch, Operator, delta, mean_of

SHADOW_WAIT_S = 300.0  # shadow calls still running when the traffic is answered


class Rollout:
    """One task's rollout steps; ``send(stage, n)`` sends ``n`` requests as ``stage``."""

    def __init__(
        self,
        operator: Operator,
        adapter: str,
        send: Callable[[str, int], Batch],
        detail: Callable[[str], None],
    ) -> None:
        self._op, self._adapter, self._send, self._detail = operator, adapter, send, detail
        self.stepbacks: list[str] = []

    def shadow(self, n: int) -> None:
        # Every request shadowed: the demo's few dozen are the whole evaluation.
        self._op.set(
            mode="shadow", adapter=self._adapter, shadow_percent=100, shadow_max_per_s=None
        )
        before = self._op.metrics()
        self._send("shadow", n)
        done = self._op.wait_shadowed(before, n, SHADOW_WAIT_S)
        after = self._op.metrics()
        labels = {"task": self._op.task, "measure": "overall"}
        mean, scored = mean_of(after, before, "protege_shadow_agreement", **labels)
        outcomes = ", ".join(f"{v} {k}" for k, v in sorted(done.items()))
        shown = f"{mean:.2f} over {scored} scored answers" if scored else "none scored"
        self._detail(f"shadow calls: {outcomes or 'none'}")
        self._detail(f"agreement with the teacher (overall): {shown}")
        self._held("shadow")

    def canary(self, n: int, percent: float) -> None:
        self._op.set(mode="canary", percent=percent, adapter=self._adapter)
        self._answered("canary", n)
        self._held("canary")

    def full(self, n: int) -> None:
        self._op.set(mode="student", adapter=self._adapter)
        self._answered("full", n)
        self._held("student")

    def _answered(self, stage: str, n: int) -> None:
        task = self._op.task
        before = self._op.metrics()
        self._send(stage, n)
        after = self._op.metrics()
        by = delta(after, before, "protege_requests_total", "backend", task=task, status="200")
        checked, failed = (
            int(after.total(name, task=task) - before.total(name, task=task))
            for name in ("protege_output_checks_total", "protege_output_checks_failed_total")
        )
        self._detail(
            f"answered by the student: {int(by.get('student', 0))}, by the teacher: "
            f"{int(by.get('teacher', 0))}; output checks failed: {failed} of {checked}"
        )

    def _held(self, mode: str) -> None:
        """A ``DemoError`` if a guardrail stepped the rollout back from ``mode``."""
        now = self._op.rollout()
        if now["mode"] != mode:
            reason = now.get("reason") or "no reason given"
            self.stepbacks.append(f"{mode} -> {now['mode']}: {reason}")
            raise DemoError(
                f"a guardrail stepped the rollout back from {mode} to {now['mode']} ({reason}); "
                "the teacher keeps the traffic"
            )
