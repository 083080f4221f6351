"""Operators' hold on the autopilot: which tasks it must leave alone, kept in the store.

``autopilot/control.json`` (``{"version": 1, "tasks": {"tickets": {"paused": true, "reason":
"...", "at": 1795798683.0}}}``) is written by the gateway's admin API (``PUT
/admin/autopilot/{task}``) and read by every autopilot before each decision: a paused task is
not retrained and no challenger of it is started; a run already under way finishes (and its
adapter is published if it earned it) but goes no further. Changes are compare-and-swap, so
two operators pausing two tasks at once both count.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from typing import Final

import orjson

from core.errors import StoreConflict, StoreNotFound
from core.keys import CONTROL
from core.store import Store

VERSION: Final = 1
_ATTEMPTS: Final = 8


@dataclass(frozen=True, slots=True)
class Hold:
    paused: bool
    reason: str | None
    at: float  # Unix seconds of the last change


def decode(data: bytes) -> dict[str, Hold]:
    """The tasks' holds in ``data``; ``ValueError`` if it is not a control document."""
    try:
        raw = orjson.loads(data)
        if raw.get("version") != VERSION:
            raise ValueError(f"not a version {VERSION} control document")
        return {task: Hold(**entry) for task, entry in raw["tasks"].items()}
    except (orjson.JSONDecodeError, KeyError, TypeError, AttributeError) as exc:
        raise ValueError(f"{CONTROL} unreadable: {exc}") from exc


def encode(holds: Mapping[str, Hold]) -> bytes:
    tasks = {task: asdict(hold) for task, hold in sorted(holds.items())}
    return orjson.dumps({"version": VERSION, "tasks": tasks}, option=orjson.OPT_INDENT_2)


async def read_holds(store: Store) -> dict[str, Hold]:
    """Every task's hold (a task not named is not paused). Raises ``StoreError``/``ValueError``."""
    try:
        return decode(await store.get(CONTROL))
    except StoreNotFound:
        return {}


async def set_hold(
    store: Store,
    task: str,
    paused: bool,
    reason: str | None,
    clock: Callable[[], float] = time.time,
) -> Hold:
    """Pause or resume ``task``; the hold now in force. Raises ``StoreError``."""
    for _ in range(_ATTEMPTS):
        try:
            data, tag = await store.get_tagged(CONTROL)
            holds = decode(data)
        except StoreNotFound:
            holds, tag = {}, None
        hold = Hold(paused, reason, clock())
        try:
            await store.put_if(CONTROL, encode({**holds, task: hold}), tag)
            return hold
        except StoreConflict:
            continue  # someone else changed another task in between: read again
    raise StoreConflict(f"{CONTROL}: too many concurrent changes; try again")
