"""How fast and how much a judge is asked: a pacer spacing call starts, and a run's budget.

Both are pure bookkeeping with the clock passed in (the client sleeps and calls them), so they
are table-tested without a server.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


class Pacer:
    """Call starts spaced ``1 / rate`` seconds apart: at most ``rate`` starts in any second
    (plus the one at its edge), however many callers wait."""

    __slots__ = ("_interval", "_next")

    def __init__(self, rate: float) -> None:
        if not (rate > 0 and math.isfinite(rate)):
            raise ValueError(f"rate must be a finite number > 0, got {rate}")
        self._interval = 1.0 / rate
        self._next = -math.inf

    def reserve(self, now: float) -> float:
        """Book the next start slot for a caller at ``now``; the seconds it must wait for it."""
        start = max(now, self._next)
        self._next = start + self._interval
        return start - now


@dataclass
class Budget:
    """A run's allowance of judge calls and tokens.

    A call is reserved before it is sent (``take``) and its tokens counted when it returns
    (``spend``). Tokens are known only afterwards, so the calls in flight when the token budget
    runs out may overshoot it by at most ``max_concurrency`` calls' tokens.
    """

    calls: int
    tokens: int
    calls_used: int = 0
    tokens_used: int = 0

    def take(self) -> bool:
        """Whether one more call may be sent (and if so, it is counted)."""
        if self.calls_used >= self.calls or self.tokens_used >= self.tokens:
            return False
        self.calls_used += 1
        return True

    def spend(self, tokens: int) -> None:
        self.tokens_used += tokens

    @property
    def spent(self) -> bool:
        return self.calls_used >= self.calls or self.tokens_used >= self.tokens
