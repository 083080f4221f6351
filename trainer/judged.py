"""Judged evaluation: the task's LLM judges (``core.judging``) on the test sets, beside the exact
metrics that misjudge free text.

For a task with judges (``judges.tasks.<task>``), every non-empty test set is judged:

- each criterion on the student's (greedy) answers and on the teacher's own (the references):
  the teacher's rate is the ceiling the student's is read against, and a low one says the
  criterion, or the teacher, is off (the playbook's teacher-quality check);
- the pairwise criterion (``as-good-as-teacher``) on the student's answers against the
  teacher's;
- with a champion in the evaluation (the adapter serving now, ``EvalResult.contenders``), every
  criterion on its answers too, rated as ``champion``: its pass rates are the bar the
  champion's publication rule sets (``trainer.champion``).

A rate is passes over passes and fails: an ``error`` (the judge answered in no valid form) or
``skipped`` (the run's budget was spent) never passes and is counted apart. A criterion its
calibration does not vouch for (uncalibrated, below its ``min_agreement``, or calibrated for an
older version) is reported as flagged. ``Judged.meets`` is the publish rule's half: the student's
rate of each criterion named in ``judges.tasks.<task>.publish_min`` at least that on every test
set. Judgements are cached in the store, so evaluating the same answers again costs nothing.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from core.judging import (
    Batches,
    Criterion,
    JudgeItem,
    Judgement,
    JudgeSettings,
    flagged_of,
    judge_batches,
)
from core.store import open_store
from trainer.evaluate import EvalResult
from trainer.examples import Example
from trainer.metrics import SetScores

STUDENT: Final = "student"
TEACHER: Final = "teacher"
CHAMPION: Final = "champion"
Run = Callable[[JudgeSettings, Sequence[tuple[Criterion, Sequence[JudgeItem]]]], Batches]


@dataclass(frozen=True)
class Rate:
    """The verdicts on one answer set for one criterion."""

    passed: int = 0
    failed: int = 0
    errors: int = 0
    skipped: int = 0

    @classmethod
    def of(cls, judgements: Sequence[Judgement]) -> Rate:
        verdicts = [j.verdict for j in judgements]
        return cls(*(verdicts.count(v) for v in ("pass", "fail", "error", "skipped")))

    @property
    def rate(self) -> float | None:
        """Passes over passes and fails; None when nothing was judged."""
        judged = self.passed + self.failed
        return self.passed / judged if judged else None

    def to_dict(self) -> dict[str, Any]:
        return {"rate": self.rate, "passed": self.passed, "failed": self.failed,
                "errors": self.errors, "skipped": self.skipped}  # fmt: skip


@dataclass(frozen=True)
class Judged:
    """The judges' verdicts on a run's test sets."""

    criteria: list[str]  # in the config's order, the pairwise one last
    # test set -> criterion -> "student" | "teacher" -> its rate
    rates: dict[str, dict[str, dict[str, Rate]]]
    flagged: dict[str, str] = field(default_factory=dict)  # criterion -> its standing
    usage: dict[str, Any] = field(default_factory=dict)  # calls, cached, tokens, cost

    def student_rate(self, test_set: str, criterion: str) -> float | None:
        return self.rates[test_set][criterion][STUDENT].rate

    def rate_of(self, who: str, test_set: str, criterion: str) -> float | None:
        """``who``'s rate (student, teacher, champion); None where it was not judged."""
        found = self.rates.get(test_set, {}).get(criterion, {}).get(who)
        return None if found is None else found.rate

    def meets(self, publish_min: Mapping[str, float]) -> list[str]:
        """What keeps the student from publication under ``publish_min`` (criterion -> lowest
        rate on every test set); empty when it meets them all. An unjudged set fails."""
        short = []
        for criterion, lowest in publish_min.items():
            for name in self.rates:
                rate = self.student_rate(name, criterion) if criterion in self.criteria else None
                if rate is None or rate < lowest:
                    shown = "not judged" if rate is None else f"{rate:.3f}"
                    short.append(f"{criterion} on {name}: {shown} < {lowest}")
        return short

    def to_dict(self) -> dict[str, Any]:
        rates = {
            name: {c: {who: r.to_dict() for who, r in by.items()} for c, by in per.items()}
            for name, per in self.rates.items()
        }
        return {"criteria": self.criteria, "rates": rates, "flagged": self.flagged,
                "usage": self.usage}  # fmt: skip


