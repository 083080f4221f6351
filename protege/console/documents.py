"""The store's small JSON documents the console shows, read per task and bounded: snapshot
cards, run records, adapter manifests, run reports, the autopilot's status, live views and the
timeline. (Exchanges, feedback and shadow pairs are the data layer's: ``queries``.)

Every read lists one task's folder at most, never the whole store, and reads at most
``LIMIT`` documents of a kind, newest first. An unreadable document is left out and logged.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any, Final, TypeVar

import orjson
import structlog

from core import keys
from core.errors import StoreNotFound
from core.events import Event, timeline
from core.live import LiveView, live_drift, read_views
from core.runs import RunRecord
from core.store import Store
from trainer.autopilot.status import Status, read_status

log = structlog.get_logger("console")

LIMIT: Final = 50
_NAME = re.compile(f"^{keys.NAME}$")
_PLOT = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*\.png$")
T = TypeVar("T")


def is_name(value: str) -> bool:
    """Whether ``value`` is one key component (a task, a snapshot, a run, a version)."""
    return bool(_NAME.match(value)) and len(value) <= 200


def is_plot(value: str) -> bool:
    return bool(_PLOT.match(value)) and len(value) <= 200


async def read_json(store: Store, key: str) -> Any | None:
    """The JSON document at ``key``; None when it is missing or not JSON (logged)."""
    try:
        return orjson.loads(await store.get(key))
    except StoreNotFound:
        return None
    except orjson.JSONDecodeError as exc:
        log.warning("document unreadable; left out", key=key, error=str(exc))
        return None


async def _gather(items: Iterable[T], read: Callable[[T], Awaitable[Any]]) -> list[Any]:
    gate = asyncio.Semaphore(16)

    async def one(item: T) -> Any:
        async with gate:
            return await read(item)

    return [r for r in await asyncio.gather(*(one(i) for i in items)) if r is not None]


# --- datasets ---


async def snapshots(store: Store, task: str) -> list[dict[str, Any]]:
    """The task's snapshot cards, newest first (at most ``LIMIT``)."""
    listed = await store.list_objects(keys.dataset_prefix(task))
    names = sorted(keys.snapshot_names(task, (o.key for o in listed)), reverse=True)[:LIMIT]
    return await _gather(names, lambda n: card(store, task, n))


async def card(store: Store, task: str, snapshot: str) -> dict[str, Any] | None:
    doc = await read_json(store, keys.snapshot_prefix(task, snapshot) + keys.CARD)
    return doc if isinstance(doc, dict) else None


# --- runs, adapters, reports ---


async def run_records(store: Store, task: str) -> list[RunRecord]:
    """The task's autopilot run records, newest first (at most ``LIMIT``)."""
    listed = await store.list_objects(keys.runs_prefix(task))
    found = sorted((o.key for o in listed if o.key.endswith(".json")), reverse=True)

    async def read(key: str) -> RunRecord | None:
        try:
            return RunRecord.decode(await store.get(key))
        except (StoreNotFound, ValueError):
            return None

    records = await _gather(found[: LIMIT * 2], read)
    records.sort(key=lambda r: r.finished_at, reverse=True)
    return records[:LIMIT]


async def manifests(store: Store, task: str) -> list[dict[str, Any]]:
    """The task's published adapters' manifests, newest first (at most ``LIMIT``)."""
    listed = await store.list_objects(keys.adapters_prefix(task))
    ids = sorted(keys.adapter_ids(o.key for o in listed), reverse=True)[:LIMIT]
    docs = await _gather(ids, lambda i: read_json(store, keys.manifest_key(i)))
    return [d for d in docs if isinstance(d, dict)]


async def reported_runs(store: Store, task: str) -> set[str]:
    """The runs of ``task`` whose report is complete (``report.md`` written last)."""
    listed = await store.list_objects(keys.reports_prefix(task))
    prefix = keys.reports_prefix(task)
    return {
        key[len(prefix) :].split("/")[0]
        for key in (o.key for o in listed)
        if key.endswith("/report.md") and key[len(prefix) :].count("/") == 1
    }


@dataclass(frozen=True)
class Report:
    markdown: str
    plots: list[str]
    evaluation: Any | None
    mistakes: Any | None
    run: Any | None


async def report(store: Store, task: str, run: str) -> Report | None:
    """One run's report; None when it has none (``report.md`` not written)."""
    prefix = keys.report_prefix(task, run)
    try:
        text = (await store.get(prefix + "report.md")).decode("utf-8", "replace")
    except StoreNotFound:
        return None
    listed = await store.list_objects(prefix)
    plots = sorted(n for n in (o.key[len(prefix) :] for o in listed) if is_plot(n))
    evaluation, mistakes, record = await asyncio.gather(
        *(read_json(store, prefix + n) for n in ("evaluation.json", "mistakes.json", "run.json"))
    )
    return Report(text, plots, evaluation, mistakes, record)


async def plot(store: Store, task: str, run: str, name: str) -> bytes | None:
    try:
        return await store.get(keys.report_prefix(task, run) + name)
    except StoreNotFound:
        return None


# --- the loop: autopilot status, live views, timeline ---


@dataclass(frozen=True)
class Loop:
    """What the overview shows of a task's closed loop."""

    status: Status
    last_run: dict[str, Any] | None  # run_id, outcome, adapter, at
    drift: float | None
    views: list[LiveView]


async def loop(store: Store, task: str, adapter: str | None, max_age_s: float) -> Loop:
    """The autopilot's status, the last run (the status's, else the newest run record) and
    the live drift against the serving ``adapter``."""
    status, views = await asyncio.gather(
        read_status(store, task), read_views(store, task, max_age_s)
    )
    last = status.last_outcome
    if last is None:
        newest = next(iter(await run_records(store, task)), None)
        if newest is not None:
            last = {"run_id": newest.run_id, "outcome": newest.outcome,
                    "adapter": newest.published, "at": newest.finished_at}  # fmt: skip
    serving = adapter or next((v.adapter for v in views if v.adapter), None)
    return Loop(status, last, live_drift(views, serving), views)


async def events(store: Store, task: str, limit: int = 200) -> list[Event]:
    """The task's timeline, newest first (the last ``limit`` events)."""
    return list(reversed(await timeline(store, task, limit)))
