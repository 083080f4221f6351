"""A task's timeline: what the closed loop did and why, with the figures behind it.

Every step the autopilot takes (retrain decided, snapshot built, trained, evaluated, published
or rejected, challenger started) and every rollout change the gateway makes on its own (a
challenger promoted or retired, a guardrail step-back) is one small JSON object in the store,
``events/<task>/<event-id>.json``. An id is the event's time in microseconds (strictly rising
within a process, even for events stamped alike) and a random suffix, so listing the folder
reads the timeline in order; nothing is ever rewritten, so writers on many machines never
conflict.
``protege events --task T`` prints it (``render``).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any, Final

import orjson
import structlog

from core.errors import StoreError, StoreNotFound
from core.ids import new_id
from core.keys import event_key, events_prefix
from core.store import Store

log = structlog.get_logger("events")

# The kinds of event, in the order a retraining usually produces them.
KINDS: Final = (
    "retrain_decided",  # the autopilot decided to retrain (why: new data, drift)
    "run_started",  # a training run began (where: local process, Kubernetes Job)
    "snapshot_built",  # the run's dataset snapshot (counts)
    "trained",  # training figures
    "evaluated",  # the new student vs the champion and the zero-shot base
    "published",  # the new adapter is in the store
    "rejected",  # trained, but not better: not published
    "run_failed",  # the run ended in an error
    "run_abandoned",  # its autopilot died; the run was given up and will be started over
    "first_rollout",  # the task's first adapter starts in shadow
    "climbed",  # the student moved one auto_promote step up (shadow -> canary, ...)
    "challenger_started",  # a published adapter is proven beside the champion on live traffic
    "promoted",  # the challenger took the champion's place
    "retired",  # the challenger did not prove itself in time
    "stepped_back",  # a guardrail took the student's traffic back
    "paused",  # an operator paused the autopilot for the task
    "resumed",
)
# Reads of one timeline at a time (a timeline is many small objects).
_READS: Final = 16


@dataclass(frozen=True, slots=True)
class Event:
    task: str
    kind: str
    summary: str  # one line for a person, figures included
    source: str  # autopilot | gateway | trainer | admin
    at: float = field(default_factory=time.time)  # Unix seconds
    figures: dict[str, Any] = field(default_factory=dict)
    run_id: str | None = None
    adapter: str | None = None  # the adapter <task>/<version> the event is about

    def encode(self) -> bytes:
        return orjson.dumps(asdict(self))

    @classmethod
    def decode(cls, data: bytes) -> Event:
        try:
            return cls(**orjson.loads(data))
        except (orjson.JSONDecodeError, TypeError) as exc:
            raise ValueError(f"not an event: {exc}") from exc


async def record(store: Store, event: Event) -> str:
    """Add ``event`` to its task's timeline; its key. Raises ``StoreError``."""
    if event.kind not in KINDS:
        raise ValueError(f"unknown event kind {event.kind!r}")
    key = event_key(event.task, _event_id(event.at))
    await store.put(key, event.encode())
    log.info("event", task=event.task, kind=event.kind, summary=event.summary)
    return key


_last_us = 0


def _event_id(at: float) -> str:
    """``<microseconds, 17 digits>-<random>``: sorts by time, and by order of writing within
    this process."""
    global _last_us
    us = max(int(at * 1_000_000), _last_us + 1)
    _last_us = us
    return f"{us:017d}-{new_id()[-8:].lower()}"


async def record_soon(store: Store, event: Event, attempts: int = 5) -> bool:
    """``record``, retried with backoff while the store is down; False when it never took it
    (the event is still in the log)."""
    for attempt in range(attempts):
        try:
            await record(store, event)
            return True
        except StoreError as exc:
            log.warning("event not stored yet", kind=event.kind, error=str(exc))
            await asyncio.sleep(min(2.0**attempt, 30.0))
    return False


async def timeline(store: Store, task: str, limit: int | None = None) -> list[Event]:
    """``task``'s events, oldest first; only the last ``limit`` when given."""
    keys = sorted(o.key for o in await store.list_objects(events_prefix(task)))
    if limit is not None:
        keys = keys[-limit:] if limit > 0 else []
    gate = asyncio.Semaphore(_READS)

    async def read(key: str) -> Event | None:
        async with gate:
            try:
                return Event.decode(await store.get(key))
            except StoreNotFound:
                return None
            except ValueError as exc:
                log.error("event unreadable; left out", key=key, error=str(exc))
                return None

    return [e for e in await asyncio.gather(*(read(k) for k in keys)) if e is not None]


def render(events: Iterable[Event]) -> list[str]:
    """One line per event: UTC time, kind, source, summary."""
    lines = []
    for e in events:
        moment = datetime.fromtimestamp(e.at, UTC).strftime("%Y-%m-%d %H:%M:%S")
        lines.append(f"{moment}  {e.kind:<18}  {e.source:<9}  {e.summary}")
    return lines
