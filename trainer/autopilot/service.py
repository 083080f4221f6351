"""``protege autopilot``: every task's loop, from new logs to a student proven on live traffic.

One pass over a task, by whichever autopilot holds the task's lease (``core.lease``)::

    resume      a run left under way (by this autopilot, or one that died): wait for its
                outcome, or give it up (``run_abandoned``) if it died with its autopilot
    hand over   a published adapter not yet given to the gateway: give it now
    decide      gather the facts, ``decide`` (pure), write the status
    retrain     start the run (``Runner``), renew the lease while it trains, read its outcome
                from the store, write the timeline, hand the new student to the gateway:
                the first one goes into shadow, every later one becomes the challenger

Everything the loop knows is in the store (status, lease, runs, events), so a restarted or a
second autopilot carries on where the first stopped. Store errors are retried with backoff
while a run is watched; a pass that cannot reach the store or the gateway is logged and tried
again at the next interval.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, Final, TypeVar

import structlog

from core.control import read_holds
from core.errors import StoreError
from core.events import Event, record_soon
from core.ids import new_id
from core.keys import MANIFEST, adapters_prefix, lease_key
from core.lease import Lease
from core.runs import OUTCOMES, RunRecord, read_run
from core.store import Store
from trainer.autopilot.config import AutopilotSettings, TaskRules
from trainer.autopilot.decide import Decision, decide
from trainer.autopilot.facts import gather
from trainer.autopilot.gateway import GatewayAdmin, GatewayUnavailable
from trainer.autopilot.metrics import AutopilotMetrics
from trainer.autopilot.runners import GONE, Runner, RunnerError
from trainer.autopilot.status import Run, Status, read_status, write_status
from trainer.autopilot.timeline import outcome_events, published_by

log = structlog.get_logger("autopilot")

T = TypeVar("T")
_RETRY_MAX_S: Final = 30.0


class Autopilot:
    def __init__(
        self,
        settings: AutopilotSettings,
        store: Store,
        runner: Runner,
        gateway: GatewayAdmin,
        metrics: AutopilotMetrics,
        holder: str | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.config = settings.autopilot
        self.store = store
        self.runner = runner
        self.gateway = gateway
        self.metrics = metrics
        self.holder = holder or new_id()
        self.clock = clock
        self._runs = asyncio.Semaphore(1)  # one training at a time on this autopilot
        for task in self.config.tasks:  # every series from 0, so increase() sees the first run
            for outcome in (*OUTCOMES, "abandoned"):
                metrics.runs.labels(task, outcome)
            metrics.paused.labels(task).set(0)

    # --- the loops ---

    async def run_forever(self, stopping: asyncio.Event) -> None:
        """Every task's loop, until ``stopping`` is set."""
        loops = [
            asyncio.create_task(self._loop(task, rules, stopping), name=f"autopilot-{task}")
            for task, rules in self.config.tasks.items()
        ]
        try:
            await stopping.wait()
        finally:
            for loop in loops:
                loop.cancel()
            await asyncio.gather(*loops, return_exceptions=True)

    async def _loop(self, task: str, rules: TaskRules, stopping: asyncio.Event) -> None:
        while not stopping.is_set():
            await self.step(task, rules)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stopping.wait(), self.config.interval_s)

    async def once(self) -> dict[str, str]:
        """One pass over every task (``--once``); each task's outcome in a word."""
        return {task: await self.step(task, rules) for task, rules in self.config.tasks.items()}

    async def step(self, task: str, rules: TaskRules) -> str:
        """One pass over ``task``; what came of it (``held``, a decision's why, ``error``)."""
        lease = Lease(self.store, lease_key(task), self.holder, self.config.lease_ttl_s, self.clock)
        try:
            prior = await lease.acquire()
        except StoreError as exc:
            log.warning("store unreachable; task skipped this pass", task=task, error=str(exc))
            return "error"
        if prior is None:
            log.info("another autopilot holds the task", task=task)
            return "held"
        try:
            async with self._renewing(lease) as lost:
                return await self._pass(task, rules, prior.run_id, lease, lost)
        except (StoreError, GatewayUnavailable, RunnerError) as exc:
            log.warning("pass not finished; tried again next time", task=task, error=str(exc))
            return "error"
        finally:
            with contextlib.suppress(StoreError):
                await lease.release()

    async def _pass(
        self, task: str, rules: TaskRules, left: str | None, lease: Lease, lost: asyncio.Event
    ) -> str:
        status = await read_status(self.store, task)
        run = status.current or _unknown_run(left)
        if run is not None:
            status = await self._watch(task, status, run, lost)
            if lost.is_set():
                return "lost"
        if status.last_outcome and status.last_outcome.get("handover"):
            status = await self._hand_over(task, status)
        route = await self.gateway.route(task)
        facts = await gather(self.store, task, route, status, self.config.live_max_age_s)
        decision = decide(rules, facts)
        self.metrics.paused.labels(task).set(float(facts.paused))
        self.metrics.decisions.labels(task, "retrain" if decision.retrain else "wait").inc()
        log.info("decided", task=task, why=decision.why, detail=decision.detail)
        status = status.decided(self.clock(), decision, self.holder)
        await write_status(self.store, status)
        if decision.retrain:
            async with self._runs:
                await self._retrain(task, rules, decision, facts.champion, status, lease, lost)
        return decision.why

    # --- a run ---

    async def _retrain(
        self,
        task: str,
        rules: TaskRules,
        decision: Decision,
        champion: str | None,
        status: Status,
        lease: Lease,
        lost: asyncio.Event,
    ) -> None:
        run = Run(new_id(), self.clock(), decision.why, champion, self.runner.name)
        status = status.started(run)
        await write_status(self.store, status)
        await lease.mark(run.run_id)
        await self._event(task, "retrain_decided", decision.detail, run, why=decision.why)
        where = f"as a {self.runner.name} run" + (f" against {champion}" if champion else "")
        await self._event(task, "run_started", f"run {run.run_id} {where}", run)
        self.metrics.last_retrain.labels(task).set(run.started_at)
        version = champion.split("/", 1)[1] if champion else None
        await self.runner.launch(task, run.run_id, version, rules)
        status = await self._watch(task, status, run, lost)
        if status.last_outcome and status.last_outcome.get("handover"):
            await self._hand_over(task, status)

    async def _watch(self, task: str, status: Status, run: Run, lost: asyncio.Event) -> Status:
        """Wait for ``run``'s outcome (or learn it died), then record it: the new status."""
        record: RunRecord | None = None
        while record is None:
            if lost.is_set():
                log.warning("lease lost: the run is left to its new holder", task=task)
                await self.runner.stop(task, run.run_id)
                return status
            record = await self._quietly(read_run(self.store, task, run.run_id))
            if record is not None:
                break
            ended = await self.runner.ended(task, run.run_id)
            if ended is not None:
                record = await self._retry(lambda: read_run(self.store, task, run.run_id))
                record = record or await self._adopt(task, run)
                if record is None and ended == GONE:
                    await self._abandon(task, run)
                    return await self._conclude(task, status, run, None)
                record = record or _failed(task, run, ended)
                break
            await asyncio.sleep(self.config.poll_s)
        return await self._conclude(task, status, run, record)

    async def _conclude(
        self, task: str, status: Status, run: Run, record: RunRecord | None
    ) -> Status:
        outcome = "abandoned" if record is None else record.outcome
        if record is not None:
            for kind, summary, figures in outcome_events(record):
                await self._event(task, kind, summary, run, adapter=record.published, **figures)
        self.metrics.runs.labels(task, outcome).inc()
        adapter = record.published if record is not None else None
        status = status.ended(run, outcome, adapter, self.clock())
        await self._retry(lambda: write_status(self.store, status))
        return status

    async def _abandon(self, task: str, run: Run) -> None:
        """A run that died with its autopilot: no outcome, nothing it half-published kept."""
        removed = await self._retry(lambda: _remove_unfinished(self.store, task))
        summary = f"run {run.run_id} stopped with its autopilot; started over at the next pass"
        await self._event(task, "run_abandoned", summary, run, removed_objects=removed)

    async def _adopt(self, task: str, run: Run) -> RunRecord | None:
        """The outcome of a run that published before it could write its record."""
        adapter = await self._retry(lambda: published_by(self.store, task, run.run_id))
        if adapter is None:
            return None
        return RunRecord(
            task, run.run_id, "published", self.clock(), champion=run.champion,
            published=adapter, started_at=run.started_at,
        )  # fmt: skip

    # --- handing a student to the gateway ---

    async def _hand_over(self, task: str, status: Status) -> Status:
        """Give a published adapter to the gateway: into shadow when the task has none yet,
        else as the challenger. Left for a later pass while the gateway is unreachable or
        the task is paused."""
        assert status.last_outcome is not None
        adapter = str(status.last_outcome["adapter"])
        holds = await read_holds(self.store)
        if task in holds and holds[task].paused:
            log.info("published, not handed over: the task is paused", task=task, adapter=adapter)
            return status
        route = await self.gateway.route(task)
        if route.get("adapter") is None:
            await self.gateway.change(task, {"mode": "shadow", "adapter": adapter})
            kind, summary = "first_rollout", f"{adapter} starts in shadow"
        elif route.get("adapter") == adapter or route.get("challenger") == adapter:
            kind, summary = "", ""  # handed over before a crash
        else:
            await self.gateway.change(task, {"challenger": adapter})
            kind = "challenger_started"
            champion = f"{route['adapter']} ({route.get('mode')})"
            summary = f"{adapter} challenges {champion} on live traffic"
        if kind:
            await self._event(task, kind, summary, None, adapter=adapter)
        status = status.handed_over()
        await self._retry(lambda: write_status(self.store, status))
        return status

    # --- helpers ---

    async def _event(
        self, task: str, kind: str, summary: str, run: Run | None, adapter: str | None = None,
        **figures: Any,
    ) -> None:  # fmt: skip
        event = Event(
            task, kind, summary, "autopilot", self.clock(), figures,
            run.run_id if run else None, adapter,
        )  # fmt: skip
        if not await record_soon(self.store, event):
            log.error("event not stored", task=task, kind=kind, summary=summary)

    async def _retry(self, call: Callable[[], Awaitable[T]]) -> T:
        """``call()`` until the store answers (backoff up to 30 s): a run's outcome is never
        dropped because the store was down for a while."""
        delay = 0.5
        while True:
            try:
                return await call()
            except StoreError as exc:
                log.warning("store unavailable; retrying", error=str(exc), retry_in_s=delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, _RETRY_MAX_S)

    async def _quietly(self, call: Awaitable[T]) -> T | None:
        try:
            return await call
        except StoreError as exc:
            log.warning("store unavailable; still watching the run", error=str(exc))
            return None

    @contextlib.asynccontextmanager
    async def _renewing(self, lease: Lease) -> AsyncIterator[asyncio.Event]:
        """Renew ``lease`` in the background; the event is set if it is lost."""
        lost = asyncio.Event()

        async def renew() -> None:
            while True:
                await asyncio.sleep(lease.ttl_s / 3)
                try:
                    if not await lease.renew():
                        lost.set()
                        return
                except StoreError as exc:
                    log.warning("lease not renewed; retrying", error=str(exc))

        renewer = asyncio.create_task(renew(), name=f"lease-{lease.key}")
        try:
            yield lost
        finally:
            renewer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await renewer


def _unknown_run(run_id: str | None) -> Run | None:
    """A run named only by the lease (its autopilot died before writing the status)."""
    if run_id is None:
        return None
    return Run(run_id, 0.0, "unknown", None, "unknown")


def _failed(task: str, run: Run, reason: str) -> RunRecord:
    return RunRecord(
        task, run.run_id, "failed", time.time(), reason=reason, champion=run.champion,
        started_at=run.started_at,
    )  # fmt: skip


async def _remove_unfinished(store: Store, task: str) -> int:
    """Delete the task's adapter folders without a manifest (a publication cut short); how
    many objects went. Safe under the task's lease: no other run of it is publishing."""
    objects = await store.list_objects(adapters_prefix(task))
    folders: dict[str, list[str]] = {}
    for obj in objects:
        folder = obj.key[len(adapters_prefix(task)) :].split("/", 1)[0]
        folders.setdefault(folder, []).append(obj.key)
    doomed = [
        key
        for keys in folders.values()
        if not any(k.endswith("/" + MANIFEST) for k in keys)
        for key in keys
    ]
    if doomed:
        await store.delete(doomed)
    return len(doomed)
