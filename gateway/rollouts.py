"""The live rollout of every task, shared by every gateway replica through the store.

A task's rollout comes from the config file unless an operator (admin API) or the gateway
itself (guardrail step-back, automatic promotion) changed it; changes are kept in one JSON
document in the store, ``rollouts/routes.json``::

    {"version": 1, "revision": 7, "tasks": {"tickets": {"policy": {...}, "source": "admin",
     "updated_at": 1795798683.0, "reason": "...", "challenge_started": 1795790000.0}}}

``challenge_started`` is when the policy's challenger began its challenge: set by the change
that brings a different challenger, kept by every later change that keeps it (a step-back
included), gone with it; null without one (and absent from documents written before).

Every change is read-modify-written with the revision raised by one; every replica reads the
document every ``sync_interval_s`` and applies a newer revision, so all converge within that
interval. Two replicas writing in the same instant: the later write wins (each write carries
the whole document it read, so only the loser's own change is lost, and it is logged). A
guardrail step-back that cannot be written (store down) is applied locally at once and written
as soon as the store answers again: safety does not wait for the store.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final

import orjson
import structlog
from pydantic import ValidationError

from core.errors import StoreError, StoreNotFound
from core.keys import ROLLOUTS
from core.store import Store
from gateway.metrics import Metrics
from gateway.policy import MODES, RolloutPolicy

log = structlog.get_logger("gateway")

KEY: Final = ROLLOUTS
DOC_VERSION: Final = 1


@dataclass(frozen=True, slots=True)
class Active:
    """A task's rollout in force, and where it came from."""

    policy: RolloutPolicy
    source: str  # config | admin | guardrail | promotion | challenge
    updated_at: float  # Unix seconds
    reason: str | None = None
    # When the policy's challenger began its challenge (Unix seconds); None without one.
    challenge_started: float | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "policy": self.policy.model_dump(mode="json"),
            "source": self.source,
            "updated_at": self.updated_at,
            "reason": self.reason,
            "challenge_started": self.challenge_started,
        }

    @classmethod
    def from_json(cls, entry: dict[str, Any]) -> Active:
        policy = RolloutPolicy.model_validate(entry["policy"])
        updated_at = float(entry["updated_at"])
        started = entry.get("challenge_started")
        if policy.challenger is None:
            started = None
        elif started is None:  # written before challenges were timed: since this change
            started = updated_at
        return cls(policy, str(entry["source"]), updated_at, entry.get("reason"),
                   None if started is None else float(started))  # fmt: skip


@dataclass(frozen=True, slots=True)
class Doc:
    """The shared document: changes made at runtime, over the config's rollouts."""

    revision: int
    tasks: Mapping[str, Active]

    def encode(self) -> bytes:
        tasks = {task: active.to_json() for task, active in sorted(self.tasks.items())}
        body = {"version": DOC_VERSION, "revision": self.revision, "tasks": tasks}
        return orjson.dumps(body, option=orjson.OPT_INDENT_2)

    @classmethod
    def decode(cls, data: bytes) -> Doc:
        """The document in ``data``; entries that do not validate are logged and left out."""
        try:
            raw = orjson.loads(data)
        except orjson.JSONDecodeError as exc:
            raise ValueError(f"{KEY} is not JSON: {exc}") from exc
        if not isinstance(raw, dict) or raw.get("version") != DOC_VERSION:
            raise ValueError(f"{KEY} is not a version {DOC_VERSION} rollout document")
        revision, entries = raw.get("revision"), raw.get("tasks")
        if not isinstance(revision, int) or not isinstance(entries, dict):
            raise ValueError(f"{KEY} lacks a revision or its tasks")
        tasks = {}
        for task, entry in entries.items():
            try:
                tasks[task] = Active.from_json(entry)
            except (ValidationError, KeyError, TypeError, ValueError) as exc:
                log.error("rollout entry unusable; task left out", task=task, error=str(exc))
        return cls(revision, tasks)


Listener = Callable[[str, Active | None, Active | None], None]


