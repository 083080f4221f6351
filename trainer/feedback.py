"""What the applications' feedback means for a dataset build.

Input: the task's feedback rows (``core.read.read_feedback``: deduplicated, newest first),
including the rows stored ``_unresolved``: they apply to whichever of the task's exchanges has
their ``request_id``, and to nothing else. Output (``verdicts``): the requests judged negative,
and the corrections, one per request (the newest). The rules (``CurationConfig``): a label
in ``negative_labels`` (case-folded) or a score strictly below ``negative_score_below``
makes a feedback negative. A request with a correction is never dropped as negative: the
verdict judged the answer the correction replaces. All pure, but ``load_feedback`` (the
store read).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import structlog

from core.feedback import UNRESOLVED
from core.read import read_feedback
from trainer.curate import FrozenTests
from trainer.settings import CurationConfig

log = structlog.get_logger("trainer")


@dataclass(frozen=True)
class Verdicts:
    """What a task's feedback says, by request id."""

    negative: frozenset[str] = frozenset()
    corrections: Mapping[str, str] = field(default_factory=dict)
    records: int = 0  # feedback rows read (after deduplication)


def is_negative(row: Mapping[str, Any], config: CurationConfig) -> bool:
    """Whether one feedback row calls its answer bad, by the task's rules."""
    label = row.get("label")
    if isinstance(label, str) and label.strip().casefold() in _folded(config.negative_labels):
        return True
    score, below = row.get("score"), config.negative_score_below
    return below is not None and isinstance(score, int | float) and score < below


def _folded(labels: Iterable[str]) -> frozenset[str]:
    return frozenset(label.strip().casefold() for label in labels)


def verdicts(rows: Iterable[Mapping[str, Any]], config: CurationConfig) -> Verdicts:
    """The verdicts of feedback ``rows`` given newest first (a request's newest correction
    wins)."""
    negative: set[str] = set()
    corrections: dict[str, str] = {}
    count = 0
    for row in rows:
        count += 1
        request_id = str(row["request_id"])
        if is_negative(row, config):
            negative.add(request_id)
        correction = row.get("correction")
        if isinstance(correction, str) and correction.strip():
            corrections.setdefault(request_id, correction)
    return Verdicts(frozenset(negative), corrections, count)


def merge_corrections(
    from_file: Mapping[str, str], from_feedback: Mapping[str, str]
) -> tuple[dict[str, str], int]:
    """Both sources of corrections as one (the file wins on conflict), and how many feedback
    corrections the file overrode."""
    overridden = sum(1 for request_id in from_feedback if request_id in from_file)
    return {**from_feedback, **from_file}, overridden


def load_feedback(store_uri: str, task: str, config: CurationConfig) -> Verdicts:
    """The verdicts of ``task``'s feedback (its own rows and the unresolved ones); none when
    the task's config turns feedback off. Blocking: runs on a worker thread."""
    if not config.feedback:
        return Verdicts()
    table = read_feedback(store_uri, task=[task, UNRESOLVED])
    return verdicts(table.to_pylist(), config)


def feedback_counts(
    task: str, told: Verdicts, overridden: int, frozen: FrozenTests | None
) -> dict[str, int]:
    """The card's feedback counts; feedback on frozen test examples is counted and logged."""
    if not told.records:
        return {}
    judged = told.negative | told.corrections.keys()
    tested = {e.request_id for split in (frozen.splits.values() if frozen else ()) for e in split}
    on_tests = len(judged & tested)
    if on_tests:
        log.warning("feedback on frozen test examples left unapplied; the test sets stay frozen",
                    task=task, requests=on_tests)  # fmt: skip
    return {
        "records": told.records,
        "negative_requests": len(told.negative),
        "corrections": len(told.corrections),
        "overridden_by_file": overridden,
        "on_frozen_tests": on_tests,
    }
