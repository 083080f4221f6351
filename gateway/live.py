"""This replica's live view of each task, written to the store for the autopilot (``core.live``).

Every ``interval_s`` seconds the reporter writes ``monitors/<task>/<replica>.json`` for each
task whose rollout has a student (any mode but ``teacher``): the serving adapter, the input
drift against its reference, and the champion's and challenger's agreement with the teacher.
A task that goes back to ``teacher`` has its view removed; on shutdown every view this replica
wrote is removed (best effort: a view left behind ages out of the autopilot's reads).

``view_of`` decides what one task's view is (pure); ``LiveReporter`` gathers the facts and
writes. A store that fails is logged and tried again on the next tick, never raised: the
gateway serves traffic whether or not the autopilot can see it.

The reporter reads rollouts as ``{task: (mode, adapter)}`` rather than the gateway's
``Rollouts``/``Active`` objects, so it depends on nothing of the rollout machinery; the gateway
passes ``lambda: {t: (a.policy.mode, a.policy.adapter) for t, a in rollouts.all().items()}``.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from typing import Final, TypeAlias

import structlog

from core.errors import StoreError
from core.keys import NAME
from core.live import LiveView, Scores, remove_view, write_view
from core.store import Store

log = structlog.get_logger("gateway")

# task -> (mode, adapter) of the rollout in force.
Policies: TypeAlias = Callable[[], Mapping[str, tuple[str, str | None]]]
# task -> the latest drift score (None: unmeasured).
Drift: TypeAlias = Callable[[str], float | None]
# task -> (champion, challenger) scores over the window (None: no such student, or no window).
Duel: TypeAlias = Callable[[str], tuple[Scores | None, Scores | None]]

_REPLICA: Final = re.compile(rf"^{NAME}$")
# Store calls in flight at once (tasks are usually few, but may be many).
_CONCURRENCY: Final = 8


def view_of(
    task: str,
    mode: str,
    adapter: str | None,
    replica: str,
    at: float,
    drift: Drift,
    duel: Duel,
) -> LiveView | None:
    """``task``'s view, or None when the teacher alone serves it (nothing to watch)."""
    if mode == "teacher":
        return None
    champion, challenger = duel(task)
    return LiveView(task, replica, at, adapter, mode, drift(task), champion, challenger)


class LiveReporter:
    """Writes this replica's views every ``interval_s`` seconds; removes them on ``aclose``."""

    def __init__(
        self,
        store: Store,
        policies: Policies,
        drift: Drift,
        duel: Duel,
        replica: str,
        interval_s: float,
        clock: Callable[[], float] = time.time,
        *,
        close_timeout_s: float = 5.0,
    ) -> None:
        if not _REPLICA.match(replica):
            raise ValueError(f"replica id {replica!r} is not a store key component ({NAME})")
        if interval_s <= 0:
            raise ValueError(f"interval_s must be > 0, got {interval_s}")
        self._store = store
        self._policies = policies
        self._drift = drift
        self._duel = duel
        self.replica = replica
        self._interval_s = interval_s
        self._clock = clock
        self._close_timeout_s = close_timeout_s
        self._written: set[str] = set()  # tasks whose view may be in the store
        self._lock = asyncio.Lock()  # one pass at a time; aclose waits for the one under way
        self._gate = asyncio.Semaphore(_CONCURRENCY)
        self._closed = False

    def views(self) -> list[LiveView]:
        """The views this replica has now, one per task with a student."""
        now = self._clock()
        found = (
            view_of(task, mode, adapter, self.replica, now, self._drift, self._duel)
            for task, (mode, adapter) in self._policies().items()
        )
        return [v for v in found if v is not None]

    async def report_once(self) -> None:
        """Write every view, and remove the views of tasks back to the teacher."""
        async with self._lock:
            if self._closed:
                return
            views = self.views()
            gone = self._written - {v.task for v in views}
            self._written |= {v.task for v in views}
            await self._each([write_view(self._store, v) for v in views], "write")
            removed = await self._remove(gone)
            self._written -= removed

    async def run_forever(self) -> None:
        """Report every ``interval_s`` seconds until closed (or cancelled)."""
        while not self._closed:
            try:
                await self.report_once()
            except Exception:  # a bug in a pass must not end the reporting for good
                log.error("live view pass failed", replica=self.replica, exc_info=True)
            await asyncio.sleep(self._interval_s)

    async def aclose(self) -> None:
        """Stop reporting and remove this replica's views, within ``close_timeout_s``.

        A pass under way finishes first, so no view is written after its removal; a
        ``run_forever`` loop then ends by itself."""
        self._closed = True
        try:
            async with asyncio.timeout(self._close_timeout_s):
                async with self._lock:
                    self._written -= await self._remove(set(self._written))
        except TimeoutError:
            log.warning("live views not removed in time", replica=self.replica)
        if self._written:
            log.warning(
                "live views left in the store; they age out",
                replica=self.replica,
                tasks=sorted(self._written),
            )

    async def _remove(self, tasks: Iterable[str]) -> set[str]:
        """Remove the views of ``tasks``; the tasks whose view is now gone."""
        order = sorted(tasks)
        calls = [remove_view(self._store, task, self.replica) for task in order]
        done = await self._each(calls, "remove")
        return {t for t, ok in zip(order, done, strict=True) if ok}

    async def _each(self, calls: Sequence[Awaitable[None]], op: str) -> list[bool]:
        """Await ``calls`` concurrently, a few at a time; whether each succeeded."""

        async def one(call: Awaitable[None]) -> bool:
            async with self._gate:
                try:
                    await call
                    return True
                except StoreError as exc:
                    log.warning("live view store call failed", op=op, error=str(exc))
                    return False

        return list(await asyncio.gather(*(one(c) for c in calls)))
