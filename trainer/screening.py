"""Teacher answers screened by the task's criteria at dataset build.

The playbook's teacher-quality rule (4-5): the student can be no better than the answers it
imitates, so an answer the task's own judge says fails is not learnt. When the config file the
trainer reads gives the task criteria (``judges.tasks.<task>.criteria``, ``core.judging``), a
build judges every teacher answer still kept after the cheap filters (duplicates, the group cap;
``trainer.curate.curate_splits`` calls the screen there) with every criterion:

    pass            on every criterion: kept
    fail            on any criterion: dropped (``criteria_failed``), counted per failing
                    criterion in the card's ``dropped_by_criterion``
    error, skipped  (the judge gave no verdict, or the run's budget was spent): kept, and
                    counted in the card's ``criteria`` apart from the passes

What is judged: the training examples and the new test pool (the frozen test sets never, they
are not re-read), and only the teacher's answers (a human correction is gold). The judge sees
the request's messages and the answer; a criterion that ``uses: reference`` needs a known good
answer a build does not have, so it is not applied (logged, and named in the card). Without
criteria nothing is judged and no judge is called. A criterion its calibration does not vouch
for (``protege judge calibrate``) still screens, and is flagged in the card and the log.
Verdicts are cached in the store by the judge (``core.judging.cache``): rebuilding over the same
answers asks nothing again.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

import structlog

from core.judging import Batches, Criterion, JudgeItem, Judgement, JudgeSettings, judge_batches
from trainer.examples import Example
from trainer.judged import flagged

log = structlog.get_logger("trainer")

CRITERIA_FAILED: Final = "criteria_failed"  # the drop reason of an answer a criterion failed
NEEDS_REFERENCE: Final = "uses the reference answer, which a build does not have"
_VERDICTS: Final = ("pass", "fail", "error", "skipped")
Run = Callable[[JudgeSettings, Sequence[tuple[Criterion, Sequence[JudgeItem]]]], Batches]


@dataclass(frozen=True)
class Screening:
    """What the criteria said of a build's teacher answers (the card's fields)."""

    dropped_by_criterion: dict[str, int] = field(default_factory=dict)
    criteria: dict[str, dict[str, int]] = field(default_factory=dict)  # name -> verdict -> n
    not_applied: dict[str, str] = field(default_factory=dict)  # name -> why
    usage: dict[str, Any] = field(default_factory=dict)
    # Criteria their calibration does not vouch for: name -> uncalibrated | below | stale.
    flagged: dict[str, str] = field(default_factory=dict)


def applicable(criteria: Sequence[Criterion]) -> tuple[list[Criterion], dict[str, str]]:
    """The criteria a build can apply, and the others with why not (one needing a reference)."""
    usable = [c for c in criteria if "reference" not in c.uses]
    skipped = {c.name: NEEDS_REFERENCE for c in criteria if "reference" in c.uses}
    return usable, skipped


def decide(
    examples: Sequence[Example],
    criteria: Sequence[Criterion],
    judgements: Sequence[Sequence[Judgement]],
) -> tuple[list[Example], dict[str, int], dict[str, dict[str, int]]]:
    """``(kept, dropped_by_criterion, verdict counts)``: ``judgements[c][i]`` is criterion
    ``c``'s on example ``i``; an example any criterion fails is dropped, all others kept."""
    verdicts = {c.name: Counter(j.verdict for j in js) for c, js in zip(criteria, judgements,
                                                                         strict=True)}  # fmt: skip
    failing = [
        [c.name for c, js in zip(criteria, judgements, strict=True) if js[i].verdict == "fail"]
        for i in range(len(examples))
    ]
    kept = [e for e, failed in zip(examples, failing, strict=True) if not failed]
    dropped = Counter(name for failed in failing for name in failed)
    counts = {name: {v: per[v] for v in _VERDICTS} for name, per in verdicts.items()}
    return kept, {c.name: dropped[c.name] for c in criteria}, counts


@dataclass
class Screen:
    """The screen ``curate_splits`` applies: judges the teacher's answers among the examples it
    is given and returns the kept ones with the drops; ``outcome`` holds what it found."""

    settings: JudgeSettings
    task: str
    run: Run = judge_batches
    outcome: Screening = field(default_factory=Screening)

    def __call__(self, examples: list[Example]) -> tuple[list[Example], Counter[str]]:
        criteria, not_applied = applicable(self.settings.criteria(self.task))
        criteria = [c for c in criteria if c.mode == "single"]
        for name, why in not_applied.items():
            log.warning("criterion not applied at dataset build", task=self.task,
                        criterion=name, why=why)  # fmt: skip
        judged = [e for e in examples if e.source == "teacher"]
        if not criteria or not judged:
            self.outcome = Screening(not_applied=not_applied)
            return examples, Counter()
        items = [JudgeItem(e.completion, request=e.messages, id=e.request_id) for e in judged]
        result = self.run(self.settings, [(c, items) for c in criteria])
        kept, dropped, counts = decide(judged, criteria, result.judgements)
        keep = {e.request_id for e in kept}
        out = [e for e in examples if e.source != "teacher" or e.request_id in keep]
        flags = flagged(self.settings, criteria)
        for name, state in flags.items():
            log.warning("a criterion screening the data is flagged", task=self.task,
                        criterion=name, standing=state)  # fmt: skip
        usage = _usage(len(judged), result)
        self.outcome = Screening(dropped, counts, not_applied, usage, flags)
        log.info("teacher answers screened", task=self.task, judged=len(judged),
                 dropped=len(examples) - len(out), **self.outcome.usage)  # fmt: skip
        return out, Counter({CRITERIA_FAILED: len(examples) - len(out)})


def screen_of(settings: JudgeSettings | None, task: str, run: Run = judge_batches) -> Screen | None:
    """The screen of ``task``, or None when the config gives it no criteria (nothing judged)."""
    if settings is None:
        return None
    judging = settings.judges.tasks.get(task)
    if judging is None or not judging.criteria:
        return None
    return Screen(settings, task, run)


def _usage(judged: int, result: Batches) -> dict[str, Any]:
    stats = result.stats
    return {"examples": judged, "calls": stats.total_calls, "cached": stats.cached,
            "skipped": stats.skipped, "tokens": stats.tokens,
            "cost": round(stats.cost, 6)}  # fmt: skip
