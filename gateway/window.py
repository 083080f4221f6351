"""A sliding time window as a ring of buckets: what the guardrails count and the drift monitor
profiles over the last ``window_s`` seconds.

Time is cut into buckets of ``window_s / buckets`` seconds; what was added counts while its
bucket is one of the ``buckets`` most recent, so the window reaches between
``window_s * (1 - 1 / buckets)`` and ``window_s`` seconds back. Times are passed in (any
monotonic clock); a time earlier than one already seen counts as that one.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Final, Generic, TypeVar

BUCKETS: Final = 10
T = TypeVar("T")


class Buckets(Generic[T]):
    """The ring: ``current`` is the bucket to add to now, ``live`` every bucket still in it."""

    def __init__(self, window_s: float, new: Callable[[], T], buckets: int = BUCKETS) -> None:
        if not (window_s > 0 and math.isfinite(window_s)) or buckets < 1:
            raise ValueError(f"window_s must be > 0 and buckets >= 1, got {window_s}, {buckets}")
        self._width = window_s / buckets
        self._new = new
        self._slots: list[tuple[int, T] | None] = [None] * buckets
        self._latest = -math.inf

    def _bucket(self, now: float) -> int:
        self._latest = max(self._latest, math.floor(now / self._width))
        return int(self._latest)

    def current(self, now: float) -> T:
        k = self._bucket(now)
        i = k % len(self._slots)
        slot = self._slots[i]
        if slot is None or slot[0] != k:
            slot = self._slots[i] = (k, self._new())
        return slot[1]

    def live(self, now: float) -> list[T]:
        oldest = self._bucket(now) - len(self._slots)
        return [slot[1] for slot in self._slots if slot is not None and slot[0] > oldest]
