"""A retraining run's outcome, as the trainer leaves it in the store for the autopilot.

``protege train --run-id R`` writes ``autopilot/<task>/runs/<R>.json`` when the run ends,
whatever the ending: ``published`` (the adapter is in the store: its manifest was written
first), ``rejected`` (trained and evaluated, but it lost to the zero-shot base or to the
champion, or missed a judge's rule) or ``failed`` (an error; ``reason`` says which). The
autopilot waits for this object, wherever the run ran (a local process, a Kubernetes Job).

``figures`` holds what the timeline shows::

    {"data": {"records_in": 1200, "train": 900, "test-indist": 100, ...},
     "training": {"steps": 120, "final_loss": 0.41, "tokens_per_s": 5300.0, "seconds": 84.2},
     "evaluation": {"student": {"test-indist": 0.93, ...}, "champion": {...} | null,
                    "base": {...}},
     "judged": {...} | null}
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Final, Literal

import orjson

from core.errors import StoreNotFound
from core.keys import run_key
from core.store import Store

Outcome = Literal["published", "rejected", "failed"]
OUTCOMES: Final[tuple[Outcome, ...]] = ("published", "rejected", "failed")


@dataclass(frozen=True, slots=True)
class RunRecord:
    task: str
    run_id: str
    outcome: Outcome
    finished_at: float  # Unix seconds
    reason: str | None = None  # rejected or failed: why, for a person
    snapshot: str | None = None  # the dataset snapshot trained on
    champion: str | None = None  # the adapter <task>/<version> it was measured against
    published: str | None = None  # the adapter <task>/<version> it became
    started_at: float | None = None
    figures: dict[str, Any] = field(default_factory=dict)

    def encode(self) -> bytes:
        return orjson.dumps(asdict(self), option=orjson.OPT_INDENT_2)

    @classmethod
    def decode(cls, data: bytes) -> RunRecord:
        """The record in ``data``; ``ValueError`` saying what is wrong with it otherwise."""
        try:
            raw = orjson.loads(data)
            if raw["outcome"] not in OUTCOMES:
                raise ValueError(f"unknown outcome {raw['outcome']!r}")
            return cls(**raw)
        except (orjson.JSONDecodeError, KeyError, TypeError) as exc:
            raise ValueError(f"not a run record: {exc}") from exc


async def write_run(store: Store, record: RunRecord) -> None:
    await store.put(run_key(record.task, record.run_id), record.encode())


async def read_run(store: Store, task: str, run_id: str) -> RunRecord | None:
    """The run's outcome; None while the run has not ended (or never began)."""
    try:
        return RunRecord.decode(await store.get(run_key(task, run_id)))
    except StoreNotFound:
        return None
