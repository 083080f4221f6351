"""Scores of predicted answers against reference answers: pure functions, no model.

Every scoring function takes parallel sequences (prediction *i* answers reference *i*) and
returns shares in [0, 1]; an empty input scores 0.0. A task is one of three kinds, and
``evaluate_predictions`` picks the metrics that fit it:

- ``classification`` (a label rule is set): accuracy, macro-F1, per-class precision/recall/F1
  and a confusion matrix of the labels read by ``trainer.labels.extract_label``.
- ``json`` (every reference is a JSON object): JSON validity and per-field agreement.
- ``text`` (anything else): ROUGE-L.

Exact and normalized match are scored for every kind; JSON validity wherever JSON is expected
(the reference is JSON or the request asked for it), JSON-schema validity wherever the request
carried a ``response_format`` schema. Answers are read (JSON, normalized text, schema checks) by
``core.answers``, as the gateway reads them when it checks and scores a student.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Final

from rapidfuzz.distance import LCSseq

from core.answers import (
    NOT_JSON,
    conforms,
    normalize_answer,
    read_json,
    response_schema,
    same_field,
    wants_json,
)
from core.answers import parse_json_answer as parse_json_answer
from core.text import content_text
from trainer.examples import Example
from trainer.labels import extract_label
from trainer.settings import LabelRule

CLASSIFICATION: Final = "classification"
JSON: Final = "json"
TEXT: Final = "text"
# The confusion-matrix column for predicted labels outside the reference classes (or none).
OTHER: Final = "(other)"
# Longest prompt kept in a per-example record.
PREVIEW_CHARS: Final = 1000
# ROUGE-L reads at most this many tokens of each side (the LCS is O(n·m/64)).
ROUGE_MAX_TOKENS: Final = 400


def _mean(values: Sequence[float]) -> float:
    return sum(values) / len(values) if values else 0.0


def exact_match(predictions: Sequence[str], references: Sequence[str]) -> float:
    return _mean([float(p == r) for p, r in zip(predictions, references, strict=True)])


def normalized_match(predictions: Sequence[str], references: Sequence[str]) -> float:
    pairs = zip(predictions, references, strict=True)
    return _mean([float(normalize_answer(p) == normalize_answer(r)) for p, r in pairs])


def json_validity(predictions: Sequence[str]) -> float:
    """Share of predictions that parse as JSON (fences tolerated, as when labels are read)."""
    return _mean([float(read_json(p) is not NOT_JSON) for p in predictions])


@dataclass(frozen=True)
class FieldAgreement:
    # Per top-level key of the references: share of the references holding it whose
    # prediction has the same value there (a missing key disagrees).
    per_field: dict[str, float]
    # Mean of per_field: every field weighs the same, however often it occurs.
    mean: float
    # Per example: share of its reference's fields the prediction agrees on (for a reference
    # that is not an object: 1.0 when the answers are equal after normalization, else 0.0).
    per_example: list[float]


def field_agreement(predictions: Sequence[str], references: Sequence[str]) -> FieldAgreement:
    hits: dict[str, list[float]] = {}
    per_example: list[float] = []
    for prediction, reference in zip(predictions, references, strict=True):
        ref, pred = read_json(reference), read_json(prediction)
        if not isinstance(ref, dict):
            per_example.append(float(normalize_answer(prediction) == normalize_answer(reference)))
            continue
        agree = {key: same_field(pred, key, value) for key, value in ref.items()}
        for key, same in agree.items():
            hits.setdefault(key, []).append(float(same))
        per_example.append(_mean([float(v) for v in agree.values()]) if agree else 1.0)
    per_field = {key: _mean(values) for key, values in hits.items()}
    return FieldAgreement(per_field, _mean(list(per_field.values())), per_example)


def schema_validity(
    predictions: Sequence[str], schemas: Sequence[dict[str, Any] | None]
) -> float | None:
    """Share of predictions valid against their request's schema; ``None`` when none had one.

    A prediction that is not JSON is invalid; an example whose schema is itself invalid is not
    counted.
    """
    checked = [
        conforms(read_json(p), s)
        for p, s in zip(predictions, schemas, strict=True)
        if s is not None
    ]
    counted = [float(c) for c in checked if c is not None]
    return _mean(counted) if counted else None


@dataclass(frozen=True)
class ClassStats:
    precision: float
    recall: float
    f1: float
    support: int  # references of this class


@dataclass(frozen=True)
class ClassScores:
    accuracy: float
    # Mean F1 over the classes seen in the references (a class never predicted counts as 0).
    macro_f1: float
    per_class: dict[str, ClassStats]
    # reference class -> predicted label -> count; labels outside the classes count as OTHER.
    confusion: dict[str, dict[str, int]]


def classification_scores(
    predicted: Sequence[str | None], reference: Sequence[str | None]
) -> ClassScores:
    """Scores over the examples with a reference label; an unreadable prediction is wrong."""
    pairs = [(p, r) for p, r in zip(predicted, reference, strict=True) if r is not None]
    classes = sorted({r for _, r in pairs})
    confusion = {r: dict.fromkeys([*classes, OTHER], 0) for r in classes}
    for p, r in pairs:
        confusion[r][p if p in confusion else OTHER] += 1
    per_class = {c: _class_stats(c, confusion) for c in classes}
    return ClassScores(
        accuracy=_mean([float(p == r) for p, r in pairs]),
        macro_f1=_mean([s.f1 for s in per_class.values()]),
        per_class=per_class,
        confusion=confusion,
    )


def _class_stats(label: str, confusion: dict[str, dict[str, int]]) -> ClassStats:
    hits = confusion[label][label]
    support = sum(confusion[label].values())
    predicted = sum(row[label] for row in confusion.values())
    precision = hits / predicted if predicted else 0.0
    recall = hits / support if support else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return ClassStats(precision, recall, f1, support)


def rouge_l(prediction: str, reference: str, *, max_tokens: int = ROUGE_MAX_TOKENS) -> float:
    """ROUGE-L F1: longest common subsequence of case-folded whitespace tokens.

    Each side is cut to its first ``max_tokens`` tokens. Two empty answers score 1.0. The LCS is
    rapidfuzz's (bit-parallel, in C); it compares tokens by a 64-bit key (a one-character
    token's code point, else its hash), so two different tokens match only on a hash collision.
    """
    pred = prediction.casefold().split()[:max_tokens]
    ref = reference.casefold().split()[:max_tokens]
    if not pred or not ref:
        return float(pred == ref)
    common = LCSseq.similarity(pred, ref)
    if not common:
        return 0.0
    precision, recall = common / len(pred), common / len(ref)
    return 2 * precision * recall / (precision + recall)


@dataclass(frozen=True)
class ExampleRecord:
    """One scored example, enough for a person to read a mistake."""

    request_id: str
    prompt: str  # the last user turn, cut to PREVIEW_CHARS
    reference: str
    prediction: str
    # classification: the labels agree; json and text: the answers agree after normalization.
    correct: bool
    # 0..1, higher is better: 1/0 for classification, field agreement for json, ROUGE-L for text.
    score: float
    reference_label: str | None = None
    predicted_label: str | None = None


@dataclass(frozen=True)
class SetScores:
    kind: str
    n: int
    exact_match: float
    normalized_match: float
    json_valid: float | None = None
    schema_valid: float | None = None
    fields: FieldAgreement | None = None
    classes: ClassScores | None = None
    rouge_l: float | None = None
    records: list[ExampleRecord] = field(default_factory=list)

    def metrics(self) -> dict[str, float]:
        """Every scalar score this set has, by name."""
        named: dict[str, float | None] = {
            "exact_match": self.exact_match,
            "normalized_match": self.normalized_match,
            "json_valid": self.json_valid,
            "schema_valid": self.schema_valid,
            "field_agreement": self.fields.mean if self.fields else None,
            "accuracy": self.classes.accuracy if self.classes else None,
            "macro_f1": self.classes.macro_f1 if self.classes else None,
            "rouge_l": self.rouge_l,
        }
        return {name: value for name, value in named.items() if value is not None}

    def to_dict(self) -> dict[str, Any]:
        """The scores as plain JSON values, without the per-example records."""
        out: dict[str, Any] = {"kind": self.kind, "n": self.n, **self.metrics()}
        if self.fields:
            out["per_field"] = self.fields.per_field
        if self.classes:
            out["per_class"] = {
                label: asdict(stats) for label, stats in self.classes.per_class.items()
            }
            out["confusion"] = self.classes.confusion
        return out


def task_kind(examples: Sequence[Example], label_rule: LabelRule | None = None) -> str:
    """classification with a label rule; json when every reference is an object; else text."""
    if label_rule is not None:
        return CLASSIFICATION
    if examples and all(isinstance(read_json(e.completion), dict) for e in examples):
        return JSON
    return TEXT


def prompt_preview(messages: Sequence[dict[str, Any]], limit: int = PREVIEW_CHARS) -> str:
    """The text of the last user turn (else of the last turn), cut to ``limit`` characters."""
    turns = [m for m in messages if m.get("role") == "user"] or list(messages)
    if not turns:
        return ""
    return content_text(turns[-1].get("content"))[:limit]


def evaluate_predictions(
    examples: Sequence[Example],
    predictions: Sequence[str],
    *,
    label_rule: LabelRule | None = None,
    kind: str | None = None,
) -> SetScores:
    """All the scores that fit the task's kind (``task_kind`` unless ``kind`` is given)."""
    if len(examples) != len(predictions):
        raise ValueError(f"{len(predictions)} predictions for {len(examples)} examples")
    kind = kind or task_kind(examples, label_rule)
    references = [e.completion for e in examples]
    pairs = list(zip(predictions, references, strict=True))
    matches = [normalize_answer(p) == normalize_answer(r) for p, r in pairs]
    expect_json = [kind == JSON or _is_json(e.completion) or wants_json(e.params) for e in examples]
    chosen = [p for p, wanted in zip(predictions, expect_json, strict=True) if wanted]
    common: dict[str, Any] = {
        "kind": kind,
        "n": len(examples),
        "exact_match": exact_match(predictions, references),
        "normalized_match": _mean([float(m) for m in matches]),
        "json_valid": json_validity(chosen) if chosen else None,
        "schema_valid": schema_validity(predictions, [response_schema(e.params) for e in examples]),
    }
    if kind == CLASSIFICATION:
        if label_rule is None:
            raise ValueError("classification needs a label rule")
        return _classification_set(examples, predictions, label_rule, common)
    if kind == JSON:
        agreement = field_agreement(predictions, references)
        records = _records(examples, predictions, matches, agreement.per_example)
        return SetScores(**common, fields=agreement, records=records)
    rouge = [rouge_l(p, r) for p, r in pairs]
    records = _records(examples, predictions, matches, rouge)
    return SetScores(**common, rouge_l=_mean(rouge), records=records)


def _is_json(text: str) -> bool:
    return isinstance(read_json(text), dict | list)


def _classification_set(
    examples: Sequence[Example],
    predictions: Sequence[str],
    rule: LabelRule,
    common: dict[str, Any],
) -> SetScores:
    wanted = [
        e.label if e.label is not None else extract_label(e.completion, rule) for e in examples
    ]
    got = [extract_label(p, rule) for p in predictions]
    right = [w is not None and w == g for w, g in zip(wanted, got, strict=True)]
    records = _records(examples, predictions, right, [float(r) for r in right], (wanted, got))
    return SetScores(**common, classes=classification_scores(got, wanted), records=records)


def _records(
    examples: Sequence[Example],
    predictions: Sequence[str],
    correct: Sequence[bool],
    scores: Sequence[float],
    labels: tuple[Sequence[str | None], Sequence[str | None]] | None = None,
) -> list[ExampleRecord]:
    wanted, got = labels or ([None] * len(examples), [None] * len(examples))
    return [
        ExampleRecord(e.request_id, prompt_preview(e.messages), e.completion, p, c, s, w, g)
        for e, p, c, s, w, g in zip(
            examples, predictions, correct, scores, wanted, got, strict=True
        )
    ]
