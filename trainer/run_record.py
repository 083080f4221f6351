"""The record ``protege train --run-id R`` leaves for the autopilot (``core.runs.RunRecord``),
however the run ends.

The autopilot waits for ``autopilot/<task>/runs/<R>.json`` wherever the run ran, so a run
that ends without one looks, to it, like a run that never ends. Hence: the pipeline notes what
it learns as it goes in ``RunFacts`` (the snapshot and its sizes, the kept run's training,
evaluation and judges, the adapter it published), so a run that fails halfway still says how
far it got; ``record_of`` turns the ending (a return, a rejection, any exception) into the
record (pure); ``leave_record`` writes it, and a store that refuses it is logged, never raised
over the run's own error. Under torchrun rank 0 alone writes it.
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import structlog

from core.runs import Outcome, RunRecord, read_run, write_run
from core.store import open_store
from trainer.errors import BelowBaseline

if TYPE_CHECKING:
    from trainer.evaluate import EvalResult
    from trainer.judged import Judged
    from trainer.loop import TrainResult

log = structlog.get_logger("trainer")


@dataclass
class RunFacts:
    """What a run knows so far; every figure None until the run gets that far."""

    started_at: float = field(default_factory=time.time)  # Unix seconds
    champion: str | None = None  # the adapter <task>/<version> measured against
    snapshot: str | None = None
    data: dict[str, int | None] | None = None
    training: dict[str, Any] | None = None
    evaluation: dict[str, Any] | None = None
    judged: dict[str, Any] | None = None
    rejected: str | None = None  # why the student was refused publication
    published: str | None = None  # the adapter <task>/<version> it became
    report: str | None = None  # the store folder of its report, once uploaded (report_store)

    def note_data(
        self, snapshot: str, splits: Mapping[str, Sequence[Any]], records_in: int | None
    ) -> None:
        """``records_in``: the records read, when this run built the snapshot (else None)."""
        self.snapshot = snapshot
        self.data = {"records_in": records_in, **{k: len(v) for k, v in splits.items()}}

    def note_kept(
        self, training: TrainResult, evaluation: EvalResult, judged: Judged | None
    ) -> None:
        """The kept run's figures, once it is trained, evaluated and judged."""
        self.training = {
            "steps": training.steps,
            "final_loss": training.final_loss,
            "tokens_per_s": training.tokens_per_s,
            "seconds": training.wall_s,
        }
        self.evaluation = evaluation_figures(evaluation)
        self.judged = None if judged is None else judged.to_dict()

    def figures(self) -> dict[str, Any]:
        """The record's figures; ``report`` (the console's link) only once it is uploaded."""
        figures = {"data": self.data, "training": self.training, "evaluation": self.evaluation,
                   "judged": self.judged}  # fmt: skip
        return figures | ({"report": self.report} if self.report else {})


def evaluation_figures(evaluation: EvalResult) -> dict[str, Any]:
    """The headline per non-empty test set of the student, its champion (None without one)
    and the zero-shot base."""
    headline = evaluation.headline

    def of(model: str | None) -> dict[str, float] | None:
        if model is None:
            return None
        return {name: by[model] for name, by in headline.items() if model in by}

    return {
        "student": of(evaluation.student),
        "champion": of(next(iter(evaluation.contenders), None)),
        "base": of(next(iter(evaluation.baselines), None)),
    }


def ending(facts: RunFacts, error: BaseException | None) -> tuple[Outcome, str | None]:
    """The outcome and its reason: a refusal (``BelowBaseline``, raised or noted) is
    ``rejected``, any other exception ``failed``, a run that published ``published``, and one
    told not to publish ``rejected`` (it is not in the store)."""
    if isinstance(error, BelowBaseline):
        return "rejected", str(error)
    if error is not None:
        return "failed", f"{type(error).__name__}: {error}"
    if facts.rejected is not None:
        return "rejected", facts.rejected
    if facts.published is None:
        return "rejected", "not published: the run was told not to publish (--no-publish)"
    return "published", None


def record_of(
    task: str, run_id: str, facts: RunFacts, error: BaseException | None, now: float
) -> RunRecord:
    outcome, reason = ending(facts, error)
    return RunRecord(
        task=task, run_id=run_id, outcome=outcome, finished_at=now, reason=reason,
        snapshot=facts.snapshot, champion=facts.champion, published=facts.published,
        started_at=facts.started_at, figures=facts.figures(),
    )  # fmt: skip


def leave_record(store_uri: str | None, record: RunRecord, why: str = "no store") -> bool:
    """Write ``record``; whether it was written. A failure is logged and said on stderr, not
    raised: the run's own ending (its exit status, its error) must still come out. Without a
    store (``why`` says why) it is only logged."""
    try:
        if store_uri is None:
            raise ValueError(why)
        asyncio.run(_write(store_uri, record))
    except Exception as exc:  # logged and said: the run's own ending comes first
        log.error("run record not written", task=record.task, run_id=record.run_id,
                  outcome=record.outcome, reason=record.reason, error=repr(exc))  # fmt: skip
        print(f"protege: run record {record.run_id} not written: {exc}", file=sys.stderr)
        return False
    return True


def recorded(store_uri: str, task: str, run_id: str) -> bool:
    """Whether the run ``run_id`` of ``task`` has left its record (False if unreadable)."""

    async def read() -> RunRecord | None:
        async with open_store(store_uri) as store:
            return await read_run(store, task, run_id)

    try:
        return asyncio.run(read()) is not None
    except Exception as exc:  # unknown: the caller writes its own record
        log.warning("run record not read", task=task, run_id=run_id, error=repr(exc))
        return False


async def _write(store_uri: str, record: RunRecord) -> None:
    async with open_store(store_uri) as store:
        await write_run(store, record)
