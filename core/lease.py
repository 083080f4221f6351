"""A lease in the store: one holder at a time for a piece of work, handed on if its holder dies.

The lease is one small JSON object (``{"holder", "run_id", "acquired_at", "expires_at"}``)
changed only by compare-and-swap (``Store.put_if``), so of two contenders exactly one wins.
Its holder renews it well before it expires; a holder that dies simply stops renewing, and
once ``expires_at`` passes anyone may take it over, finding in ``run_id`` the work the dead
holder had under way. Clocks of different machines are assumed to agree within a small
fraction of the time to live.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace

import orjson

from core.errors import StoreConflict, StoreNotFound
from core.store import Store


@dataclass(frozen=True, slots=True)
class Held:
    """The lease's content."""

    holder: str
    acquired_at: float  # Unix seconds
    expires_at: float
    run_id: str | None = None  # the work under way, for whoever takes over

    def encode(self) -> bytes:
        return orjson.dumps(asdict(self))

    @classmethod
    def decode(cls, data: bytes) -> Held:
        try:
            return cls(**orjson.loads(data))
        except (orjson.JSONDecodeError, TypeError) as exc:
            raise ValueError(f"not a lease: {exc}") from exc


def takeable(current: Held | None, holder: str, now: float) -> bool:
    """Whether ``holder`` may take the lease now: free, expired, or already its own."""
    return current is None or current.holder == holder or current.expires_at <= now


class Lease:
    """One holder's handle on the lease at ``key``."""

    def __init__(
        self,
        store: Store,
        key: str,
        holder: str,
        ttl_s: float,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._store = store
        self.key = key
        self.holder = holder
        self.ttl_s = ttl_s
        self._clock = clock
        self._tag: str | None = None
        self.held: Held | None = None

    async def peek(self) -> tuple[Held | None, str | None]:
        """The lease as stored (None: nobody has held it) and its version tag."""
        try:
            data, tag = await self._store.get_tagged(self.key)
        except StoreNotFound:
            return None, None
        try:
            return Held.decode(data), tag
        except ValueError:
            return None, tag  # unreadable: treated as free, replaced by the next writer

    async def acquire(self) -> Held | None:
        """Take the lease if it is free or expired; what the previous holder left in it (a
        ``Held`` whose ``holder`` may be someone else's, whose ``run_id`` tells of work left
        unfinished), or None when someone else holds it. Raises ``StoreError``."""
        current, tag = await self.peek()
        now = self._clock()
        if not takeable(current, self.holder, now):
            return None
        run_id = current.run_id if current is not None else None
        mine = Held(self.holder, now, now + self.ttl_s, run_id)
        try:
            self._tag = await self._store.put_if(self.key, mine.encode(), tag)
        except StoreConflict:
            return None
        self.held = mine
        return current or mine

    async def renew(self) -> bool:
        """Push the expiry out by the time to live; False when the lease was lost (someone
        took it over after it expired)."""
        return self.held is not None and await self._rewrite(self.held.run_id)

    async def mark(self, run_id: str | None) -> bool:
        """Renew, naming the work now under way (None: none); False when the lease was lost."""
        return self.held is not None and await self._rewrite(run_id)

    async def _rewrite(self, run_id: str | None) -> bool:
        assert self.held is not None
        mine = replace(self.held, expires_at=self._clock() + self.ttl_s, run_id=run_id)
        try:
            self._tag = await self._store.put_if(self.key, mine.encode(), self._tag)
        except StoreConflict:
            self.held, self._tag = None, None
            return False
        self.held = mine
        return True

    async def release(self) -> None:
        """Let the lease go at once (expired now, no work under way), if still held."""
        if self.held is None:
            return
        done = replace(self.held, expires_at=self._clock(), run_id=None)
        with contextlib.suppress(StoreConflict):  # taken over already: nothing to release
            await self._store.put_if(self.key, done.encode(), self._tag)
        self.held, self._tag = None, None
