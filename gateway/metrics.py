"""Prometheus metrics of the gateway, all prefixed ``protege_``.

Each gateway owns a ``Metrics`` with its own registry (tests build as many as they like).
Labels are bounded sets: the task label admits the configured tasks plus a limited number of
others seen in traffic, then folds the rest into ``other`` (``gateway.collectors``).

The workers of ``protege gateway --workers N`` run in prometheus_client's multiprocess mode
(``PROMETHEUS_MULTIPROC_DIR``, ``gateway.workers``): every value is kept in a file of that
directory and ``/metrics`` on any worker shows the aggregate (``exposition``). Counters and
histograms are summed over every worker that ever ran, so they stay exact across a restart.
A gauge says how it aggregates, over the workers alive (a dead worker's gauges are dropped):

- ``livesum``: amounts each worker holds a part of (spool bytes);
- ``livemax``: flags and alarms, raised if any worker raises them (spool full, judge flagged,
  input drift: the worst worker's sample of the traffic);
- ``livemostrecent``: state every worker converges to (the rollout in force: the latest
  change any worker applied, until the others sync);
- ``liveall``: statistics of one worker's window of traffic, which neither add nor compare
  (duel agreement and samples, judged pass rate): one series per worker, labelled ``pid``.

With one process, nothing of this applies: the values live in the ``Metrics`` registry.
"""

from __future__ import annotations

from dataclasses import dataclass

from prometheus_client import CollectorRegistry

from core.segment import recovery_counters
from gateway.collectors import (
    OTHER_TASK,
    Counter,
    Gauge,
    Histogram,
    MultiprocessMode,
    TaskLabels,
    exposition,
    multiprocess_dir,
)

__all__ = ["OTHER_TASK", "Counter", "FeedbackSpoolMetrics", "Gauge", "Histogram", "Metrics",
           "TaskLabels", "exposition", "multiprocess_dir"]  # fmt: skip

# Latency buckets from 0.5 ms to 2 min: teacher calls span both ends.
_LATENCY = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
    1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0,
)  # fmt: skip
# The gateway's own overhead is expected well under a millisecond.
_OVERHEAD = (0.0001, 0.00025, 0.0005, 0.00075, 0.001, 0.0015, 0.0025, 0.005, 0.01, 0.025, 0.1)

# Agreement scores lie in [0, 1]; most mass is expected near 1.
_AGREEMENT = (0.1, 0.25, 0.5, 0.75, 0.8, 0.85, 0.9, 0.95, 0.99, 1.0)


@dataclass(frozen=True)
class FeedbackSpoolMetrics:
    """The collectors of the feedback spool's writer (``gateway.spool.SpoolMetrics``)."""

    spool_records: Counter
    spool_written_bytes: Counter
    spool_dropped: Counter
    spool_torn: Counter
    spool_sealed: Counter
    spool_bytes: Gauge
    spool_full: Gauge

    @classmethod
    def create(cls, r: CollectorRegistry) -> FeedbackSpoolMetrics:
        def counter(name: str, doc: str, *labels: str) -> Counter:
            return Counter(f"protege_feedback_spool_{name}", doc, list(labels), registry=r)

        def gauge(name: str, doc: str, mode: MultiprocessMode) -> Gauge:
            return Gauge(
                f"protege_feedback_spool_{name}", doc, registry=r, multiprocess_mode=mode
            )

        return cls(
            counter("records", "Feedback records written to the feedback spool."),
            counter("written_bytes", "Bytes of feedback records written to the feedback spool."),
            counter("dropped", "Feedback not written, by reason (each answered 503).", "reason"),
            counter("torn_records", "Torn records cut from a crashed feedback segment's tail."),
            counter("segments_sealed", "Feedback spool segments sealed for the sidecar."),
            gauge("bytes", "Bytes held in the feedback spool (open and sealed segments).",
                  "livesum"),
            gauge("full", "1 while the feedback spool is at its cap, else 0.", "livemax"),
        )


