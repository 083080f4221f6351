"""The autopilot's Prometheus metrics (prefix ``protege_autopilot_``)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge


class AutopilotMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        self.runs = Counter(
            "protege_autopilot_runs_total",
            "Retraining runs ended, by outcome (published, rejected, failed, abandoned).",
            ["task", "outcome"],
            registry=self.registry,
        )
        self.last_retrain = Gauge(
            "protege_autopilot_last_retrain_timestamp_seconds",
            "When the task's last retraining run started (Unix seconds).",
            ["task"],
            registry=self.registry,
        )
        self.decisions = Counter(
            "protege_autopilot_decisions_total",
            "Decisions taken on a task (retrain, wait).",
            ["task", "decision"],
            registry=self.registry,
        )
        self.paused = Gauge(
            "protege_autopilot_paused",
            "1 while an operator has paused the autopilot for the task.",
            ["task"],
            registry=self.registry,
        )
