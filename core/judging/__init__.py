"""LLM judges: named pass/fail questions about free-text answers (criteria), asked of any
OpenAI-compatible model, cached in the store and calibrated against human labels.

    config.py        the ``judges`` section: endpoint, bounds, budget, each task's criteria
    prompts.py       pure: the fixed prompts, strict verdict parsing, versions and cache keys
    limits.py        pure: the pacer of call starts and a run's budget
    cache.py         verdicts as append-only Parquet parts in the store (and the store keys)
    client.py        the ``Judge``: bounded, budgeted, retried calls; ``judge_batches`` (sync)
    calibration.py   labels files, agreement / TPR / TNR, stored calibrations, flagged criteria

A caller judges with::

    settings = load_judge_settings("protege.yaml")
    criterion = settings.criterion("ticket-summary", "faithful")
    async with opened(settings) as judge:
        judgements = await judge.judge_many(criterion, [JudgeItem(answer, request=messages)])

or, not async, ``judge_batches(settings, [(criterion, items)])``.
"""

from core.judging.calibration import (
    Calibration,
    Labelled,
    Standing,
    calibrate,
    flagged_of,
    measure,
    read_calibration,
    read_labels,
    standing,
    standing_of,
)
from core.judging.client import Batches, Judge, Judgement, JudgeStats, judge_batches, opened
from core.judging.config import (
    PAIRWISE,
    Criterion,
    Endpoint,
    JudgesConfig,
    JudgeSettings,
    load_judge_settings,
)
from core.judging.prompts import JudgeItem, parse_verdict, version

__all__ = [
    "PAIRWISE",
    "Batches",
    "Calibration",
    "Criterion",
    "Endpoint",
    "Judge",
    "JudgeItem",
    "JudgeSettings",
    "JudgeStats",
    "Judgement",
    "JudgesConfig",
    "Labelled",
    "Standing",
    "calibrate",
    "flagged_of",
    "judge_batches",
    "load_judge_settings",
    "measure",
    "opened",
    "parse_verdict",
    "read_calibration",
    "read_labels",
    "standing",
    "standing_of",
    "version",
]
