"""The student against its naive baselines on the frozen test sets, and the publication rule.

Every predictor (the student, the base model zero-shot, ...) answers every test set; each answer
set is scored by ``trainer.metrics.evaluate_predictions``. One *headline* metric per task decides
publication, chosen once from all test examples so every set and model is judged the same way:

- classification: accuracy;
- JSON objects: mean per-field agreement;
- free text: normalized exact match when every reference is a short answer (at most
  ``SHORT_ANSWER_TOKENS`` whitespace tokens: a word, a number, a name), else mean ROUGE-L F1.

The student may be published when its headline is at least every baseline's on every non-empty
test set (``EvalResult.student_beats_baseline``). A *contender* (the champion: the adapter
serving now, ``trainer.champion``) is scored beside them and shown in every table, but it is no
baseline: it has a publication rule of its own. Given a second predictor for the student, one
that samples as the task's traffic does (``trainer.decoding``), it is scored too, as
``EvalResult.sampled``: the figures the published decoding policy is chosen from. Predictors are
plain callables from examples to answers, so this module never loads a model.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

import structlog

from trainer.examples import Example
from trainer.metrics import (
    CLASSIFICATION,
    JSON,
    ExampleRecord,
    SetScores,
    evaluate_predictions,
    task_kind,
)
from trainer.settings import LabelRule

Predictor = Callable[[list[Example]], list[str]]

# A free-text task whose references all have at most this many tokens is scored by exact answer.
SHORT_ANSWER_TOKENS: Final = 5
# How many of the student's worst mistakes per test set are kept for a person to read.
MISTAKES_PER_SET: Final = 20

log = structlog.get_logger(__name__)


@dataclass(frozen=True)
class EvalResult:
    kind: str  # "classification", "json" or "text"
    headline_metric: str  # a key of SetScores.metrics()
    student: str  # the predictor being judged; every other one is a baseline
    scores: dict[str, dict[str, SetScores]]  # test set -> predictor -> scores
    mistakes: dict[str, list[ExampleRecord]]  # test set -> the student's worst answers
    # test set -> the student's scores sampling as the traffic does (None: not measured)
    sampled: dict[str, SetScores] | None = None
    # predictors scored for comparison that are not baselines (the champion)
    contenders: tuple[str, ...] = ()

    @property
    def models(self) -> list[str]:
        return list(next(iter(self.scores.values()), {}))

    @property
    def baselines(self) -> list[str]:
        return [m for m in self.models if m != self.student and m not in self.contenders]

    @property
    def headline(self) -> dict[str, dict[str, float]]:
        """test set -> predictor -> headline score, for the non-empty test sets."""
        return {
            name: {model: s.metrics().get(self.headline_metric, 0.0) for model, s in by.items()}
            for name, by in self.scores.items()
            if _size(by)
        }

    @property
    def sampled_headline(self) -> dict[str, float]:
        """test set -> the student's headline sampling as the traffic does (non-empty sets)."""
        return {
            name: s.metrics().get(self.headline_metric, 0.0)
            for name, s in (self.sampled or {}).items()
            if s.n
        }

    @property
    def greedy_headline(self) -> dict[str, float]:
        """test set -> the student's (greedy) headline, for the non-empty test sets."""
        return {name: by[self.student] for name, by in self.headline.items()}

    @property
    def student_beats_baseline(self) -> bool:
        """At least every baseline's headline on every non-empty set; False with no data."""
        rows = self.headline.values()
        return bool(rows) and all(
            row[self.student] >= row[b] for row in rows for b in self.baselines
        )

    def table(self) -> list[dict[str, Any]]:
        """One row per (predictor, test set): its size and every score."""
        return [
            {"model": model, "set": name, "n": s.n, **s.metrics()}
            for name, by in self.scores.items()
            for model, s in by.items()
        ]

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON values for the ``metrics`` of ``protege.json`` (no example texts)."""
        return {
            "kind": self.kind,
            "headline_metric": self.headline_metric,
            "student": self.student,
            "baselines": self.baselines,
            "contenders": list(self.contenders),
            "student_beats_baseline": self.student_beats_baseline,
            "headline": self.headline,
            "student_sampled": self.sampled_headline if self.sampled is not None else None,
            "sets": {
                name: {model: s.to_dict() for model, s in by.items()}
                for name, by in self.scores.items()
            },
        }


def evaluate(
    test_sets: Mapping[str, list[Example]],
    predictors: Mapping[str, Predictor],
    *,
    label_rule: LabelRule | None = None,
    student: str = "student",
    sampled: Predictor | None = None,
    mistakes_per_set: int = MISTAKES_PER_SET,
    contenders: Sequence[str] = (),
) -> EvalResult:
    """Score every predictor on every test set; ``student`` names the one being judged,
    ``sampled`` is the same student sampling as the traffic does (scored apart, if given), and
    ``contenders`` the predictors that are compared with it but are not baselines."""
    if student not in predictors:
        raise ValueError(f"predictors: no {student!r} among {sorted(predictors)}")
    unknown = [c for c in contenders if c not in predictors or c == student]
    if unknown:
        raise ValueError(f"predictors: contenders {unknown} are not among the baselines")
    if len(predictors) - len(contenders) < 2:
        raise ValueError(f"predictors: {student!r} needs at least one baseline to be judged by")
    everything = [e for examples in test_sets.values() for e in examples]
    kind = task_kind(everything, label_rule)
    scores = {
        name: {
            model: _score(name, model, examples, predict, label_rule, kind)
            for model, predict in predictors.items()
        }
        for name, examples in test_sets.items()
    }
    mistakes = {
        name: worst_mistakes(by[student].records, mistakes_per_set) for name, by in scores.items()
    }
    sampled_scores = None
    if sampled is not None:
        sampled_scores = {
            name: _score(name, f"{student} (sampled)", examples, sampled, label_rule, kind)
            for name, examples in test_sets.items()
        }
    headline = headline_metric(kind, everything)
    return EvalResult(
        kind, headline, student, scores, mistakes, sampled_scores, tuple(contenders)
    )


def headline_metric(kind: str, examples: Sequence[Example]) -> str:
    """The metric that decides publication for a task of this kind (see the module docstring)."""
    if kind == CLASSIFICATION:
        return "accuracy"
    if kind == JSON:
        return "field_agreement"
    short = all(len(e.completion.split()) <= SHORT_ANSWER_TOKENS for e in examples)
    return "normalized_match" if short else "rouge_l"


def worst_mistakes(records: Sequence[ExampleRecord], limit: int) -> list[ExampleRecord]:
    """The wrong answers, lowest per-example score first (ties keep the test-set order)."""
    return sorted((r for r in records if not r.correct), key=lambda r: r.score)[:limit]


def _score(
    name: str,
    model: str,
    examples: list[Example],
    predict: Predictor,
    label_rule: LabelRule | None,
    kind: str,
) -> SetScores:
    predictions = predict(examples) if examples else []
    if len(predictions) != len(examples):
        raise ValueError(
            f"predictor {model!r} gave {len(predictions)} answers for the "
            f"{len(examples)} examples of {name!r}"
        )
    scores = evaluate_predictions(examples, predictions, label_rule=label_rule, kind=kind)
    if scores.n:
        log.info("evaluated", model=model, test_set=name, n=scores.n, **scores.metrics())
    else:
        log.info("evaluated", model=model, test_set=name, n=0, scores="n/a")
    return scores


def _size(by_model: Mapping[str, SetScores]) -> int:
    return max((s.n for s in by_model.values()), default=0)
