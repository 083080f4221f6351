"""The upstreams of the scenarios: the test suite's fake teacher and fake LoRAX, on loopback.

Both run in this process, each on its own thread and event loop (``tests.loopback``). Two
changes make them fit for load: they keep no copy of the requests and answers they saw, and
the teacher takes its mode per request as well as globally. A request whose body carries
``"metadata": {"fake_teacher": "<mode>"}`` (the gateway forwards it untouched) is answered in
that mode (see ``tests.fake_teacher`` for the modes); any other in ``FakeTeacher.mode``.
"""

from __future__ import annotations

import asyncio
from collections import deque
from dataclasses import dataclass
from typing import Any

import orjson
from aiohttp import web

from tests.fake_lorax import FakeLorax
from tests.fake_teacher import FakeTeacher, completion
from tests.loopback import Received


def _forgetful(server: Any) -> None:
    """Keep at most the last few answers (the fakes append every one they send)."""
    if hasattr(server, "sent"):
        server.sent = deque(maxlen=8)


@dataclass
class ScriptedTeacher(FakeTeacher):
    """``FakeTeacher`` with a per-request mode, keeping nothing it received."""

    def __post_init__(self) -> None:
        _forgetful(self)

    async def record(self, request: web.Request) -> Received:
        return Received(request.path, {}, await request.read())

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        rec = await self.record(request)
        req = rec.json
        meta = req.get("metadata")
        wanted = meta.get("fake_teacher") if isinstance(meta, dict) else None
        mode = wanted if isinstance(wanted, str) else self.mode
        if mode.startswith("status:"):
            return self._error_status(int(mode.split(":")[1]))
        if mode.startswith("slow:"):
            await asyncio.sleep(float(mode.split(":")[1]))
        if req.get("stream"):
            return await self._stream(request, req, mode)
        body = orjson.dumps(completion(req, request.path))
        return web.Response(body=body, content_type="application/json")


@dataclass
class Student(FakeLorax):
    """``FakeLorax`` keeping nothing it received; it answers as the teacher would (so shadow
    agreement is high) until told otherwise."""

    def __post_init__(self) -> None:
        if self.says is None:
            self.says = echo

    async def record(self, request: web.Request) -> Received:
        return Received(request.path, {}, await request.read())


def echo(req: dict[str, Any]) -> str:
    """The fake teacher's answer to a chat request: a student that agrees with it."""
    last = req["messages"][-1].get("content") or ""
    return "echo: " + (last if isinstance(last, str) else "parts")
