"""A Kubernetes API server stand-in on a loopback port: batch/v1 Jobs in namespaces.

What it does as the real one does: a Job must carry the ServiceAccount's bearer token, must
validate against the Kubernetes schema (``kubernetes_validate``, strict) or is refused with a
422 ``Status``; a second Job of the same name is a 409 AlreadyExists; a Job read or deleted
that does not exist is a 404. No pod ever runs: a test plays the kubelet, reading ``jobs`` and
setting a Job's ``status`` with ``finish``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import kubernetes_validate
from aiohttp import web

from tests.loopback import LoopbackServer

KUBE_VERSION = "1.37.0"


@dataclass
class FakeKubernetes(LoopbackServer):
    token: str = "sa-token"
    jobs: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)
    deleted: list[str] = field(default_factory=list)

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def add_routes(self, app: web.Application) -> None:
        base = "/apis/batch/v1/namespaces/{ns}/jobs"
        app.router.add_post(base, self._create)
        app.router.add_get(base + "/{name}", self._read)
        app.router.add_delete(base + "/{name}", self._delete)

    def finish(self, name: str, condition: str, reason: str | None = None) -> None:
        """The kubelet's part: the Job ``name`` ended (``Complete`` or ``Failed``)."""
        job = next(j for (_, n), j in self.jobs.items() if n == name)
        entry = {"type": condition, "status": "True", **({"reason": reason} if reason else {})}
        job["status"] = {"conditions": [entry]}

    def _authorized(self, request: web.Request) -> bool:
        return request.headers.get("Authorization") == f"Bearer {self.token}"

    async def _create(self, request: web.Request) -> web.Response:
        rec = await self.record(request)
        if not self._authorized(request):
            return _status(401, "Unauthorized", "Unauthorized")
        job = rec.json
        try:
            kubernetes_validate.validate(job, KUBE_VERSION, strict=True)
        except kubernetes_validate.ValidationError as exc:
            return _status(422, "Invalid", f"Job is invalid: {exc.message}")
        key = (request.match_info["ns"], job["metadata"]["name"])
        if key in self.jobs:
            return _status(409, "AlreadyExists", f'jobs.batch "{key[1]}" already exists')
        self.jobs[key] = {**job, "status": {"active": 1}}
        return web.json_response(self.jobs[key], status=201)

    async def _read(self, request: web.Request) -> web.Response:
        if not self._authorized(request):
            return _status(401, "Unauthorized", "Unauthorized")
        job = self.jobs.get((request.match_info["ns"], request.match_info["name"]))
        if job is None:
            return _status(404, "NotFound", f'jobs.batch "{request.match_info["name"]}" not found')
        return web.json_response(job)

    async def _delete(self, request: web.Request) -> web.Response:
        if not self._authorized(request):
            return _status(401, "Unauthorized", "Unauthorized")
        name = request.match_info["name"]
        if self.jobs.pop((request.match_info["ns"], name), None) is None:
            return _status(404, "NotFound", f'jobs.batch "{name}" not found')
        self.deleted.append(name)
        return web.json_response({"kind": "Status", "status": "Success"})


def _status(code: int, reason: str, message: str) -> web.Response:
    body = {"kind": "Status", "apiVersion": "v1", "status": "Failure", "message": message,
            "reason": reason, "code": code}  # fmt: skip
    return web.json_response(body, status=code)
