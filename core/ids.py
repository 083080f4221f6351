"""Record ids: ULIDs, unique across processes and machines, sorting by creation time.

Every exchange record, dataset snapshot and adapter version is named by one.
"""

from __future__ import annotations

import os
import random
import time
from typing import Final

_CROCKFORD: Final = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
# Two characters per 10 bits: 13 lookups encode the 130 bits (two of them zero) of an id.
_PAIRS: Final = [_CROCKFORD[i >> 5] + _CROCKFORD[i & 31] for i in range(1024)]
_SHIFTS: Final = tuple(range(120, -1, -10))
# The ids' random bits: a generator of their own, seeded from the OS at start-up and in every
# forked child (two processes never share a sequence), and untouched by random.seed(). Not
# os.urandom per id: that system call lets go of the GIL, and the event loop then waits for it.
_RANDOM: Final = random.Random()
os.register_at_fork(after_in_child=_RANDOM.seed)


def new_id(now_ms: int | None = None) -> str:
    """A 26-character ULID: 48 bits of milliseconds then 80 random bits, Crockford base32.

    Ids sort by creation time (to the millisecond) as plain strings, and never collide in
    practice across processes or machines.
    """
    ms = time.time_ns() // 1_000_000 if now_ms is None else now_ms
    value = (ms << 80) | _RANDOM.getrandbits(80)
    return "".join([_PAIRS[(value >> shift) & 1023] for shift in _SHIFTS])


def id_time_ms(request_id: str) -> int:
    """The creation time, in milliseconds since the epoch, encoded in an id from ``new_id``."""
    value = 0
    for ch in request_id[:10]:
        value = value * 32 + _CROCKFORD.index(ch)
    return value
