"""How far a criterion's judge agrees with people: human labels in, agreement out.

A labels file is JSON Lines (one object a line) or CSV (a header row), each item with
``request`` (chat messages or a string; in CSV a cell holding a JSON list reads as messages),
``answer``, optional ``reference``, ``label`` (pass|fail) and optional ``id`` (default: its line
number). ``measure`` compares the judge's verdicts with the labels:

    agreement   share of items whose verdict equals the label
    tpr         true-positive rate: judge pass among human pass (None when no human pass)
    tnr         true-negative rate: judge fail among human fail (None when no human fail)

Items the judge could not judge (error, skipped) make the calibration incomplete: it is shown,
never stored. A stored calibration (``judges/<task>/<criterion>/calibration.json``) names the
criterion version it measured; ``standing`` says whether a criterion is flagged: uncalibrated,
calibrated for another version (stale), or below its ``min_agreement``.
"""

from __future__ import annotations

import contextlib
import csv
import io
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import orjson

from core.errors import JudgeError, StoreNotFound
from core.judging.client import Judge, Judgement
from core.judging.config import Criterion
from core.judging.prompts import JudgeItem, version
from core.keys import calibration_key
from core.store import Store

Label = Literal["pass", "fail"]


@dataclass(frozen=True)
class Labelled:
    item: JudgeItem
    label: Label


@dataclass(frozen=True)
class Disagreement:
    id: str
    label: str
    verdict: str
    reason: str


@dataclass(frozen=True)
class Calibration:
    """A criterion version's agreement with human labels."""

    task: str
    criterion: str
    version: str
    model: str
    min_agreement: float
    n: int
    agreement: float | None
    tpr: float | None
    tnr: float | None
    tp: int
    tn: int
    fp: int
    fn: int
    errors: int
    skipped: int
    disagreements: tuple[Disagreement, ...] = field(default=())

    @property
    def complete(self) -> bool:
        """Whether every item was judged (errors or skipped items make it unusable)."""
        return self.errors == 0 and self.skipped == 0 and self.n > 0

    @property
    def calibrated(self) -> bool:
        """Complete, and at or above the criterion's ``min_agreement``."""
        return self.complete and (self.agreement or 0.0) >= self.min_agreement

    def to_json(self) -> bytes:
        return orjson.dumps(asdict(self), option=orjson.OPT_INDENT_2)

    @classmethod
    def from_json(cls, data: bytes) -> Calibration:
        raw: dict[str, Any] = orjson.loads(data)
        raw["disagreements"] = tuple(Disagreement(**d) for d in raw.get("disagreements", ()))
        return cls(**raw)


def measure(
    criterion: Criterion, labelled: Sequence[Labelled], judgements: Sequence[Judgement]
) -> Calibration:
    """The judge's ``judgements`` of ``labelled`` items compared with their labels (pure)."""
    counts = {"tp": 0, "tn": 0, "fp": 0, "fn": 0, "error": 0, "skipped": 0}
    off: list[Disagreement] = []
    for one, judged in zip(labelled, judgements, strict=True):
        if judged.verdict in ("error", "skipped"):
            counts[judged.verdict] += 1
        else:
            right = judged.verdict == one.label
            counts[("t" if right else "f") + ("p" if judged.verdict == "pass" else "n")] += 1
        if judged.verdict != one.label:
            off.append(Disagreement(one.item.id or "", one.label, judged.verdict, judged.reason))
    tp, tn, fp, fn = counts["tp"], counts["tn"], counts["fp"], counts["fn"]
    judged_n = tp + tn + fp + fn
    return Calibration(
        task=criterion.task, criterion=criterion.name, version=version(criterion),
        model=criterion.model, min_agreement=criterion.min_agreement, n=len(labelled),
        agreement=_share(tp + tn, judged_n), tpr=_share(tp, tp + fn), tnr=_share(tn, tn + fp),
        tp=tp, tn=tn, fp=fp, fn=fn, errors=counts["error"], skipped=counts["skipped"],
        disagreements=tuple(off),
    )  # fmt: skip


def _share(part: int, whole: int) -> float | None:
    return part / whole if whole else None


def report_lines(calibration: Calibration) -> list[str]:
    """The calibration as lines for a terminal."""
    c = calibration

    def pct(value: float | None) -> str:
        return "n/a" if value is None else f"{value:.1%}"

    lines = [
        f"criterion {c.task}/{c.criterion} (version {c.version}, judge {c.model})",
        f"items {c.n}: agreement {pct(c.agreement)} (min {c.min_agreement:.0%}), "
        f"TPR {pct(c.tpr)}, TNR {pct(c.tnr)}",
        f"judge pass/human pass {c.tp}, judge fail/human fail {c.tn}, "
        f"judge pass/human fail {c.fp}, judge fail/human pass {c.fn}, "
        f"errors {c.errors}, skipped {c.skipped}",
    ]
    if c.disagreements:
        lines.append("disagreements (id, human, judge, reason):")
        lines += [f"  {d.id}\t{d.label}\t{d.verdict}\t{d.reason}" for d in c.disagreements]
    if not c.complete:
        lines.append("incomplete: not every item was judged; the calibration is not stored")
    elif not c.calibrated:
        lines.append(f"below min_agreement {c.min_agreement}: the criterion is flagged")
    return lines