class Rollouts:
    """Every task's rollout in force: the config's, overridden by the shared document."""

    def __init__(
        self,
        config: Mapping[str, RolloutPolicy],
        store: Store,
        metrics: Metrics,
        labels: Callable[[str], str],
        clock: Callable[[], float] = time.time,
    ) -> None:
        # A challenger set in the config file is timed from this replica's start.
        self._config = {
            task: Active(p, "config", 0.0, None, None if p.challenger is None else clock())
            for task, p in config.items()
        }
        self._store = store
        self._metrics = metrics
        self._labels = labels
        self._clock = clock
        self._doc = Doc(0, {})
        self._active: dict[str, Active] = dict(self._config)
        self._unsaved: dict[str, Active | None] = {}
        self._lock = asyncio.Lock()
        self._listeners: list[Listener] = []

    def policy(self, task: str) -> RolloutPolicy | None:
        """The task's policy in force (None: teacher mode, nothing configured)."""
        active = self._active.get(task)
        return None if active is None else active.policy

    def get(self, task: str) -> Active | None:
        return self._active.get(task)

    def all(self) -> dict[str, Active]:
        return dict(self._active)

    def students(self) -> dict[str, tuple[str, str | None]]:
        """Every task's ``(mode, adapter)`` in force (``gateway.live`` reports on them)."""
        return {task: (a.policy.mode, a.policy.adapter) for task, a in self._active.items()}

    @property
    def revision(self) -> int:
        return self._doc.revision

    def now(self) -> float:
        """The clock changes are stamped with (``updated_at``, ``challenge_started``)."""
        return self._clock()

    def subscribe(self, listener: Listener) -> None:
        """Call ``listener(task, before, after)`` on every change (and once per task now)."""
        self._listeners.append(listener)
        for task, active in self._active.items():
            listener(task, None, active)

    async def load(self) -> None:
        """Apply the shared document, if the store has one (start-up; then ``sync``)."""
        try:
            await self.sync()
        except (StoreError, ValueError) as exc:
            log.error("rollouts unreadable; the config's apply for now", error=str(exc))
        for task, active in self._active.items():
            self._export(task, active)

    async def sync(self) -> None:
        """Write what could not be written before, then apply a newer shared document."""
        async with self._lock:
            if self._unsaved:
                await self._write(dict(self._unsaved))
                self._unsaved.clear()
            doc = await self._read()
            if doc.revision > self._doc.revision:
                self._apply(doc, "store")

    async def sync_forever(self, interval_s: float) -> None:
        while True:
            await asyncio.sleep(interval_s)
            try:
                await self.sync()
            except (StoreError, ValueError) as exc:
                log.warning("rollouts not synced", error=str(exc))

    async def change(
        self, task: str, policy: RolloutPolicy | None, source: str, reason: str | None = None
    ) -> None:
        """Set (None: reset to the config's) the task's rollout: written, then applied here.

        Raises ``StoreError`` when the store cannot take it; nothing changes then.
        """
        entry = None if policy is None else self._entry(task, policy, source, reason)
        async with self._lock:
            await self._write({task: entry})

    async def force(self, task: str, policy: RolloutPolicy, source: str, reason: str) -> None:
        """Set the task's rollout here at once; write it when the store allows."""
        entry = self._entry(task, policy, source, reason)
        try:
            await asyncio.wait_for(self.change(task, policy, source, reason), timeout=5.0)
        except (StoreError, TimeoutError) as exc:
            log.error("rollout change not yet shared; applied here", task=task, error=str(exc))
            self._unsaved[task] = entry
            tasks = {**self._doc.tasks, task: entry}
            self._apply(Doc(self._doc.revision, tasks), source)

    def _entry(self, task: str, policy: RolloutPolicy, source: str, reason: str | None) -> Active:
        """The task's new rollout, its challenge timed from the change that brought it."""
        now = self._clock()
        current = self._active.get(task)
        started = None
        if policy.challenger is not None:
            kept = current is not None and current.policy.challenger == policy.challenger
            started = current.challenge_started if kept and current else None
            started = now if started is None else started
        return Active(policy, source, now, reason, started)

    async def _read(self) -> Doc:
        try:
            return Doc.decode(await self._store.get(KEY))
        except StoreNotFound:
            return Doc(0, {})

    async def _write(self, changes: Mapping[str, Active | None]) -> None:
        current = await self._read()
        tasks = dict(current.tasks)
        for task, entry in changes.items():
            if entry is None:
                tasks.pop(task, None)
            else:
                tasks[task] = entry
        doc = Doc(max(current.revision, self._doc.revision) + 1, tasks)
        await self._store.put(KEY, doc.encode())
        source = next((e.source for e in changes.values() if e is not None), "admin")
        self._apply(doc, source)

    def _apply(self, doc: Doc, source: str) -> None:
        before = self._active
        after = {**self._config, **doc.tasks}
        self._doc, self._active = doc, after
        for task in sorted(before.keys() | after.keys()):
            old, new = before.get(task), after.get(task)
            if old == new:
                continue
            label = self._labels(task)
            self._metrics.rollout_changes.labels(label, source).inc()
            challenger = new.policy.challenger if new else None
            fresh = challenger is not None and (old is None or old.policy.challenger != challenger)
            if fresh and source != "store":  # counted where the change was made
                self._metrics.challenges.labels(label, "started").inc()
            log.info(
                "rollout changed",
                task=task,
                source=new.source if new else source,
                mode=new.policy.mode if new else "teacher",
                percent=new.policy.percent if new else 0.0,
                adapter=new.policy.adapter if new else None,
                challenger=challenger,
                reason=new.reason if new else None,
                revision=doc.revision,
            )
            self._export(task, new)
            for listener in self._listeners:
                listener(task, old, new)

    def _export(self, task: str, active: Active | None) -> None:
        label = self._labels(task)
        policy = active.policy if active else None
        self._metrics.rollout_percent.labels(label).set(policy.student_share if policy else 0.0)
        for mode in MODES:
            current = (policy.mode if policy else "teacher") == mode
            self._metrics.rollout_mode.labels(label, mode).set(float(current))
        self._metrics.prepare(label, policy.mode if policy else "teacher")
