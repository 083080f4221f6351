"""What a decision needs to know about a task, gathered from where it lives.

    the rollout in force (champion, challenger)    the gateway's admin API
    paused                                         autopilot/control.json
    new usable exchanges since the champion's      the exchange parts, counted from the hour
      dataset was built                            its snapshot was built
    live input drift against the champion          the gateway replicas' live views
    recent runs                                    the task's status
"""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime
from typing import Any

import orjson
import pyarrow.compute as pc

from core.control import read_holds
from core.errors import StoreNotFound
from core.keys import manifest_key
from core.live import live_drift, read_views
from core.read import iter_exchanges
from core.store import Store
from trainer.autopilot.decide import Facts
from trainer.autopilot.status import Status

_COLUMNS = ("request_id", "backend", "status", "complete")


def usable(store_uri: str, task: str, since: datetime | None) -> int:
    """Exchanges a snapshot could train on (the teacher's, complete, HTTP 200) stamped at or
    after ``since``. Blocking: reads four narrow columns of the parts concerned."""
    count = 0
    for batch in iter_exchanges(store_uri, task=task, since=since, columns=_COLUMNS):
        good = pc.and_(
            pc.and_(pc.equal(batch.column("backend"), "teacher"), batch.column("complete")),
            pc.equal(batch.column("status"), 200),
        )
        count += pc.sum(pc.cast(good, "int64")).as_py() or 0
    return count


def snapshot_time(snapshot: str | None) -> datetime | None:
    """When a snapshot was built, from its name (``20261206T010203Z-…``); None if unnamed."""
    if not snapshot:
        return None
    try:
        return datetime.strptime(snapshot.split("-")[0], "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC)
    except ValueError:
        return None


async def manifest(store: Store, adapter: str) -> dict[str, Any] | None:
    """A published adapter's ``protege.json``; None if it is not (or no longer) published."""
    try:
        data: dict[str, Any] = orjson.loads(await store.get(manifest_key(adapter)))
    except StoreNotFound:
        return None
    return data


async def gather(
    store: Store,
    task: str,
    route: dict[str, Any],
    status: Status,
    live_max_age_s: float,
    now: float | None = None,
) -> Facts:
    """The task's facts now (``route``: its rollout as the admin API shows it)."""
    now = time.time() if now is None else now
    champion = route.get("adapter")
    since = None
    if champion:
        published = await manifest(store, champion)
        since = snapshot_time((published or {}).get("dataset_snapshot"))
    holds = await read_holds(store)
    views = await read_views(store, task, live_max_age_s, now)
    new = await asyncio.to_thread(usable, store.uri, task, since)
    return Facts(
        now=now,
        paused=task in holds and holds[task].paused,
        champion=champion,
        challenger=route.get("challenger"),
        new_exchanges=new,
        runs=status.runs,
        last_run=status.last_run,
        drift=live_drift(views, champion),
    )
