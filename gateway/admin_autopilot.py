"""The autopilot's admin API: operators pause and resume its retraining, task by task.

    GET /admin/autopilot          every task paused once or known to the autopilot, with
                                  its hold and the autopilot's latest status
    GET /admin/autopilot/{task}   one task's (a task never paused: "paused": false)
    PUT /admin/autopilot/{task}   {"paused": true, "reason": "holiday freeze"} pauses it;
                                  {"paused": false} resumes it

Authorised like the rollouts' admin API (``gateway.admin``: ``Authorization: Bearer <admin
token>``). A hold lives in the store (``core.control``), where every autopilot reads it before
each decision; a change also goes on the task's timeline (``core.events``) as ``paused`` or
``resumed``, recorded in the background so that the answer does not wait on retries. A store
that cannot be read or written is a 503 ``store_error`` and changes nothing.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any, Final

import orjson
import structlog
from fastapi import FastAPI, Request
from starlette.responses import Response

from core.control import Hold, read_holds, set_hold
from core.errors import StoreError, StoreNotFound
from core.events import Event, record_soon
from core.keys import AUTOPILOT, status_key
from core.store import Store
from gateway.admin import TASK_NAME, reply
from gateway.errors import InvalidRequest, ServiceUnavailable
from gateway.intake import json_object

log = structlog.get_logger("gateway")

Spawn = Callable[[Coroutine[Any, Any, None], str], object]

_FIELDS: Final = ("paused", "reason")
_REASON_MAX: Final = 500
# Status documents read at once when listing every task.
_READS: Final = 16


def entry(task: str, hold: Hold | None, status: dict[str, Any] | None) -> dict[str, Any]:
    """A task's hold as the admin API shows it."""
    return {
        "task": task,
        "paused": hold.paused if hold else False,
        "reason": hold.reason if hold else None,
        "at": hold.at if hold else None,
        "status": status,
    }


def change(body: bytes) -> tuple[bool, str | None]:
    """``(paused, reason)`` of a PUT body; ``InvalidRequest`` naming the key otherwise."""
    obj = json_object(body, 'a JSON object like {"paused": true, "reason": "..."}')
    for key in obj:
        if key not in _FIELDS:
            raise InvalidRequest(f"unknown field {key!r}; expected {list(_FIELDS)}", param=key)
    paused = obj.get("paused")
    if not isinstance(paused, bool):
        raise InvalidRequest("'paused' must be true or false", param="paused")
    reason = obj.get("reason")
    if reason is not None and not isinstance(reason, str):
        raise InvalidRequest("'reason' must be a string", param="reason")
    if reason is not None and len(reason) > _REASON_MAX:
        raise InvalidRequest(
            f"'reason' must be at most {_REASON_MAX} characters, got {len(reason)}",
            param="reason",
        )
    return paused, reason or None


def event_of(task: str, hold: Hold) -> Event:
    """The timeline event of an operator's change to ``task``'s hold."""
    kind = "paused" if hold.paused else "resumed"
    because = f": {hold.reason}" if hold.reason else " (no reason given)"
    return Event(
        task,
        kind,
        f"autopilot {kind} by an operator{because}",
        "admin",
        at=hold.at,
        figures={"reason": hold.reason},
    )


def _task_name(task: str) -> str:
    if not TASK_NAME.match(task):
        raise InvalidRequest(f"{task!r} is not a task name", param="task")
    return task


def _store_down(exc: Exception) -> ServiceUnavailable:
    return ServiceUnavailable(f"the store cannot be used: {exc}", code="store_error")


class AutopilotAdmin:
    """The handlers of ``/admin/autopilot``; ``spawn(coro, name)`` runs background work."""

    def __init__(self, authorize: Callable[[Request], None], store: Store, spawn: Spawn) -> None:
        self.authorize = authorize
        self._store = store
        self._spawn = spawn

    async def list(self) -> dict[str, Any]:
        try:
            holds = await read_holds(self._store)
            keys = {o.key for o in await self._store.list_objects(f"{AUTOPILOT}/")}
        except (StoreError, ValueError) as exc:
            raise _store_down(exc) from exc
        tasks = sorted(holds.keys() | set(_status_tasks(keys)))
        gate = asyncio.Semaphore(_READS)

        async def one(task: str) -> dict[str, Any]:
            async with gate:
                return entry(task, holds.get(task), await self._status(task))

        return {"object": "list", "data": list(await asyncio.gather(*(one(t) for t in tasks)))}

    async def get(self, task: str) -> dict[str, Any]:
        _task_name(task)
        try:
            holds = await read_holds(self._store)
        except (StoreError, ValueError) as exc:
            raise _store_down(exc) from exc
        return entry(task, holds.get(task), await self._status(task))

    async def put(self, task: str, body: bytes) -> dict[str, Any]:
        _task_name(task)
        paused, reason = change(body)
        status = await self._status(task)  # read first: a store that is down changes nothing
        try:
            hold = await set_hold(self._store, task, paused, reason)
        except (StoreError, ValueError) as exc:
            log.error("autopilot hold refused: the store cannot take it", task=task, error=str(exc))
            raise _store_down(exc) from exc
        log.info("autopilot hold changed", task=task, paused=paused, reason=reason)
        event = event_of(task, hold)
        self._spawn(self._record(event), f"event:{task}:{event.kind}")
        return entry(task, hold, status)

    async def _record(self, event: Event) -> None:
        if not await record_soon(self._store, event):
            log.error("event lost: the store never took it", task=event.task, summary=event.summary)

    async def _status(self, task: str) -> dict[str, Any] | None:
        """The autopilot's latest status of ``task`` (None: none yet, or unreadable)."""
        try:
            data = await self._store.get(status_key(task))
        except StoreNotFound:
            return None
        except StoreError as exc:
            raise _store_down(exc) from exc
        try:
            status = orjson.loads(data)
        except orjson.JSONDecodeError as exc:
            log.warning("autopilot status unreadable; shown as null", task=task, error=str(exc))
            return None
        if not isinstance(status, dict):
            log.warning("autopilot status is not a JSON object; shown as null", task=task)
            return None
        return status


def _status_tasks(keys: set[str]) -> list[str]:
    """The tasks with a status document among the listed ``keys``."""
    out = []
    for key in keys:
        parts = key.split("/")
        if len(parts) == 3 and TASK_NAME.match(parts[1]) and key == status_key(parts[1]):
            out.append(parts[1])
    return out


def add_autopilot_routes(app: FastAPI, admin: AutopilotAdmin) -> None:
    @app.get("/admin/autopilot")
    async def list_holds(request: Request) -> Response:
        admin.authorize(request)
        return reply(await admin.list())

    @app.get("/admin/autopilot/{task}")
    async def get_hold(request: Request, task: str) -> Response:
        admin.authorize(request)
        return reply(await admin.get(task))

    @app.put("/admin/autopilot/{task}")
    async def put_hold(request: Request, task: str) -> Response:
        admin.authorize(request)
        return reply(await admin.put(task, await request.body()))
