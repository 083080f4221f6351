"""The autopilot's memory of a task, ``autopilot/<task>/status.json``: its latest decision,
the runs it started, the one under way. Written by whoever holds the task's lease (so by one
autopilot at a time), read by the next pass, by the next holder after a crash, and shown by
``GET /admin/autopilot`` and ``protege events``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from typing import Any

import orjson

from core.errors import StoreNotFound
from core.keys import status_key
from core.store import Store
from trainer.autopilot.decide import DAY_S, Decision, LastRun


@dataclass(frozen=True, slots=True)
class Run:
    """A run under way: enough to find it again after a crash."""

    run_id: str
    started_at: float
    trigger: str
    champion: str | None
    runner: str  # local | kubernetes


@dataclass(frozen=True, slots=True)
class Status:
    task: str
    at: float = 0.0
    why: str | None = None
    detail: str | None = None
    holder: str | None = None
    runs: tuple[float, ...] = ()  # start times of runs in the last day (abandoned ones too)
    last_run: LastRun | None = None  # the last run that ended (not abandoned)
    current: Run | None = None
    last_outcome: dict[str, Any] | None = field(default=None)  # run id, outcome, adapter

    def decided(self, now: float, decision: Decision, holder: str) -> Status:
        return replace(self, at=now, why=decision.why, detail=decision.detail, holder=holder)

    def started(self, run: Run) -> Status:
        recent = tuple(t for t in self.runs if run.started_at - t < DAY_S)
        return replace(self, current=run, runs=(*recent, run.started_at))

    def ended(self, run: Run, outcome: str, adapter: str | None, now: float) -> Status:
        """The run is over: it becomes the last run unless it was abandoned."""
        last = self.last_run
        if outcome != "abandoned":
            last = LastRun(run.started_at, run.trigger, run.champion)
        summary = {
            "run_id": run.run_id, "outcome": outcome, "adapter": adapter, "at": now,
            "handover": outcome == "published",  # still to be given to the gateway
        }  # fmt: skip
        return replace(self, current=None, last_run=last, last_outcome=summary)

    def handed_over(self) -> Status:
        """The published adapter is in the gateway's hands."""
        assert self.last_outcome is not None
        return replace(self, last_outcome={**self.last_outcome, "handover": False})

    def encode(self) -> bytes:
        return orjson.dumps(asdict(self), option=orjson.OPT_INDENT_2)

    @classmethod
    def decode(cls, data: bytes) -> Status:
        try:
            raw = orjson.loads(data)
            last, current = raw.pop("last_run", None), raw.pop("current", None)
            return cls(
                **{**raw, "runs": tuple(raw.get("runs", ()))},
                last_run=None if last is None else LastRun(**last),
                current=None if current is None else Run(**current),
            )
        except (orjson.JSONDecodeError, TypeError, AttributeError) as exc:
            raise ValueError(f"not an autopilot status: {exc}") from exc


async def read_status(store: Store, task: str) -> Status:
    """The task's status; a fresh one if none was written (or it is unreadable)."""
    try:
        return Status.decode(await store.get(status_key(task)))
    except StoreNotFound:
        return Status(task)
    except ValueError:
        return Status(task)


async def write_status(store: Store, status: Status) -> None:
    await store.put(status_key(status.task), status.encode())
