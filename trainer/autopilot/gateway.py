"""The gateway's admin API, as the autopilot uses it: read a task's rollout, hand it a student.

The autopilot never writes the rollouts document itself: the gateway validates every change
(the adapter published, a student to serve it), merges it into the policy in force (so a
guardrail step-back made a moment ago is kept) and shares it with every replica.
"""

from __future__ import annotations

from typing import Any

import httpx
import orjson

from core.errors import ProtegeError


class GatewayUnavailable(ProtegeError):
    """The admin API could not be reached, or refused the change (the message says why)."""


class GatewayAdmin:
    def __init__(self, base_url: str, token: str | None, timeout_s: float = 10.0) -> None:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._http = httpx.AsyncClient(
            base_url=base_url.rstrip("/"), headers=headers, timeout=timeout_s
        )

    async def aclose(self) -> None:
        await self._http.aclose()

    async def route(self, task: str) -> dict[str, Any]:
        """The task's rollout in force (mode, adapter, challenger, …); teacher mode for a task
        the gateway does not know yet."""
        resp = await self._call("GET", f"/admin/routes/{task}")
        if resp.status_code == 404:
            return {"task": task, "mode": "teacher", "adapter": None, "challenger": None}
        return _body(resp)

    async def check(self) -> None:
        """That the admin API answers this token (it exists only where a token is set)."""
        resp = await self._call("GET", "/admin/routes")
        if resp.status_code == 404:
            raise GatewayUnavailable(
                "the gateway has no admin API: set rollouts.admin_token (PROTEGE_ADMIN_TOKEN)"
            )
        _body(resp)

    async def change(self, task: str, fields: dict[str, Any]) -> dict[str, Any]:
        """Merge ``fields`` into the task's rollout; the rollout now in force."""
        return _body(await self._call("PUT", f"/admin/routes/{task}", orjson.dumps(fields)))

    async def _call(self, method: str, path: str, body: bytes | None = None) -> httpx.Response:
        try:
            return await self._http.request(
                method, path, content=body, headers={"Content-Type": "application/json"}
            )
        except httpx.HTTPError as exc:
            raise GatewayUnavailable(f"gateway admin API unreachable: {exc!r}") from exc


def _body(resp: httpx.Response) -> dict[str, Any]:
    try:
        body = resp.json()
    except ValueError:
        body = None
    if resp.status_code != 200 or not isinstance(body, dict):
        error = body.get("error") if isinstance(body, dict) else None
        message = error.get("message") if isinstance(error, dict) else resp.text[:300]
        raise GatewayUnavailable(f"gateway admin API: HTTP {resp.status_code}: {message}")
    return body
