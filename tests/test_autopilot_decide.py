"""The autopilot's pure parts: when to retrain, what a run tells the timeline, a run's Job."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest

from core.runs import RunRecord
from trainer.autopilot.config import TaskRules
from trainer.autopilot.decide import DAY_S, Facts, LastRun, decide
from trainer.autopilot.kube import ending, job_for, job_name
from trainer.autopilot.runners import train_args
from trainer.autopilot.status import Run, Status
from trainer.autopilot.timeline import outcome_events

NOW = 1_800_000_000.0
HOUR = 3600.0
RULES = TaskRules(
    min_new_exchanges=500, min_interval_s=6 * HOUR, drift_threshold=0.2,
    min_drift_exchanges=50, max_runs_per_day=3,
)  # fmt: skip
BASE = Facts(
    now=NOW, paused=False, champion="t/v1", challenger=None, new_exchanges=0, runs=(),
    last_run=None, drift=None,
)  # fmt: skip


def ago(hours: float, trigger: str = "new_data", champion: str | None = "t/v1") -> LastRun:
    return LastRun(NOW - hours * HOUR, trigger, champion)


@pytest.mark.parametrize(
    ("change", "why"),
    [
        ({}, "not_enough_data"),
        ({"new_exchanges": 499}, "not_enough_data"),
        ({"new_exchanges": 500}, "new_data"),
        ({"new_exchanges": 500, "champion": None}, "new_data"),  # the first student
        # min_interval_s counts from the last run's start, whatever its outcome
        ({"new_exchanges": 5000, "last_run": ago(5.9)}, "too_soon"),
        ({"new_exchanges": 5000, "last_run": ago(6.1)}, "new_data"),
        # drift retrains at once, with enough new data, against a champion
        ({"new_exchanges": 60, "drift": 0.35, "last_run": ago(1)}, "drift"),
        ({"new_exchanges": 49, "drift": 0.35}, "not_enough_data"),
        ({"new_exchanges": 60, "drift": 0.2}, "not_enough_data"),  # not above the threshold
        ({"new_exchanges": 60, "drift": 0.35, "champion": None}, "not_enough_data"),
        # ... but once per champion and interval
        ({"new_exchanges": 60, "drift": 0.35, "last_run": ago(1, "drift")}, "too_soon"),
        ({"new_exchanges": 60, "drift": 0.35, "last_run": ago(7, "drift")}, "drift"),
        ({"new_exchanges": 60, "drift": 0.35, "last_run": ago(1, "drift", "t/v0")}, "drift"),
        # the daily cap bounds every trigger; runs older than a day do not count
        ({"new_exchanges": 5000, "drift": 0.9, "runs": (NOW - 1, NOW - 2, NOW - 3)}, "daily_cap"),
        ({"new_exchanges": 5000, "runs": (NOW - DAY_S - 1,) * 3}, "new_data"),
        # a challenger being proven, or a pause, holds everything
        ({"new_exchanges": 5000, "drift": 0.9, "challenger": "t/v2"}, "challenge"),
        ({"new_exchanges": 5000, "drift": 0.9, "paused": True}, "paused"),
    ],
)
def test_autopilot_retrain_decisions(change: dict[str, Any], why: str) -> None:
    decision = decide(RULES, replace(BASE, **change))
    assert decision.why == why
    assert decision.retrain == (why in ("new_data", "drift"))
    assert decision.detail


def test_autopilot_drift_off_when_no_threshold() -> None:
    rules = TaskRules(drift_threshold=None, min_new_exchanges=500)
    facts = replace(BASE, new_exchanges=100, drift=5.0)
    assert decide(rules, facts).why == "not_enough_data"


def test_autopilot_decision_details_carry_figures() -> None:
    detail = decide(RULES, replace(BASE, new_exchanges=1234)).detail
    assert detail == "1,234 new exchanges since t/v1's dataset (min 500)"
    drift = decide(RULES, replace(BASE, new_exchanges=60, drift=0.35)).detail
    assert "0.350 > 0.2" in drift and "t/v1" in drift


def test_autopilot_status_remembers_runs_but_not_abandoned_ones() -> None:
    run = Run("R1", NOW, "new_data", "t/v1", "local")
    status = Status("t").started(run)
    assert status.current == run and status.runs == (NOW,)
    abandoned = status.ended(run, "abandoned", None, NOW + 5)
    assert abandoned.last_run is None and abandoned.runs == (NOW,)  # the cap still counts it
    published = status.ended(run, "published", "t/v2", NOW + 5)
    assert published.last_run == LastRun(NOW, "new_data", "t/v1")
    assert published.last_outcome is not None and published.last_outcome["handover"] is True
    assert published.handed_over().last_outcome["handover"] is False  # type: ignore[index]
    assert Status.decode(published.encode()) == published
    later = Run("R2", NOW + 2 * DAY_S, "drift", "t/v2", "local")
    assert published.started(later).runs == (NOW + 2 * DAY_S,)  # older than a day: dropped


def test_autopilot_run_record_becomes_events() -> None:
    record = RunRecord(
        "t", "R1", "published", NOW, snapshot="S1", champion="t/v1", published="t/v2",
        figures={
            "data": {"records_in": 1200, "train": 900, "test-indist": 100},
            "training": {"steps": 120, "final_loss": 0.4123, "tokens_per_s": 5300.0,
                         "seconds": 84.2},
            "evaluation": {"student": {"test-indist": 0.93}, "champion": {"test-indist": 0.9},
                           "base": {"test-indist": 0.41}},
        },
    )  # fmt: skip
    events = outcome_events(record)
    kinds = [kind for kind, _, _ in events]
    assert kinds == ["snapshot_built", "trained", "evaluated", "published"]
    summaries = [summary for _, summary, _ in events]
    assert summaries[0] == "snapshot S1: 900 train, 100 test-indist from 1,200 records"
    assert summaries[1] == "trained: 120 steps, final loss 0.412, 5,300 tokens/s, 84 s"
    assert summaries[2] == "test-indist: student 0.930, champion 0.900, base 0.410"
    assert summaries[3] == "published t/v2"
    failed = RunRecord("t", "R2", "failed", NOW, reason="no training example")
    assert outcome_events(failed) == [("run_failed", "run failed: no training example", {})]
    rejected = replace(record, outcome="rejected", published=None, reason="lost to t/v1")
    assert outcome_events(rejected)[-1][:2] == ("rejected", "not published: lost to t/v1")


TEMPLATE = {
    "apiVersion": "batch/v1",
    "kind": "Job",
    "metadata": {"name": "rel-protege-autopilot-run", "labels": {"app": "x"}},
    "spec": {
        "backoffLimit": 0,
        "template": {
            "metadata": {"labels": {"app": "x"}},
            "spec": {
                "restartPolicy": "Never",
                "containers": [{"name": "trainer", "args": ["train", "--config", "/c.yaml"]}],
            },
        },
    },
}


def test_autopilot_job_for_a_run() -> None:
    rules = TaskRules(base_model="/models/base", train_args=("--set", "epochs=2"))
    job = job_for(TEMPLATE, "Support_Tickets.v2", "01JFABCDEFGHJKMNPQRSTVWXYZ", "V1", rules)
    name = job["metadata"]["name"]
    assert name == "rel-protege-autopilot-run-support-tickets-v2-pqrstvwxyz"
    assert name == job_name(TEMPLATE, "Support_Tickets.v2", "01JFABCDEFGHJKMNPQRSTVWXYZ")
    labels = {"protege/task": "Support_Tickets.v2", "protege/run": "01JFABCDEFGHJKMNPQRSTVWXYZ"}
    assert job["metadata"]["labels"] == {"app": "x", **labels}
    assert job["spec"]["template"]["metadata"]["labels"] == {"app": "x", **labels}
    assert job["spec"]["template"]["spec"]["containers"][0]["args"] == [
        "train", "--config", "/c.yaml", "--task", "Support_Tickets.v2",
        "--run-id", "01JFABCDEFGHJKMNPQRSTVWXYZ", "--base-model", "/models/base",
        "--champion", "V1", "--champion-margin", "0.0", "--set", "epochs=2",
    ]  # fmt: skip
    assert TEMPLATE["spec"]["template"]["spec"]["containers"][0]["args"] == [  # type: ignore[index]
        "train", "--config", "/c.yaml",
    ]  # the template itself is untouched  # fmt: skip
    long = job_name(TEMPLATE, "t" * 80, "01JFABCDEFGHJKMNPQRSTVWXYZ")
    assert len(long) == 63 and long.endswith("-pqrstvwxyz")


def test_autopilot_job_template_must_be_a_job() -> None:
    from core.errors import ConfigError

    with pytest.raises(ConfigError, match="job_template"):
        job_for({"kind": "Pod"}, "t", "R", None, TaskRules())


@pytest.mark.parametrize(
    ("status", "how"),
    [
        ({}, None),
        ({"active": 1, "conditions": [{"type": "Failed", "status": "False"}]}, None),
        ({"conditions": [{"type": "Complete", "status": "True"}]}, "complete"),
        (
            {"conditions": [{"type": "Failed", "status": "True", "reason": "DeadlineExceeded",
                             "message": "Job was active longer than specified deadline"}]},
            "Job failed: DeadlineExceeded (Job was active longer than specified deadline)",
        ),
    ],
)  # fmt: skip
def test_autopilot_job_ending(status: dict[str, Any], how: str | None) -> None:
    assert ending({"status": status}) == how


def test_autopilot_train_args_without_champion() -> None:
    assert train_args("t", "R", None, TaskRules()) == [
        "--task", "t", "--run-id", "R", "--base-model", "smollm2",
    ]  # fmt: skip
