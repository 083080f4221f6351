"""Admitting a client request: body, key, JSON, required fields, task.

Everything here happens before the gateway spends anything upstream; every refusal is an
``ApiError`` the app renders in the OpenAI error shape.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import orjson
from starlette.requests import Request
from starlette.types import Receive

from gateway.auth import KeyCheck, bearer
from gateway.capture import Exchange, hash_id
from gateway.config import RouteConfig
from gateway.decoding import Applied
from gateway.errors import InvalidRequest, PayloadTooLarge
from gateway.metrics import TaskLabels
from gateway.routes import RouteTable

# path under /v1 -> (endpoint name, fields a request must carry besides "model")
ENDPOINTS: dict[str, tuple[str, tuple[str, ...]]] = {
    "/chat/completions": ("chat.completions", ("messages",)),
    "/completions": ("completions", ("prompt",)),
    "/embeddings": ("embeddings", ("input",)),
}

TASK_HEADER = "x-protege-task"


@dataclass(slots=True)
class Incoming:
    """A request admitted for forwarding."""

    request_id: str
    started: float  # perf_counter at arrival
    path: str
    endpoint: str
    body: bytes  # as the client sent it
    payload: bytes  # as the teacher gets it (the model alias resolved)
    fields: dict[str, Any]  # the body's JSON object
    route: RouteConfig | None  # the route of the requested alias, if one names it
    stream: bool
    task: str
    metrics_task: str
    client: str | None
    user: str | None
    # Seconds spent on a backend that failed before the one answering was asked (fallback).
    failed_upstream_s: float = 0.0
    # The student adapter routing chose for this request, if any.
    adapter: str | None = None
    # Why routing chose the backend (the record's detail.why); None in plain teacher mode.
    why: str | None = None
    # Told of every exchange recorded for this request (shadow scoring, output checks).
    watch: Callable[[Incoming, Exchange], None] | None = None
    # Takes the client's answer once captured (None if it did not complete; a stream as the
    # record encoder assembled it), when a shadow call waits to compare with it.
    answered: asyncio.Future[bytes | None] | None = None
    # The request as the student gets it (gateway.decoding), once routing chose to ask it.
    decoding: Applied | None = None
    # The client's ASGI receive, its body read: it yields the disconnect once the client
    # goes away (``gateway.disconnect``); None where that is not known.
    receive: Receive | None = None

    @property
    def model(self) -> str:
        """The model the client asked for (a route alias, or a model name)."""
        model: str = self.fields["model"]
        return model

    def exchange(
        self, backend: str = "teacher", route: str = "teacher", adapter: str | None = None
    ) -> Exchange:
        return Exchange(
            request_id=self.request_id,
            ts_us=time.time_ns() // 1000,
            task=self.task,
            endpoint=self.endpoint,
            request=self.body,
            stream=self.stream,
            backend=backend,
            route=route,
            adapter=adapter,
            client=self.client,
            user=self.user,
            detail=self.detail(backend),
            metrics_task=self.metrics_task,
        )

    def detail(self, backend: str) -> dict[str, Any] | None:
        """The record's detail for ``backend``: why routing chose it and, for the student, the
        decoding the gateway set or changed (``gateway.decoding``)."""
        detail: dict[str, Any] = {} if self.why is None else {"why": self.why}
        if backend == "student" and self.decoding is not None and self.decoding.record:
            detail["decoding"] = self.decoding.record
        return detail or None


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, refusing more than ``limit`` bytes without reading them all."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge(f"request body is {declared} bytes; the limit is {limit}")
    parts: list[bytes] = []
    size = 0
    async for part in request.stream():
        size += len(part)
        if size > limit:
            raise PayloadTooLarge(f"request body exceeds the limit of {limit} bytes")
        parts.append(part)
    return parts[0] if len(parts) == 1 else b"".join(parts)


def json_object(body: bytes, what: str = "a JSON object") -> dict[str, Any]:
    """The JSON object in a request body, or an ``InvalidRequest`` saying what is wrong."""
    try:
        obj = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise InvalidRequest(f"the body is not valid JSON: {exc}") from exc
    if not isinstance(obj, dict):
        raise InvalidRequest(f"the body must be {what}")
    return obj


def parse(body: bytes, required: tuple[str, ...]) -> dict[str, Any]:
    """The JSON object of the body, with ``model`` and the endpoint's required fields."""
    obj = json_object(body)
    model = obj.get("model")
    if not isinstance(model, str) or not model:
        raise InvalidRequest("you must provide a model parameter", param="model")
    for name in required:
        if obj.get(name) is None:
            raise InvalidRequest(f"missing required parameter: '{name}'", param=name)
    if "messages" in required and not (isinstance(obj["messages"], list) and obj["messages"]):
        raise InvalidRequest("'messages' must be a non-empty array", param="messages")
    if "stream" in obj and not isinstance(obj["stream"], bool | None):
        raise InvalidRequest("'stream' must be a boolean", param="stream")
    return obj


class Intake:
    """Turns an HTTP request into an ``Incoming``, or refuses it."""

    def __init__(
        self,
        keys: KeyCheck,
        routes: RouteTable,
        task_labels: TaskLabels,
        salt: bytes,
        max_body_bytes: int,
    ) -> None:
        self._keys = keys
        self._routes = routes
        self._task_labels = task_labels
        self._salt = salt
        self._limit = max_body_bytes

    def authorize(self, request: Request) -> str | None:
        """The caller's bearer token, once accepted."""
        token = bearer(request.headers.get("authorization"))
        self._keys.check(token)
        return token

    async def admit(self, request: Request, path: str, request_id: str) -> Incoming:
        started = time.perf_counter()
        token = self.authorize(request)
        endpoint, required = ENDPOINTS[path]
        body = await read_body(request, self._limit)
        obj = parse(body, required)
        resolved = self._routes.resolve(obj["model"], request.headers.get(TASK_HEADER))
        payload = body
        if resolved.teacher_model is not None and resolved.teacher_model != obj["model"]:
            payload = orjson.dumps({**obj, "model": resolved.teacher_model})
        user = obj.get("user")
        return Incoming(
            request_id=request_id,
            started=started,
            path=path,
            endpoint=endpoint,
            body=body,
            payload=payload,
            fields=obj,
            route=resolved.route,
            stream=obj.get("stream") is True,
            task=resolved.task,
            metrics_task=self._task_labels(resolved.task),
            client=hash_id(token, self._salt) if token else None,
            user=hash_id(user, self._salt) if isinstance(user, str) and user else None,
            receive=request.receive,
        )