# --- the store ---


async def save(store: Store, calibration: Calibration) -> str:
    key = calibration_key(calibration.task, calibration.criterion)
    await store.put(key, calibration.to_json())
    return key


async def read_calibration(store: Store, task: str, criterion: str) -> Calibration | None:
    """The stored calibration of ``task``'s ``criterion``; None when never calibrated."""
    try:
        return Calibration.from_json(await store.get(calibration_key(task, criterion)))
    except StoreNotFound:
        return None


@dataclass(frozen=True)
class Standing:
    """Whether a criterion's verdicts can be trusted: ``flagged`` unless ``calibrated``."""

    state: Literal["calibrated", "below", "stale", "uncalibrated"]
    agreement: float | None = None

    @property
    def flagged(self) -> bool:
        return self.state != "calibrated"


def standing(criterion: Criterion, calibration: Calibration | None) -> Standing:
    """``criterion``'s standing given its stored ``calibration`` (pure)."""
    if calibration is None:
        return Standing("uncalibrated")
    if calibration.version != version(criterion):
        return Standing("stale", calibration.agreement)
    if (calibration.agreement or 0.0) < criterion.min_agreement:
        return Standing("below", calibration.agreement)
    return Standing("calibrated", calibration.agreement)


async def standing_of(store: Store, criterion: Criterion) -> Standing:
    """``criterion``'s standing from its calibration in ``store``."""
    return standing(criterion, await read_calibration(store, criterion.task, criterion.name))


async def flagged_of(store: Store, criteria: Sequence[Criterion]) -> dict[str, str]:
    """criterion name -> its standing's state, for those their calibration does not vouch for
    (uncalibrated, below their ``min_agreement``, or calibrated for an older version)."""
    standings = {c.name: await standing_of(store, c) for c in criteria}
    return {name: s.state for name, s in standings.items() if s.flagged}


# --- labels files ---


def read_labels(path: Path) -> list[Labelled]:
    """The labelled items of a JSONL or CSV file (CSV by its ``.csv`` suffix); a ``JudgeError``
    naming the line at fault."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise JudgeError(f"labels: cannot read {path}: {exc.strerror}") from exc
    rows = _csv_rows(text) if path.suffix.lower() == ".csv" else _jsonl_rows(text, path)
    out = [_labelled(row, line, path) for line, row in rows]
    if not out:
        raise JudgeError(f"labels: {path} holds no items")
    return out


def _jsonl_rows(text: str, path: Path) -> list[tuple[int, dict[str, Any]]]:
    rows = []
    for line, raw in enumerate(text.splitlines(), start=1):
        if not raw.strip():
            continue
        try:
            row = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            raise JudgeError(f"labels: {path}:{line} is not JSON: {exc}") from exc
        if not isinstance(row, dict):
            raise JudgeError(f"labels: {path}:{line} must be a JSON object")
        rows.append((line, row))
    return rows


def _csv_rows(text: str) -> list[tuple[int, dict[str, Any]]]:
    reader = csv.DictReader(io.StringIO(text, newline=""))
    rows = []
    for row in reader:
        request: Any = row.get("request") or ""
        if request.lstrip().startswith("["):
            with contextlib.suppress(orjson.JSONDecodeError):  # else a string starting "["
                request = orjson.loads(request)
        rows.append((reader.line_num, {**row, "request": request}))
    return rows


def _labelled(row: dict[str, Any], line: int, path: Path) -> Labelled:
    where = f"labels: {path}:{line}"
    label = str(row.get("label") or "").strip().lower()
    if label not in ("pass", "fail"):
        raise JudgeError(f"{where}: label must be pass or fail, got {row.get('label')!r}")
    answer = row.get("answer")
    if not isinstance(answer, str):
        raise JudgeError(f"{where}: answer must be a string")
    reference = row.get("reference") or None
    if reference is not None and not isinstance(reference, str):
        raise JudgeError(f"{where}: reference must be a string")
    ident = row.get("id")
    item = JudgeItem(answer, row.get("request"), reference, str(ident) if ident else str(line))
    return Labelled(item, "pass" if label == "pass" else "fail")


async def calibrate(
    judge: Judge, criterion: Criterion, labelled: Sequence[Labelled]
) -> Calibration:
    """Judge ``labelled`` items (through the cache), measure the agreement, and store the
    calibration when it is complete."""
    items = [one.item for one in labelled]
    judgements = await judge.judge_many(criterion, items, reasons=True)
    calibration = measure(criterion, labelled, judgements)
    if calibration.complete and judge.store is not None:
        await save(judge.store, calibration)
    return calibration
