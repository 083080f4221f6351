"""The champion: the adapter serving a task now, measured beside the new student on the same
frozen test sets, and the rule the student must meet to be published in its place.

``protege train --champion VERSION`` (what the autopilot passes) attaches the champion to the
base before training touches it (rank 0; a sharded run, to the whole base rank 0 loads to
evaluate on afterwards), keeps its greedy answers to every test example (``measure``) and takes
the bare base back with peft's ``unload``: the champion's LoRA layers come out and the base's
own weights were never changed, so the student trains on exactly the base it would have
without a champion. The evaluation shows the champion as ``champion <version>`` beside the
student and the zero-shot base; it is a *contender*, not a baseline
(``trainer.evaluate``): its rule is its own.

The rule (``shortfalls``, pure): on every non-empty test set the student's headline is at least
the champion's plus ``margin`` (default 0: a tie passes, because frozen test sets saturate and
the live challenge on real traffic decides which is better), and where the task has judges its
pass rate of every criterion is at least the champion's. A student that misses it is refused
(``trainer.errors.BelowChampion``).
"""

from __future__ import annotations

import asyncio
import re
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from core.errors import ConfigError
from core.keys import ADAPTER_ID, NAME
from trainer.config import TrainConfig
from trainer.evaluate import EvalResult
from trainer.examples import Example
from trainer.judged import CHAMPION, STUDENT, Judged
from trainer.predictors import Predictor, cached, greedy_predictor

# Rounding slack: 0.85 is at least 0.80 + 0.05, though not in floating point.
SLACK: Final = 1e-9
# test set -> criterion -> (the student's pass rate, the champion's); None: not judged
JudgedRates = Mapping[str, Mapping[str, tuple[float | None, float | None]]]


@dataclass(frozen=True)
class Champion:
    """The published adapter a run is measured against, and the lead the student needs."""

    store: str
    task: str
    version: str
    margin: float = 0.0  # the student needs the champion's headline plus this, per test set

    @property
    def adapter_id(self) -> str:
        return f"{self.task}/{self.version}"

    @property
    def name(self) -> str:
        """Its name among the evaluation's predictors (and so in the report's tables)."""
        return f"champion {self.version}"


def champion_version(task: str, text: str) -> str:
    """The version ``--champion`` names, given as ``VERSION`` or ``<task>/VERSION``; a
    ``ConfigError`` for another task's adapter or anything that is not a version."""
    found = ADAPTER_ID.match(text)
    if found is not None:
        if found[1] != task:
            raise ConfigError(
                f"config: --champion {text}: an adapter of task {found[1]!r}, not {task!r}"
            )
        return found[2]
    if re.fullmatch(NAME, text) is None:
        raise ConfigError(f"config: --champion {text!r}: not a version nor <task>/<version>")
    return text


def measure(
    champion: Champion | None,
    base: Any,
    tokenizer: Any,
    tests: dict[str, list[Example]],
    max_new: int,
    cfg: TrainConfig,
) -> tuple[dict[str, Predictor], Any]:
    """``{champion's name: its greedy answers, computed now}`` (empty without a champion) and
    the bare base: the champion is downloaded, attached to ``base``, asked every test example
    and unloaded again, whatever happens while it answers."""
    if champion is None:
        return {}, base
    from trainer.model import load_adapter
    from trainer.publish import download_adapter

    with tempfile.TemporaryDirectory(prefix="protege-champion-") as tmp:
        folder = asyncio.run(
            download_adapter(champion.store, champion.task, champion.version, Path(tmp))
        )
        attached = load_adapter(base, folder)
    try:
        answers = cached(greedy_predictor(attached, tokenizer, max_new, cfg), tests)
    finally:
        bare = attached.unload()
    return {champion.name: answers}, bare


def shortfalls(
    student: Mapping[str, float],
    champion: Mapping[str, float],
    margin: float = 0.0,
    judged: JudgedRates | None = None,
) -> list[str]:
    """What keeps the student from replacing the champion; empty when nothing does.

    ``student`` and ``champion`` map each non-empty test set to its headline (a set missing
    from either is skipped: an empty set compares nothing). ``judged`` gives the pass rates; a
    criterion the champion was not judged on sets no bar, one the student was not judged on
    where the champion was is a shortfall."""
    short = []
    for name in (n for n in student if n in champion):
        mine, theirs = student[name], champion[name]
        if mine < theirs + margin - SLACK:
            lead = f" + margin {margin:g}" if margin else ""
            short.append(f"{name}: student {mine:.3f} < champion {theirs:.3f}{lead}")
    for name, per in (judged or {}).items():
        for criterion, (mine_rate, their_rate) in per.items():
            if their_rate is not None and (mine_rate is None or mine_rate < their_rate - SLACK):
                shown = "not judged" if mine_rate is None else f"{mine_rate:.3f}"
                short.append(
                    f"{criterion} on {name}: student pass rate {shown} < champion "
                    f"{their_rate:.3f}"
                )
    return short


def judged_rates(judged: Judged | None) -> JudgedRates | None:
    """The student's and the champion's pass rates per test set and criterion."""
    if judged is None:
        return None
    return {
        name: {c: (judged.rate_of(STUDENT, name, c), judged.rate_of(CHAMPION, name, c))
               for c in judged.criteria}
        for name in judged.rates
    }  # fmt: skip


def standing(
    champion: Champion | None, evaluation: EvalResult, judged: Judged | None
) -> dict[str, Any]:
    """What ``run.json`` (so ``protege.json``) says of the champion: ``champion`` (its adapter
    id), ``beats_champion``, ``champion_metrics`` (its headline per non-empty test set),
    ``champion_margin`` and ``champion_shortfalls`` (the rule's verdict); all None without
    one."""
    if champion is None:
        return dict.fromkeys(
            ("champion", "beats_champion", "champion_metrics", "champion_margin",
             "champion_shortfalls")
        )  # fmt: skip
    theirs = {name: by[champion.name] for name, by in evaluation.headline.items()}
    short = shortfalls(
        evaluation.greedy_headline, theirs, champion.margin, judged_rates(judged)
    )
    return {
        "champion": champion.adapter_id,
        "beats_champion": not short,
        "champion_metrics": theirs,
        "champion_margin": champion.margin,
        "champion_shortfalls": short,
    }