class Metrics:
    """Every collector the gateway exports, registered in one registry."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self._traffic(r)
        self._spool(r)
        self._rollout(r)
        self._shadow(r)
        self._challenge(r)
        self._monitors(r)
        self._judging(r)
        self._feedback(r)

    def _feedback(self, r: CollectorRegistry) -> None:
        self.feedback = Counter(
            "protege_feedback",
            "Feedback accepted from applications, by task and kind (score, label, correction; "
            "one feedback may count under several kinds). task=_unresolved: the request was "
            "not known yet.",
            ["task", "kind"],
            registry=r,
        )
        self.feedback_spool = FeedbackSpoolMetrics.create(r)

    def _traffic(self, r: CollectorRegistry) -> None:
        self.requests = Counter(
            "protege_requests",
            "Requests answered, by task, backend, route and HTTP status.",
            ["task", "backend", "route", "status"],
            registry=r,
        )
        self.latency = Histogram(
            "protege_request_duration_seconds",
            "Time from request received to response complete.",
            ["task", "backend", "route"],
            buckets=_LATENCY,
            registry=r,
        )
        self.overhead = Histogram(
            "protege_gateway_overhead_seconds",
            "Time the gateway itself adds to a request (total minus time waiting upstream).",
            ["task"],
            buckets=_OVERHEAD,
            registry=r,
        )
        self.ttft = Histogram(
            "protege_ttft_seconds",
            "Time from request received to the first streamed byte sent to the client.",
            ["task", "backend"],
            buckets=_LATENCY,
            registry=r,
        )
        self.tokens = Counter(
            "protege_tokens",
            "Tokens reported by the backend's usage, by kind (prompt or completion).",
            ["task", "backend", "kind"],
            registry=r,
        )
        self.upstream_errors = Counter(
            "protege_upstream_errors",
            "Failed upstream calls, by backend and reason.",
            ["backend", "reason"],
            registry=r,
        )
        self.upstream_retries = Counter(
            "protege_upstream_retries",
            "Upstream connection attempts retried after a connect failure.",
            ["backend"],
            registry=r,
        )
        self.fallbacks = Counter(
            "protege_fallbacks",
            "Requests the teacher answered because the student failed before the first byte, "
            "by reason.",
            ["task", "reason"],
            registry=r,
        )
        self.incomplete_streams = Counter(
            "protege_incomplete_streams",
            "Streams that ended without completing, by reason.",
            ["task", "reason"],
            registry=r,
        )
        self.worker_restarts = Counter(
            "protege_gateway_worker_restarts",
            "Gateway worker processes restarted after one died (protege gateway --workers N).",
            registry=r,
        )
        self.incomplete_answers = Counter(
            "protege_incomplete_answers",
            "Plain answers not given, by reason: client_disconnect (the client went away "
            "first; the student's call was cancelled).",
            ["task", "reason"],
            registry=r,
        )

    def _spool(self, r: CollectorRegistry) -> None:
        self.spool_records = Counter(
            "protege_spool_records",
            "Exchange records written to the spool.",
            registry=r,
        )
        self.spool_written_bytes = Counter(
            "protege_spool_written_bytes",
            "Bytes of records written to the spool.",
            registry=r,
        )
        self.spool_dropped = Counter(
            "protege_spool_dropped",
            "Exchange records not captured because the spool was full or failing, by reason.",
            ["reason"],
            registry=r,
        )
        self.spool_torn, self.spool_sealed = recovery_counters(r)
        self.spool_bytes = Gauge(
            "protege_spool_bytes",
            "Bytes currently held in the spool directory (open and sealed segments).",
            registry=r,
            multiprocess_mode="livesum",
        )
        self.spool_full = Gauge(
            "protege_spool_full",
            "1 while the spool is at its cap, else 0.",
            registry=r,
            multiprocess_mode="livemax",
        )

    def _rollout(self, r: CollectorRegistry) -> None:
        self.rollout_percent = Gauge(
            "protege_rollout_percent",
            "Share of the task's requests its rollout sends to the student (0-100): 0 for "
            "teacher and shadow, the percent for canary, 100 for hybrid and student.",
            ["task"],
            registry=r,
            multiprocess_mode="livemostrecent",
        )
        self.rollout_mode = Gauge(
            "protege_rollout_mode",
            "1 for the task's current rollout mode, 0 for its other modes.",
            ["task", "mode"],
            registry=r,
            multiprocess_mode="livemostrecent",
        )
        self.rollout_changes = Counter(
            "protege_rollout_changes",
            "Rollout changes applied, by source (config, admin, guardrail, promotion, "
            "challenge, store).",
            ["task", "source"],
            registry=r,
        )
        self.stepbacks = Counter(
            "protege_rollout_stepbacks",
            "Automatic step-backs of a rollout by its guardrails, by reason "
            "(error_rate, check_failures, agreement).",
            ["task", "reason"],
            registry=r,
        )
        self.hybrid_declined = Counter(
            "protege_hybrid_declined",
            "Hybrid requests sent to the teacher before asking the student, by reason "
            "(drift, too_long, charset).",
            ["task", "reason"],
            registry=r,
        )

    def _shadow(self, r: CollectorRegistry) -> None:
        self.shadow_requests = Counter(
            "protege_shadow_requests",
            "Shadow calls to the student, by outcome (scored; unscored: the teacher's answer did "
            "not complete; failed; skipped: too many in flight; limited: over the task's "
            "shadow_max_per_s or challenge.max_per_s). Challenge calls are counted too.",
            ["task", "outcome"],
            registry=r,
        )
        self.shadow_agreement = Histogram(
            "protege_shadow_agreement",
            "Agreement of the student's shadow answer with the teacher's (0-1), by measure "
            "(exact, normalized, json_fields, similarity; overall: what the guardrail judges, "
            "json_fields for JSON answers, else similarity).",
            ["task", "measure"],
            buckets=_AGREEMENT,
            registry=r,
        )
        self.shadow_fields = Counter(
            "protege_shadow_fields",
            "JSON fields of teacher answers compared in shadow mode, by field.",
            ["task", "field"],
            registry=r,
        )
        self.shadow_fields_agreed = Counter(
            "protege_shadow_fields_agreed",
            "JSON fields on which the student's shadow answer agreed with the teacher's.",
            ["task", "field"],
            registry=r,
        )

    def _challenge(self, r: CollectorRegistry) -> None:
        self.challenge_agreement = Gauge(
            "protege_challenge_agreement",
            "Mean agreement with the teacher over the duel window of the task's champion and "
            "challenger, by role (a failed call scores 0).",
            ["task", "role"],
            registry=r,
            multiprocess_mode="liveall",
        )
        self.challenge_samples = Gauge(
            "protege_challenge_samples",
            "Scored answers in the duel window of the task's champion and challenger, by role.",
            ["task", "role"],
            registry=r,
            multiprocess_mode="liveall",
        )
        self.challenges = Counter(
            "protege_challenges",
            "Challenges, by outcome (started: a rollout change brought a new challenger; "
            "promoted; retired).",
            ["task", "outcome"],
            registry=r,
        )

    def _judging(self, r: CollectorRegistry) -> None:
        self.shadow_judged = Counter(
            "protege_shadow_judged",
            "Shadow pairs of tasks judged pairwise, by verdict (pass, fail, error: no verdict "
            "could be read; skipped: the judge's budget is spent; dropped: the judge queue was "
            "full; limited: over the task's judges shadow_max_per_s).",
            ["task", "verdict"],
            registry=r,
        )
        self.shadow_judged_pass_rate = Gauge(
            "protege_shadow_judged_pass_rate",
            "Judged pass rate of the task's shadow pairs over the guardrail window (pass / "
            "(pass + fail)): the agreement its guardrails judge.",
            ["task"],
            registry=r,
            multiprocess_mode="liveall",
        )
        self.judge_calls = Counter(
            "protege_judge_calls",
            "Calls to the LLM judge, by task, criterion and outcome (pass, fail, error).",
            ["task", "criterion", "outcome"],
            registry=r,
        )
        self.judge_tokens = Counter(
            "protege_judge_tokens",
            "Tokens the LLM judge reported (prompt and completion), by task and criterion.",
            ["task", "criterion"],
            registry=r,
        )
        self.judge_cost = Counter(
            "protege_judge_cost",
            "Estimated cost of the LLM judge's calls (judges.price_per_1k_tokens), by task.",
            ["task"],
            registry=r,
        )
        self.judge_flagged = Gauge(
            "protege_judge_flagged",
            "1 when the task's judging criterion is not vouched for by its calibration "
            "(uncalibrated, below its min_agreement, or stale), read at start; else 0.",
            ["task", "criterion"],
            registry=r,
            multiprocess_mode="livemax",
        )

    def prepare(self, task: str, mode: str) -> None:
        """Create a rolled-out task's series at 0, so that ``rate()`` sees their first burst:
        Prometheus only learns of a labelled series when it is first scraped."""
        if mode != "teacher":
            self.requests.labels(task, "student", mode, "200")
            self.checks.labels(task)
            self.checks_failed.labels(task)
            for reason in ("upstream_error", "upstream_unreachable", "upstream_timeout"):
                self.fallbacks.labels(task, reason)
            for reason in ("error_rate", "check_failures", "agreement"):
                self.stepbacks.labels(task, reason)
        if mode == "shadow":
            for outcome in ("scored", "unscored", "failed", "skipped", "limited"):
                self.shadow_requests.labels(task, outcome)
        if mode == "hybrid":
            for reason in ("drift", "too_long", "charset"):
                self.hybrid_declined.labels(task, reason)

    def _monitors(self, r: CollectorRegistry) -> None:
        self.checks = Counter(
            "protege_output_checks",
            "Student answers put through the output checks.",
            ["task"],
            registry=r,
        )
        self.checks_failed = Counter(
            "protege_output_checks_failed",
            "Student answers failing at least one output check (what the guardrail counts).",
            ["task"],
            registry=r,
        )
        self.check_failures = Counter(
            "protege_output_check_failures",
            "Student answers failing an output check, by check.",
            ["task", "check"],
            registry=r,
        )
        self.drift = Gauge(
            "protege_input_drift",
            "Drift of the task's live prompts from its adapter's reference profile, by feature "
            "(length, charset, tokens) and measure (psi, js); above 0.1 is drift.",
            ["task", "feature", "measure"],
            registry=r,
            multiprocess_mode="livemax",
        )
        self.drift_profiled = Counter(
            "protege_drift_profiled",
            "Prompts added to the live drift profiles.",
            registry=r,
        )
        self.drift_dropped = Counter(
            "protege_drift_dropped",
            "Prompts left out of the live drift profiles because the monitor was behind.",
            registry=r,
        )

