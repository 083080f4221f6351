"""A dataset snapshot's card: ``card.json`` (``DatasetCard``) and ``card.md`` (``render_card``).

A build (``trainer.dataset``) fills the counts of what it read, kept and dropped; a build that
screened the teacher's answers with the task's criteria (``trainer.screening``) adds what the
judge said; a relabelled snapshot (``trainer.relabel``) adds what the teacher's second opinion
changed. Every field added after the first cards has a default, so older cards still load.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from typing import Any

import orjson

from trainer.examples import SPLITS, Example

_SOURCES = ("teacher", "correction", "relabelled")


@dataclass(frozen=True)
class DatasetCard:
    """What a snapshot holds and how it was made: ``card.json``, and ``card.md`` for a person."""

    task: str
    snapshot: str
    created: str  # ISO 8601, UTC
    since: str | None  # the exchange window read: since <= ts < until
    until: str | None
    seed: int
    records_in: int  # exchange records read
    examples: dict[str, int]  # per split
    groups: dict[str, int]  # distinct groups per split
    classes: dict[str, dict[str, int]]  # per split: label -> examples (empty for free text)
    # per split: "teacher" / "correction" / "relabelled" -> examples
    sources: dict[str, dict[str, int]]
    drops: dict[str, int]  # reason -> records or examples dropped
    tests_from: str | None  # the snapshot that made the test sets; None: none yet
    tests_reused: bool  # the frozen test sets were copied, not made by this build
    config: dict[str, Any]  # the CurationConfig used
    # Feedback read: records, negative_requests, corrections, overridden_by_file (feedback
    # corrections the corrections file replaced), on_frozen_tests (requests in the frozen test
    # sets with feedback, left as they were). Empty in cards made before feedback.
    feedback: dict[str, int] = field(default_factory=dict)
    # Per split: examples whose gold output is a feedback correction (source "correction").
    feedback_corrections: dict[str, int] = field(default_factory=dict)
    # The task's criteria on the teacher's answers (``trainer.screening``); all empty when the
    # task has none. Per criterion: examples it failed, each dropped (one failing two criteria
    # counts under both; ``drops["criteria_failed"]`` counts it once).
    dropped_by_criterion: dict[str, int] = field(default_factory=dict)
    # Per criterion: its verdicts, pass / fail / error / skipped. An error or a skipped
    # (budget) judgement keeps the example: it was not judged, and is never counted as passed.
    criteria: dict[str, dict[str, int]] = field(default_factory=dict)
    # Criteria configured but not applied at build, and why (a criterion using the reference).
    criteria_not_applied: dict[str, str] = field(default_factory=dict)
    # The judge run: examples sent, calls, cached, skipped, tokens, cost.
    judge_usage: dict[str, Any] = field(default_factory=dict)
    # Criteria their calibration does not vouch for: name -> uncalibrated | below | stale.
    criteria_flagged: dict[str, str] = field(default_factory=dict)
    # A relabelled snapshot (``trainer.relabel``): from which snapshot, how, and what changed.
    relabel: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> bytes:
        return orjson.dumps(asdict(self), option=orjson.OPT_INDENT_2)

    @classmethod
    def from_json(cls, data: bytes) -> DatasetCard:
        doc = orjson.loads(data)
        return cls(**{f.name: doc[f.name] for f in fields(cls) if f.name in doc})

    def to_markdown(self) -> str:
        return render_card(self)


def split_facts(splits: Mapping[str, Sequence[Example]]) -> dict[str, Any]:
    """The card's counts of ``splits``: examples, groups, classes and sources per split."""
    return {
        "examples": {s: len(splits[s]) for s in SPLITS},
        "groups": {s: len({e.group for e in splits[s]}) for s in SPLITS},
        "classes": {s: _counts(e.label for e in splits[s] if e.label is not None) for s in SPLITS},
        "sources": {s: _counts(e.source for e in splits[s]) for s in SPLITS},
    }


def _counts(values: Iterable[str]) -> dict[str, int]:
    return dict(sorted(Counter(values).items()))


