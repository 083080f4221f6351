"""The collector classes the gateway's metrics are made of, and the bound on the task label.

``Counter``, ``Gauge`` and ``Histogram`` are prometheus_client's, with ``labels`` answered from a
dict once a child exists; ``TaskLabels`` admits the configured tasks plus a limited number of
others seen in traffic, then folds the rest into ``other``.

In multiprocess mode (``gateway.metrics``) a child keeps writing its value to the file
prometheus_client gave it, so the cached child is the same one either way. Removing a labelled
series cannot delete its value from that file: a removed gauge is set to 0 first, so no stale
value outlives it in the aggregate.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from typing import Any, Literal, Self, TypeAlias

import prometheus_client
from prometheus_client import CollectorRegistry, values
from prometheus_client.metrics import MetricWrapperBase
from prometheus_client.multiprocess import MultiProcessCollector

OTHER_TASK = "other"

MultiprocessMode: TypeAlias = Literal["liveall", "livesum", "livemax", "livemostrecent"]


class _CachedLabels(MetricWrapperBase):
    """``labels(...)`` answered from a dict once the child exists.

    prometheus_client validates the values and takes a lock on every ``labels`` call (~1.5 µs);
    the gateway makes about ten such calls per shadow call and three per request. Label values
    are bounded sets here, and so is this cache.
    """

    _children: dict[tuple[object, ...], Any]

    def labels(self, *labelvalues: object, **labelkwargs: object) -> Self:
        if labelkwargs:
            return super().labels(*labelvalues, **labelkwargs)
        children = self.__dict__.setdefault("_children", {})
        child: Self | None = children.get(labelvalues)
        if child is None:
            child = children[labelvalues] = super().labels(*labelvalues)
        return child

    def remove(self, *labelvalues: Any) -> None:
        self.__dict__.get("_children", {}).pop(labelvalues, None)
        super().remove(*labelvalues)

    def clear(self) -> None:
        self.__dict__.get("_children", {}).clear()
        super().clear()


class Counter(_CachedLabels, prometheus_client.Counter):
    pass


class Gauge(_CachedLabels, prometheus_client.Gauge):
    def remove(self, *labelvalues: Any) -> None:
        if values.ValueClass is not values.MutexValue:  # multiprocess mode: see above
            self.labels(*labelvalues).set(0)
        super().remove(*labelvalues)


class Histogram(_CachedLabels, prometheus_client.Histogram):
    pass


class TaskLabels:
    """Bounds the cardinality of the ``task`` label.

    Configured tasks always keep their name; up to ``max_dynamic`` further names are admitted
    as they are first seen, and every name after that is reported as ``other``.
    """

    def __init__(self, configured: Iterable[str], max_dynamic: int) -> None:
        self._known = set(configured)
        self._room = max_dynamic

    def __call__(self, task: str) -> str:
        if task in self._known:
            return task
        if self._room <= 0:
            return OTHER_TASK
        self._room -= 1
        self._known.add(task)
        return task


def multiprocess_dir() -> str | None:
    """The directory of this process's metric values when it runs in multiprocess mode
    (a worker of ``protege gateway --workers N``), else None."""
    if values.ValueClass is values.MutexValue:  # chosen once, when prometheus_client loaded
        return None
    return os.environ.get("PROMETHEUS_MULTIPROC_DIR")


def exposition(registry: CollectorRegistry) -> CollectorRegistry:
    """The registry ``/metrics`` shows: ``registry``, or in multiprocess mode one that
    aggregates every worker's values from their files."""
    directory = multiprocess_dir()
    if directory is None:
        return registry
    aggregate = CollectorRegistry()
    MultiProcessCollector(aggregate, directory)  # type: ignore[no-untyped-call]
    return aggregate
