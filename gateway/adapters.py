"""What the gateway reads of a published adapter: its manifest, the reference profile of the
inputs it was trained on (the baseline of the task's drift monitor and hybrid input bounds), and
the decoding policy and learned output schema its student calls are made with."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import orjson
import structlog

from core.errors import StoreError
from core.keys import manifest_key
from core.profile import Profile
from core.store import Store
from gateway.background import Background
from gateway.decoding import Published, published_of
from gateway.drift import DriftMonitor, reference_of
from gateway.rollouts import Active

log = structlog.get_logger("gateway")


async def manifest(store: Store, adapter: str) -> dict[str, Any]:
    """The ``protege.json`` of ``adapter`` (``<task>/<version>``); ``StoreNotFound`` when the
    adapter is not published (its manifest is written last)."""
    key = manifest_key(adapter)
    data = await store.get(key)
    try:
        obj = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise ValueError(f"{key} is not JSON: {exc}") from exc
    if not isinstance(obj, dict):
        raise ValueError(f"{key} is not a JSON object")
    return obj


class References:
    """What the gateway keeps of each task's rollout adapter, following it as it changes: the
    reference profile of its training inputs (the drift baseline), and its published decoding
    policy and learned output schema (``gateway.decoding``).

    Both are read from the adapter's manifest in the background when the adapter changes;
    until then there is no drift reference and no published policy (``published`` says so in
    the log, once per adapter). A load finishing after the adapter changed again is dropped.
    """

    def __init__(
        self,
        store: Store,
        drift: DriftMonitor,
        background: Background,
        labels: Callable[[str], str],
    ) -> None:
        self._store = store
        self._drift = drift
        self._background = background
        self._labels = labels
        self._profiles: dict[str, Profile] = {}
        self._published: dict[str, Published] = {}
        self._adapters: dict[str, str | None] = {}
        self._unloaded_logged: set[str] = set()

    def profile(self, task: str) -> Profile | None:
        return self._profiles.get(task)

    def published(self, task: str, adapter: str) -> Published | None:
        """``adapter``'s decoding policy and learned schema, once loaded for ``task``'s
        rollout; None until then (logged once per adapter)."""
        if self._adapters.get(task) == adapter and task in self._published:
            return self._published[task]
        if adapter not in self._unloaded_logged:
            self._unloaded_logged.add(adapter)
            log.info("the adapter's decoding policy is not loaded: none applied yet",
                     task=task, adapter=adapter)  # fmt: skip
        return None

    def changed(self, task: str, before: Active | None, after: Active | None) -> None:
        """A rollout listener: load the new adapter's manifest when the adapter changes."""
        adapter = after.policy.adapter if after else None
        window_s = after.policy.window_s if after else 300.0
        if task in self._adapters and self._adapters[task] == adapter:
            return
        self._adapters[task] = adapter
        self._profiles.pop(task, None)
        self._published.pop(task, None)
        self._drift.set_reference(task, self._labels(task), None, window_s)
        if adapter is not None:
            self._background.spawn(self._load(task, adapter, window_s), f"reference-{task}")

    async def _load(self, task: str, adapter: str, window_s: float) -> None:
        try:
            found = await manifest(self._store, adapter)
        except (StoreError, ValueError) as exc:
            log.warning("the adapter's manifest is unreadable: no drift reference, no "
                        "decoding policy", task=task, adapter=adapter, error=str(exc))  # fmt: skip
            return
        if self._adapters.get(task) != adapter:
            return  # the adapter changed again meanwhile
        self._publish(task, adapter, found)
        self._reference(task, adapter, found, window_s)

    def _publish(self, task: str, adapter: str, found: dict[str, Any]) -> None:
        published, problems = published_of(found)
        for problem in problems:
            log.warning("ignored in the adapter's manifest", task=task, adapter=adapter,
                        problem=problem)  # fmt: skip
        self._published[task] = published
        self._unloaded_logged.discard(adapter)
        log.info("decoding policy loaded", task=task, adapter=adapter,
                 output_schema=published.output_schema is not None)  # fmt: skip

    def _reference(self, task: str, adapter: str, found: dict[str, Any], window_s: float) -> None:
        try:
            profile = reference_of(found)
        except ValueError as exc:
            log.warning("no reference profile: drift not monitored", task=task, error=str(exc))
            return
        if profile is None:
            log.warning("the adapter's manifest has no input profile", task=task, adapter=adapter)
            return
        self._profiles[task] = profile
        self._drift.set_reference(task, self._labels(task), profile, window_s)
        log.info("drift reference loaded", task=task, adapter=adapter, prompts=profile.n)
