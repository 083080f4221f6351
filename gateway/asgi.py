"""The ASGI edge: the fast lane for forwarded requests, and the one error renderer.

Forwarded requests (``POST /v1/chat/completions`` and friends) are the hot path. FastLane serves
them straight from ASGI with the same handler FastAPI would call, skipping a stack of generic
middleware that costs more per request than the gateway's own work. Everything else — admin,
health, metrics, models, lifespan — goes to the FastAPI app, which also keeps the forwarding
routes in its OpenAPI schema.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping

import structlog
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from gateway.errors import ApiError, UpstreamError, error_body

REQUEST_ID = "protege.request_id"  # scope key holding the request's id once it has one

log = structlog.get_logger("gateway")


def json_response(
    body: bytes, status: int, scope: Scope, headers: dict[str, str] | None = None
) -> Response:
    rid = scope.get(REQUEST_ID)
    headers = dict(headers or {})
    if rid:
        headers["x-protege-request-id"] = rid
    return Response(body, status, headers or None, media_type="application/json")


def error_response(exc: BaseException, scope: Scope) -> Response:
    """The OpenAI-shaped answer to ``exc``; anything unexpected is logged and becomes a 500.
    A backend's failure says which backend failed (``x-protege-backend``)."""
    if isinstance(exc, UpstreamError):
        headers = {"x-protege-backend": exc.backend}
        return json_response(exc.body(), exc.status, scope, headers)
    if isinstance(exc, ApiError):
        return json_response(exc.body(), exc.status, scope)
    log.error("unhandled error", exc_info=exc)
    return json_response(error_body("internal gateway error", "server_error"), 500, scope)


class FastLane:
    """Routes ``POST`` to the forwarding paths straight to ``handler``; the rest to ``app``."""

    def __init__(
        self,
        app: ASGIApp,
        handler: Callable[[Request, str], Awaitable[Response]],
        paths: Mapping[str, str],
    ) -> None:
        self.app = app
        self._handler = handler
        self._paths = dict(paths)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = self._paths.get(scope.get("path", "")) if scope["type"] == "http" else None
        if path is None or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        try:
            response = await self._handler(Request(scope, receive), path)
        except Exception as exc:  # the one boundary of the fast lane
            response = error_response(exc, scope)
        await response(scope, receive, send)
