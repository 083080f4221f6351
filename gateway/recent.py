"""The request ids this gateway answered lately, and their tasks: feedback's first look-up.

A ring of the last ``capacity`` ids beside a dict from id to task. Adding an id overwrites the
oldest slot of the ring and forgets that id in the dict: O(1) per request, one dict entry per
id held (the id strings are the requests' own, the task strings shared), no per-entry node.
Ids are unique (ULIDs), so an id is never added twice. Used from the event loop only.
"""

from __future__ import annotations


class RecentRequests:
    """At most ``capacity`` request ids mapped to their tasks, the oldest forgotten first."""

    def __init__(self, capacity: int) -> None:
        self._ring: list[str | None] = [None] * capacity
        self._tasks: dict[str, str] = {}
        self._next = 0

    def __len__(self) -> int:
        return len(self._tasks)

    def add(self, request_id: str, task: str) -> None:
        """Remember ``request_id`` as one of ``task``'s (a no-op at capacity 0)."""
        ring = self._ring
        if not ring:
            return
        slot = self._next
        old = ring[slot]
        if old is not None:
            del self._tasks[old]
        ring[slot] = request_id
        self._tasks[request_id] = task
        self._next = slot + 1 if slot + 1 < len(ring) else 0

    def task(self, request_id: str) -> str | None:
        """The task of ``request_id``, if it is among the ids held."""
        return self._tasks.get(request_id)
