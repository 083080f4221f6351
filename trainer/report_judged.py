"""The report's section on what the task's LLM judges said (``trainer.judged``): per test set,
each criterion's pass rate for the student, for the champion (when the run has one) and for
the teacher, the pairwise rate, what could
not be judged, the criteria their calibration does not vouch for, and the publish rule."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from trainer.judged import CHAMPION, STUDENT, TEACHER, Judged, Rate
from trainer.markdown import NONE, code, table

_STANDING = {
    "uncalibrated": "not calibrated (protege judge calibrate)",
    "below": "calibrated below its min_agreement",
    "stale": "calibrated for an older version of the criterion",
}


def judged_section(judged: Judged, shortfalls: Sequence[str] | None = None) -> str:
    """``shortfalls``: what keeps the student from publication under the judges' publish rule
    (None: the task has no such rule)."""
    parts = ["## Judges", _intro(judged)]
    for name, per in judged.rates.items():
        champion = any(CHAMPION in by for by in per.values())
        whom = [STUDENT, CHAMPION, TEACHER] if champion else [STUDENT, TEACHER]
        rows = [
            [code(criterion) + (" (flagged)" if criterion in judged.flagged else ""),
             *(_rate(by.get(who)) for who in whom), _unjudged(by.values())]
            for criterion, by in per.items()
        ]  # fmt: skip
        parts += [f"### {name}", table(["criterion", *whom, "not judged"], rows)]
    parts += [_flags(judged), _rule(shortfalls)]
    return "\n\n".join(p for p in parts if p)


def _intro(judged: Judged) -> str:
    usage = judged.usage
    return (
        "Pass rates: passes over passes and fails (a judge error or a skip never passes). The "
        "teacher's rate is the ceiling the student's is read against; `as-good-as-teacher` "
        "compares the student's answer with the teacher's. "
        f"Judge calls: {usage.get('calls', 0)} ({usage.get('cached', 0)} answered from the "
        f"cache, {usage.get('skipped', 0)} skipped), {usage.get('tokens', 0):,} tokens, "
        f"estimated cost {usage.get('cost', 0.0):.4f}."
    )


def _rate(rate: Rate | None) -> str:
    if rate is None:
        return NONE
    value = rate.rate
    judged = rate.passed + rate.failed
    return NONE if value is None else f"{value:.3f} ({rate.passed}/{judged})"


def _unjudged(rates: Iterable[Rate]) -> str:
    found = list(rates)
    errors = sum(r.errors for r in found)
    skipped = sum(r.skipped for r in found)
    return f"{errors} errors, {skipped} skipped" if errors or skipped else "0"


def _flags(judged: Judged) -> str:
    if not judged.flagged:
        return ""
    lines = [f"- `{name}`: {_STANDING.get(state, state)}" for name, state in judged.flagged.items()]
    return "Flagged criteria (read their rates with care):\n" + "\n".join(lines)


def _rule(shortfalls: Sequence[str] | None) -> str:
    if shortfalls is None:
        return ""
    if not shortfalls:
        return "Publish rule (`judges.tasks.<task>.publish_min`): met on every test set."
    return "Publish rule (`judges.tasks.<task>.publish_min`): **not met**:\n" + "\n".join(
        f"- {s}" for s in shortfalls
    )
