"""A token bucket: at most ``rate`` events a second on average, in bursts of at most one
second's worth (never fewer than one event).

What the gateway samples on the request path — shadow calls, prompts for the drift monitor —
is capped with one, so that its cost per second stays put however much traffic comes. Times
are passed in (any monotonic clock, in seconds); a time earlier than one already seen adds no
tokens.
"""

from __future__ import annotations

import math


class TokenBucket:
    __slots__ = ("_at", "_capacity", "_tokens", "rate")

    def __init__(self, rate: float, now: float) -> None:
        if not (rate > 0 and math.isfinite(rate)):
            raise ValueError(f"rate must be a finite number > 0, got {rate}")
        self.rate = rate
        self._capacity = max(1.0, rate)
        self._tokens = self._capacity  # a new bucket starts full
        self._at = now

    def take(self, now: float) -> bool:
        """Whether an event may happen at ``now`` (and if so, it is counted)."""
        if now > self._at:
            self._tokens = min(self._capacity, self._tokens + (now - self._at) * self.rate)
            self._at = now
        if self._tokens < 1.0:
            return False
        self._tokens -= 1.0
        return True
