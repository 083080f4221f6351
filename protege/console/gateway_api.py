"""The gateway's admin API as the console uses it: read every task's rollout, change one.

One ``httpx.AsyncClient`` (made in the app's lifespan) with short timeouts: a page waits at
most a few seconds for a gateway that is down, then says so. Every failure becomes
``GatewayUnavailable`` (unreachable, or no admin token here) or ``GatewayRefused`` (the
gateway's own error, its message kept) in this module and nowhere else. The admin token is
sent, never shown.
"""

from __future__ import annotations

from typing import Any, Final

import httpx
import orjson

TIMEOUT: Final = httpx.Timeout(5.0, connect=2.0)
NO_TOKEN: Final = (
    "the console has no admin token (rollouts.admin_token / PROTEGE_ADMIN_TOKEN), "
    "so it cannot read or change rollouts"
)


class GatewayUnavailable(Exception):
    """The gateway's admin API cannot be asked: unreachable, or no token to ask with."""


class GatewayRefused(Exception):
    """The gateway answered with an error; the message is its own."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


class GatewayAdmin:
    def __init__(self, client: httpx.AsyncClient, token: str | None) -> None:
        self._client = client
        self._token = token

    @property
    def enabled(self) -> bool:
        return self._token is not None

    async def routes(self) -> dict[str, dict[str, Any]]:
        """Every task's rollout in force, by task."""
        body = await self._call("GET", "/admin/routes")
        return {e["task"]: e for e in body.get("data", []) if isinstance(e, dict) and "task" in e}

    async def route(self, task: str) -> dict[str, Any] | None:
        """One task's rollout; None when the gateway has none for it."""
        try:
            found: dict[str, Any] = await self._call("GET", f"/admin/routes/{task}")
            return found
        except GatewayRefused as exc:
            if exc.status == 404:
                return None
            raise

    async def change(self, task: str, fields: dict[str, Any]) -> dict[str, Any]:
        """Apply ``fields`` to the task's rollout; the rollout now in force."""
        changed: dict[str, Any] = await self._call(
            "PUT", f"/admin/routes/{task}", content=orjson.dumps(fields)
        )
        return changed

    async def _call(self, method: str, path: str, content: bytes | None = None) -> Any:
        if self._token is None:
            raise GatewayUnavailable(NO_TOKEN)
        headers = {"authorization": f"Bearer {self._token}", "content-type": "application/json"}
        try:
            resp = await self._client.request(method, path, content=content, headers=headers)
        except httpx.HTTPError as exc:
            reason = type(exc).__name__
            raise GatewayUnavailable(f"the gateway cannot be reached ({reason})") from exc
        try:
            body = resp.json()
        except ValueError:
            body = None
        if resp.status_code >= 400:
            raise GatewayRefused(_message(body, resp), resp.status_code)
        if not isinstance(body, dict):
            raise GatewayUnavailable(f"the gateway's answer to {method} {path} is not JSON")
        return body


def _message(body: Any, resp: httpx.Response) -> str:
    error = body.get("error") if isinstance(body, dict) else None
    if isinstance(error, dict) and error.get("message"):
        return str(error["message"])
    return f"the gateway answered {resp.status_code}"