def judge_evaluation(
    settings: JudgeSettings,
    task: str,
    tests: Mapping[str, list[Example]],
    evaluation: EvalResult,
    *,
    run: Run = judge_batches,
) -> Judged | None:
    """The judges' verdicts on ``evaluation``'s student, on its champion if it has one, and on
    the teacher, per non-empty test set; None when ``task`` has no judges."""
    criteria = settings.criteria(task)
    if not criteria:
        return None
    batches: list[tuple[Criterion, list[JudgeItem]]] = []
    places: list[tuple[str, str, str]] = []  # (test set, criterion, whose answers)
    for name, examples in tests.items():
        if not examples:
            continue
        by_model = evaluation.scores[name]
        answers = {STUDENT: _predictions(by_model[evaluation.student])}
        for champion in evaluation.contenders[:1]:
            answers[CHAMPION] = _predictions(by_model[champion])
        answers[TEACHER] = {e.request_id: e.completion for e in examples}
        answered = [who for who in answers if who != TEACHER]
        for criterion in criteria:
            for who in answered if criterion.mode == "pairwise" else answers:
                batches.append((criterion, _items(examples, answers[who])))
                places.append((name, criterion.name, who))
    result = run(settings, batches)
    rates: dict[str, dict[str, dict[str, Rate]]] = {}
    for (name, judged, who), judgements in zip(places, result.judgements, strict=True):
        rates.setdefault(name, {}).setdefault(judged, {})[who] = Rate.of(judgements)
    return Judged([c.name for c in criteria], rates, flagged(settings, criteria), _usage(result))


def judge_for_publication(
    settings: JudgeSettings,
    task: str,
    tests: Mapping[str, list[Example]],
    evaluation: EvalResult,
    say: Callable[[str], None] = print,
) -> tuple[Judged | None, list[str] | None]:
    """The judges' verdicts (None without judges for ``task``) and what keeps the student from
    publication under their publish rule (None without one), said in one line."""
    judged = judge_evaluation(settings, task, tests, evaluation)
    if judged is None:
        return None, None
    rule = settings.judges.tasks[task].publish_min
    shortfalls = judged.meets(rule) if rule else None
    rates = ", ".join(
        f"{name} {c} {rate:.3f}" for name in judged.rates for c in judged.criteria
        if (rate := judged.student_rate(name, c)) is not None
    )  # fmt: skip
    say(f"[judges] student pass rates: {rates or 'none judged'}; "
        f"{judged.usage.get('calls', 0)} judge calls")  # fmt: skip
    return judged, shortfalls


def _predictions(scores: SetScores) -> dict[str, str]:
    return {r.request_id: r.prediction for r in scores.records}


def _items(examples: Sequence[Example], answers: Mapping[str, str]) -> list[JudgeItem]:
    return [
        JudgeItem(answers[e.request_id], request=e.messages, reference=e.completion,
                  id=e.request_id)
        for e in examples
    ]  # fmt: skip


def flagged(settings: JudgeSettings, criteria: Sequence[Criterion]) -> dict[str, str]:
    """criterion -> its standing, for the criteria their calibration does not vouch for."""

    async def read() -> dict[str, str]:
        async with open_store(settings.store) as store:
            return await flagged_of(store, criteria)

    return asyncio.run(read())


def _usage(result: Batches) -> dict[str, Any]:
    stats = result.stats
    return {"calls": stats.total_calls, "cached": stats.cached, "skipped": stats.skipped,
            "tokens": stats.tokens, "cost": round(stats.cost, 6)}  # fmt: skip
