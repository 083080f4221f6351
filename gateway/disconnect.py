"""A client that goes away before its answer is ready: the student's call for it is cancelled.

Once a request's body is read, ASGI's ``receive()`` yields ``{"type": "http.disconnect"}``
when the client closes (``Incoming.receive``). A student call made for a waiting client — the
plain answers of canary and student modes, hybrid's checked answers — races it: the client
leaving first cancels the call, which closes the connection to LoRAX, which then stops
generating; the exchange is recorded incomplete (``error="client disconnected"``) and nobody
is answered, the teacher included. A stream's relay already stops with its client
(``gateway.relay``). Teacher calls are not raced (their answers are training data, and teacher
mode keeps the shortest path), nor are shadow calls (background work, not the client's).

One watcher task per raced call; the call itself runs in the request's task, which the
watcher cancels, as ``asyncio.timeout`` does.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import Any, Final, TypeVar

from starlette.types import Receive

from gateway.intake import Incoming

# The record's status for an answer nobody waited for (nginx's "client closed request").
GONE_STATUS: Final = 499
GONE_ERROR: Final = "client disconnected"

_T = TypeVar("_T")


class ClientGone(Exception):
    """The client went away first; the call made for it was cancelled."""


async def unless_gone(inc: Incoming, call: Awaitable[_T]) -> _T:
    """``call``'s result, or ``ClientGone`` once ``inc``'s client went away first (``call``
    cancelled)."""
    task = asyncio.current_task()
    if inc.receive is None or task is None:
        return await call
    watcher = asyncio.create_task(_cancel_on_disconnect(inc.receive, task))
    try:
        return await call
    except asyncio.CancelledError:
        if _fired(watcher) and task.uncancel() == 0:
            raise ClientGone(GONE_ERROR) from None
        raise  # cancelled from elsewhere too (shutdown): that wins
    finally:
        watcher.cancel()


async def _cancel_on_disconnect(receive: Receive, task: asyncio.Task[Any]) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass
    task.cancel()


def _fired(watcher: asyncio.Task[None]) -> bool:
    """Whether ``watcher`` saw the disconnect (and so cancelled the call)."""
    return watcher.done() and not watcher.cancelled() and watcher.exception() is None
