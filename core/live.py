"""What each gateway replica sees of a task right now, shared with the autopilot by the store.

Every replica rewrites ``monitors/<task>/<replica>.json`` every few seconds for each task
with a student: the live input drift against the serving adapter's reference profile, and,
while a challenger is being proven, both students' agreement with the teacher over the
window. The autopilot reads these views to retrain at once when the traffic drifts
(``live_drift``); a view older than a few report intervals belongs to a replica that stopped
and is ignored.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass

import orjson
import structlog

from core.errors import StoreNotFound
from core.keys import monitor_key, monitors_prefix
from core.store import Store

log = structlog.get_logger("live")


@dataclass(frozen=True, slots=True)
class Scores:
    """One student's shadow answers scored against the teacher's over the window."""

    adapter: str
    scored: int
    agreement: float | None  # mean; None before the first score


@dataclass(frozen=True, slots=True)
class LiveView:
    task: str
    replica: str
    at: float  # Unix seconds
    adapter: str | None  # the serving adapter (the champion)
    mode: str
    drift: float | None  # max PSI/JS over features vs the adapter's reference; None: unmeasured
    champion: Scores | None = None
    challenger: Scores | None = None

    def encode(self) -> bytes:
        return orjson.dumps(asdict(self))

    @classmethod
    def decode(cls, data: bytes) -> LiveView:
        try:
            raw = orjson.loads(data)
            for role in ("champion", "challenger"):
                if raw.get(role) is not None:
                    raw[role] = Scores(**raw[role])
            return cls(**raw)
        except (orjson.JSONDecodeError, TypeError, AttributeError) as exc:
            raise ValueError(f"not a live view: {exc}") from exc


async def write_view(store: Store, view: LiveView) -> None:
    await store.put(monitor_key(view.task, view.replica), view.encode())


async def remove_view(store: Store, task: str, replica: str) -> None:
    await store.delete([monitor_key(task, replica)])


async def read_views(
    store: Store, task: str, max_age_s: float, now: float | None = None
) -> list[LiveView]:
    """The views of ``task`` written within the last ``max_age_s`` seconds."""
    now = time.time() if now is None else now
    keys = [o.key for o in await store.list_objects(monitors_prefix(task))]

    async def read(key: str) -> LiveView | None:
        try:
            return LiveView.decode(await store.get(key))
        except StoreNotFound:
            return None
        except ValueError as exc:
            log.warning("live view unreadable; ignored", key=key, error=str(exc))
            return None

    views = await asyncio.gather(*(read(k) for k in keys))
    return [v for v in views if v is not None and now - v.at <= max_age_s]


def live_drift(views: Iterable[LiveView], adapter: str | None) -> float | None:
    """The largest drift any replica measured against ``adapter``'s reference (None: none)."""
    scores = [v.drift for v in views if v.adapter == adapter and v.drift is not None]
    return max(scores, default=None)