def render_card(card: DatasetCard) -> str:
    """The card as Markdown: summary, splits, classes, feedback, criteria, relabelling, drops,
    configuration."""
    lines = [f"# Dataset `{card.task}` / `{card.snapshot}`", ""]
    if card.relabel.get("tests_relabelled"):
        lines += [
            "> **WARNING: THE TEST SETS OF THIS SNAPSHOT WERE RELABELLED** by the teacher "
            f"(`--relabel-tests`): they are not the frozen test sets of `{card.tests_from}`, "
            "and scores on them cannot be compared with any other snapshot's.",
            "",
        ]
    lines += _summary(card)
    lines += _classes(card)
    if card.feedback:
        lines += ["", "## Feedback", "", "| | count |", "|---|---:|"]
        lines += [f"| {name} | {n} |" for name, n in card.feedback.items()]
        lines += [f"| corrections in {s} | {n} |" for s, n in card.feedback_corrections.items()]
    lines += _criteria(card)
    lines += _relabel(card)
    lines += ["", "## Dropped", "", "| reason | count |", "|---|---:|"]
    lines += [f"| {reason} | {n} |" for reason, n in card.drops.items()] or ["| (none) | 0 |"]
    config = orjson.dumps(card.config, option=orjson.OPT_INDENT_2).decode()
    lines += ["", "## Curation settings", "", "```json", config, "```", ""]
    return "\n".join(lines)


def _summary(card: DatasetCard) -> list[str]:
    window = f"{card.since or 'the beginning'} to {card.until or 'now'}"
    tests = "made by this build" if not card.tests_reused else f"frozen, from {card.tests_from}"
    if card.relabel.get("tests_relabelled"):
        tests = f"RELABELLED, from those of {card.tests_from}"
    lines = [
        f"Created {card.created} from the exchanges of {window} (seed {card.seed}).",
        f"{card.records_in} records read; test sets {tests}.",
        "",
        "| split | examples | groups | " + " | ".join(_SOURCES) + " |",
        "|---|---:|---:|" + "---:|" * len(_SOURCES),
    ]
    for split in SPLITS:
        src = card.sources.get(split, {})
        counts = " | ".join(str(src.get(s, 0)) for s in _SOURCES)
        lines.append(
            f"| {split} | {card.examples.get(split, 0)} | {card.groups.get(split, 0)} | {counts} |"
        )
    return lines


def _classes(card: DatasetCard) -> list[str]:
    labels = sorted({label for per in card.classes.values() for label in per})
    if not labels:
        return []
    lines = ["", "## Classes", "", "| label | " + " | ".join(SPLITS) + " |"]
    lines.append("|---|" + "---:|" * len(SPLITS))
    for label in labels:
        counts = " | ".join(str(card.classes.get(s, {}).get(label, 0)) for s in SPLITS)
        lines.append(f"| {label} | {counts} |")
    return lines


def _criteria(card: DatasetCard) -> list[str]:
    if not (card.criteria or card.criteria_not_applied):
        return []
    lines = [
        "", "## Teacher answers judged by the task's criteria", "",
        "A failing answer is dropped; an error or a skipped judgement (budget) keeps its "
        "example, unjudged.", "",
        "| criterion | pass | fail (dropped) | error (kept) | skipped (kept) |",
        "|---|---:|---:|---:|---:|",
    ]  # fmt: skip
    for name, counts in card.criteria.items():
        flag = f" (flagged: {card.criteria_flagged[name]})" if name in card.criteria_flagged else ""
        lines.append(
            f"| {name}{flag} | {counts.get('pass', 0)} | {card.dropped_by_criterion.get(name, 0)} "
            f"| {counts.get('error', 0)} | {counts.get('skipped', 0)} |"
        )
    lines += [f"| {name} | not applied: {why} | | | |"
              for name, why in card.criteria_not_applied.items()]  # fmt: skip
    if card.judge_usage:
        usage = ", ".join(f"{k} {v}" for k, v in card.judge_usage.items())
        lines += ["", f"Judge: {usage}."]
    return lines


def _relabel(card: DatasetCard) -> list[str]:
    r = card.relabel
    if not r:
        return []
    tests = "RELABELLED" if r.get("tests_relabelled") else "copied unchanged"
    lines = [
        "", "## Relabelled", "",
        f"From snapshot `{r.get('from')}`: {r.get('samples')} teacher samples per example "
        f"(model {r.get('model')}, temperature 1), kind {r.get('kind')}, consensus "
        f"{r.get('consensus')}; test sets {tests}.",
        "", "| split | changed | unchanged | dropped |", "|---|---:|---:|---:|",
    ]  # fmt: skip
    for split, counts in r.get("splits", {}).items():
        lines.append(
            f"| {split} | {counts.get('changed', 0)} | {counts.get('unchanged', 0)} "
            f"| {counts.get('dropped', 0)} |"
        )
    for title, key in (("Dropped, why", "dropped"), ("Unchanged, why", "unchanged")):
        if r.get(key):
            lines += ["", f"{title}:", ""]
            lines += [f"- {reason}: {n}" for reason, n in r[key].items()]
    if r.get("agreement"):
        shown = ", ".join(f"{k} {v}" for k, v in r["agreement"].items())
        lines += ["", f"Agreement of the kept examples: {shown}."]
    return lines
