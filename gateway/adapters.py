"""What the gateway reads of a published adapter: its manifest, and the reference profile of the
inputs it was trained on (the baseline of the task's drift monitor and hybrid input bounds)."""

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
    """Each task's reference profile, following its rollout's adapter."""

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
        self._adapters: dict[str, str | None] = {}

    def profile(self, task: str) -> Profile | None:
        return self._profiles.get(task)

    def changed(self, task: str, before: Active | None, after: Active | None) -> None:
        """A rollout listener: load the new adapter's reference when the adapter changes."""
        adapter = after.policy.adapter if after else None
        window_s = after.policy.window_s if after else 300.0
        if task in self._adapters and self._adapters[task] == adapter:
            return
        self._adapters[task] = adapter
        self._profiles.pop(task, None)
        self._drift.set_reference(task, self._labels(task), None, window_s)
        if adapter is not None:
            self._background.spawn(self._load(task, adapter, window_s), f"reference-{task}")

    async def _load(self, task: str, adapter: str, window_s: float) -> None:
        try:
            profile = reference_of(await manifest(self._store, adapter))
        except (StoreError, ValueError) as exc:
            log.warning("no reference profile: drift not monitored", task=task, error=str(exc))
            return
        if self._adapters.get(task) != adapter:
            return  # the adapter changed again meanwhile
        if profile is None:
            log.warning("the adapter's manifest has no input profile", task=task, adapter=adapter)
            return
        self._profiles[task] = profile
        self._drift.set_reference(task, self._labels(task), profile, window_s)
        log.info("drift reference loaded", task=task, adapter=adapter, prompts=profile.n)
