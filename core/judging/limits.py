"""How fast and how much a judge (or a teacher) is asked: a pacer spacing call starts, a run's
budget, and ``paced``, the retry loop both clients share.

The pacer and the budget are pure bookkeeping with the clock passed in (the client sleeps and
calls them), so they are table-tested without a server.
"""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

T = TypeVar("T")


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
    """A run's allowance of judge calls and tokens, or, with ``period_s``, each period's.

    A call is reserved before it is sent (``take``) and its tokens counted when it returns
    (``spend``). Tokens are known only afterwards, so the calls in flight when the token budget
    runs out may overshoot it by at most ``max_concurrency`` calls' tokens. With a period (a
    long-running gateway's judge), the allowance renews every ``period_s`` seconds from the
    first call, so a spent budget pauses judging instead of ending it.
    """

    calls: int
    tokens: int
    calls_used: int = 0
    tokens_used: int = 0
    period_s: float | None = None
    period_start: float | None = None

    def take(self, now: float = 0.0) -> bool:
        """Whether one more call may be sent at ``now`` (and if so, it is counted)."""
        self._renew(now)
        if self.calls_used >= self.calls or self.tokens_used >= self.tokens:
            return False
        self.calls_used += 1
        return True

    def _renew(self, now: float) -> None:
        if self.period_s is None:
            return
        if self.period_start is None or now - self.period_start >= self.period_s:
            self.period_start = now
            self.calls_used = self.tokens_used = 0

    def spend(self, tokens: int) -> None:
        self.tokens_used += tokens

    @property
    def spent(self) -> bool:
        return self.calls_used >= self.calls or self.tokens_used >= self.tokens


def transient(status: int) -> bool:
    """Whether an HTTP status is worth trying again: 429 (slow down) or a server error."""
    return status == 429 or status >= 500


def retry_after_s(value: str | None) -> float | None:
    """A ``retry-after`` header in seconds; None when absent or an HTTP date (then the
    caller's own backoff applies)."""
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None


class Retry(Exception):
    """A call failed in a way worth trying again (no connection, 429, 5xx); ``after`` is the
    server's ``retry-after`` in seconds, if it sent one."""

    def __init__(self, message: str, after: float | None = None) -> None:
        super().__init__(message)
        self.after = after


async def paced(
    call: Callable[[], Awaitable[T]],
    *,
    pacer: Pacer,
    clock: Callable[[], float],
    sleep: Callable[[float], Awaitable[None]],
    retries: int,
    backoff_s: Callable[[int, float | None], float],
    retried: Callable[[], None] = lambda: None,
) -> T:
    """``call()``'s result, each attempt started by ``pacer``; a ``Retry`` is tried again after
    ``backoff_s(attempt, after)`` up to ``retries`` times (``retried`` told of each), then
    raised. Anything else a call raises goes straight through."""
    for attempt in range(retries + 1):
        if attempt:
            retried()
        wait = pacer.reserve(clock())
        if wait > 0:
            await sleep(wait)
        try:
            return await call()
        except Retry as exc:
            if attempt == retries:
                raise
            await sleep(backoff_s(attempt, exc.after))
    raise AssertionError("unreachable")  # pragma: no cover
