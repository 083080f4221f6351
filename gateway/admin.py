"""The admin API: operators read and change each task's rollout at runtime.

    GET    /admin/routes          every task's rollout in force, with its source
    GET    /admin/routes/{task}   one task's
    PUT    /admin/routes/{task}   change it: the fields given replace the current ones,
                                  e.g. {"mode": "canary", "percent": 10, "adapter": "tickets/v3"}
                                  or {"challenger": "tickets/v4"} (``gateway.challenge``)
    DELETE /admin/routes/{task}   back to the config file's rollout

Every call needs ``Authorization: Bearer <rollouts.admin_token>``; without a configured token
the admin API does not exist (404). A change is validated (the policy, a student to serve it,
the adapter and any challenger published in the store), written to the store (so every replica
converges on it, and it outlives a restart), then applied; errors come back in the OpenAI error
shape. A task's entry shows ``challenge_started``: when its challenger began (Unix seconds;
null without one).
"""

from __future__ import annotations

import hmac
import re
from typing import Any, Final

import orjson
import structlog
from fastapi import FastAPI, Request
from pydantic import ValidationError
from starlette.responses import Response

from core.errors import StoreError, StoreNotFound
from core.settings import problem
from core.store import Store
from gateway.adapters import manifest
from gateway.auth import bearer
from gateway.errors import InvalidRequest, NotFound, ServiceUnavailable, Unauthorized
from gateway.intake import json_object
from gateway.policy import RolloutPolicy
from gateway.rollouts import Active, Rollouts

log = structlog.get_logger("gateway")

# A task name as the admin APIs accept it in a path.
TASK_NAME: Final = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")


def entry(task: str, active: Active | None, aliases: list[str]) -> dict[str, Any]:
    """A task's rollout as the admin API shows it."""
    policy = active.policy if active else RolloutPolicy()
    return {
        "task": task,
        "aliases": aliases,
        **policy.model_dump(mode="json"),
        "source": active.source if active else "default",
        "updated_at": active.updated_at if active else None,
        "reason": active.reason if active else None,
        "challenge_started": active.challenge_started if active else None,
    }


def merged(current: RolloutPolicy | None, body: bytes) -> RolloutPolicy:
    """``body``'s fields over the ``current`` policy, validated; ``InvalidRequest`` naming the
    key otherwise."""
    change = json_object(body, "a JSON object of rollout fields")
    base = (current or RolloutPolicy()).model_dump()
    try:
        return RolloutPolicy.model_validate({**base, **change})
    except ValidationError as exc:
        key, text = problem(exc)
        raise InvalidRequest(f"{key} {text}", param=key) from exc


class Admin:
    """The admin API's handlers over the live rollouts."""

    def __init__(
        self,
        token: str,
        rollouts: Rollouts,
        store: Store,
        student_configured: bool,
        aliases: dict[str, list[str]],
    ) -> None:
        self._digest = token.encode()
        self._rollouts = rollouts
        self._store = store
        self._student = student_configured
        self._aliases = aliases

    def authorize(self, request: Request) -> None:
        token = bearer(request.headers.get("authorization")) or ""
        if not hmac.compare_digest(token.encode(), self._digest):
            raise Unauthorized("the admin API needs Authorization: Bearer <admin token>")

    def _entry(self, task: str) -> dict[str, Any]:
        return entry(task, self._rollouts.get(task), self._aliases.get(task, []))

    def list(self) -> dict[str, Any]:
        tasks = sorted(self._rollouts.all().keys() | self._aliases.keys())
        data = [self._entry(task) for task in tasks]
        return {"object": "list", "revision": self._rollouts.revision, "data": data}

    def get(self, task: str) -> dict[str, Any]:
        if self._rollouts.get(task) is None and task not in self._aliases:
            raise NotFound(f"no rollout for task {task!r}", param="task")
        return self._entry(task)

    async def put(self, task: str, body: bytes) -> dict[str, Any]:
        if not TASK_NAME.match(task):
            raise InvalidRequest(f"{task!r} is not a task name", param="task")
        policy = merged(self._rollouts.policy(task), body)
        if policy.mode != "teacher" and not self._student:
            raise InvalidRequest(
                f"mode {policy.mode!r} needs a student; the gateway has no student.base_url",
                param="mode",
            )
        if policy.adapter is not None:
            await self._published(policy.adapter, "adapter")
        if policy.challenger is not None:
            await self._published(policy.challenger, "challenger")
        await self._write(task, policy)
        return self._entry(task)

    async def delete(self, task: str) -> dict[str, Any]:
        await self._write(task, None)
        return self._entry(task)

    async def _published(self, adapter: str, key: str) -> None:
        """``InvalidRequest`` naming ``key`` unless ``adapter`` is published."""
        try:
            await manifest(self._store, adapter)
        except StoreNotFound as exc:
            raise InvalidRequest(
                f"{key} {adapter!r} is not published in the store", param=key
            ) from exc
        except StoreError as exc:
            message = f"the store cannot be read: {exc}"
            raise ServiceUnavailable(message, code="store_error") from exc
        except ValueError as exc:
            raise InvalidRequest(f"{key} {adapter!r}: {exc}", param=key) from exc

    async def _write(self, task: str, policy: RolloutPolicy | None) -> None:
        try:
            await self._rollouts.change(task, policy, "admin", "set through the admin API")
        except StoreError as exc:
            log.error("rollout change refused: the store cannot take it", task=task, error=str(exc))
            raise ServiceUnavailable(
                f"the change could not be stored, so it is not applied: {exc}", code="store_error"
            ) from exc


def reply(obj: dict[str, Any]) -> Response:
    """An admin API answer."""
    return Response(orjson.dumps(obj), media_type="application/json")


def add_admin_routes(app: FastAPI, admin: Admin) -> None:
    @app.get("/admin/routes")
    async def list_routes(request: Request) -> Response:
        admin.authorize(request)
        return reply(admin.list())

    @app.get("/admin/routes/{task}")
    async def get_route(request: Request, task: str) -> Response:
        admin.authorize(request)
        return reply(admin.get(task))

    @app.put("/admin/routes/{task}")
    async def put_route(request: Request, task: str) -> Response:
        admin.authorize(request)
        return reply(await admin.put(task, await request.body()))

    @app.delete("/admin/routes/{task}")
    async def delete_route(request: Request, task: str) -> Response:
        admin.authorize(request)
        return reply(await admin.delete(task))
