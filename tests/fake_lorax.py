"""A LoRAX stand-in on a loopback port: its OpenAI chat route, quirks included.

What it reproduces of LoRAX's router:
    - the adapter is the request's ``model``; a chat answer says ``"id": "null"``,
      ``"created": 0``, ``"model": "null"`` and ``"object": "text_completion"``
    - stream chunks carry ``"id": "null"`` and ``"usage": null``, except the last one, which
      carries the usage; ``stream_options`` is not a field it knows (ignored); ``[DONE]``
      follows a clean end only
    - a stop sequence is reported as ``finish_reason: content_filter``
    - errors are ``{"error": "<string>", "error_type": "..."}``: with HTTP 4xx/5xx, or in a
      stream as a 200 event, after which the stream ends without ``[DONE]``
    - a body without ``api_token`` gets the ``Authorization`` bearer token as its api_token;
      each request's api_token is kept in ``api_tokens``, so tests see what credential arrived
Every request it got (path, headers, raw body) is kept in ``received``, so tests see what the
student was asked with (decoding settings, response_format) as it arrived.
A request whose client closed the connection while it waited (``slow:<S>``) is counted in
``disconnects``, so tests see that a call was cancelled rather than left to finish.
``mode`` decides how it answers the next requests:
    ok            "student: <last user message>", streamed token by token when asked
    status:<N>    HTTP N with a LoRAX error body
    slow:<S>      wait S seconds before answering (then as ok)
    error_first   a 200 stream whose first event is an error
    error_mid     a 200 stream: two chunks, an error event, then the end
``says`` (a function of the request) replaces the "student: …" text when set.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiohttp import web

from tests.loopback import LoopbackServer

PROMPT_TOKENS = 5
_ERROR_TYPES = {422: "validation", 424: "generation", 429: "overloaded"}


@dataclass
class FakeLorax(LoopbackServer):
    mode: str = "ok"
    api_tokens: list[str | None] = field(default_factory=list)
    says: Callable[[dict[str, Any]], str] | None = None
    disconnects: int = 0

    def add_routes(self, app: web.Application) -> None:
        app.router.add_post("/v1/chat/completions", self._chat)

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        req = (await self.record(request)).json
        auth = request.headers.get("Authorization", "")
        self.api_tokens.append(req.get("api_token") or auth.removeprefix("Bearer ") or None)
        mode = self.mode
        if mode.startswith("status:"):
            return _error(int(mode.split(":")[1]))
        if mode.startswith("slow:"):
            try:
                await asyncio.sleep(float(mode.split(":")[1]))
            except asyncio.CancelledError:  # the connection closed (handler_cancellation)
                self.disconnects += 1
                raise
        if req.get("stream"):
            return await self._stream(request, req, mode)
        tokens = _tokens(req, self.says)
        message = {"role": "assistant", "content": "".join(tokens)}
        choice = {"index": 0, "message": message, "finish_reason": _finish(req)}
        body = {**_head("text_completion"), "choices": [choice], "usage": _usage(tokens)}
        return web.Response(body=orjson.dumps(body), content_type="application/json")

    async def _stream(
        self, request: web.Request, req: dict[str, Any], mode: str
    ) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        tokens = _tokens(req, self.says)
        if mode == "error_first":
            tokens = []
        for i, token in enumerate(tokens):
            if mode == "error_mid" and i == 2:
                break
            delta = {"role": "assistant", "content": token}
            await resp.write(_event(_chunk(delta, None, None)))
        if mode in ("error_first", "error_mid"):
            error = {
                "error": "Request failed during generation: CUDA error",
                "error_type": "generation",
            }
            await resp.write(_event(error))
        else:
            last = _chunk({"role": None, "content": None}, _finish(req), _usage(tokens))
            await resp.write(_event(last) + b"data: [DONE]\n\n")
        await resp.write_eof()
        return resp


def _tokens(req: dict[str, Any], says: Callable[[dict[str, Any]], str] | None) -> list[str]:
    last = req["messages"][-1].get("content") or ""
    words = (says(req) if says else f"student: {last}").split(" ")
    return [w if i == 0 else " " + w for i, w in enumerate(words)]


def _finish(req: dict[str, Any]) -> str:
    return "content_filter" if req.get("stop") else "stop"


def _usage(tokens: list[str]) -> dict[str, int]:
    n = len(tokens)
    return {
        "prompt_tokens": PROMPT_TOKENS,
        "total_tokens": PROMPT_TOKENS + n,
        "completion_tokens": n,
    }


def _head(kind: str) -> dict[str, Any]:
    return {"id": "null", "object": kind, "created": 0, "model": "null"}


def _chunk(delta: dict[str, Any], finish: str | None, usage: Any) -> dict[str, Any]:
    choice = {"index": 0, "delta": delta, "finish_reason": finish}
    return {**_head("chat.completion.chunk"), "choices": [choice], "usage": usage}


def _event(obj: Any) -> bytes:
    return b"data: " + orjson.dumps(obj) + b"\n\n"


def _error(status: int) -> web.Response:
    error_type = _ERROR_TYPES.get(status, "incomplete_generation")
    body = {"error": f"fake lorax error {status}", "error_type": error_type}
    return web.Response(status=status, body=orjson.dumps(body), content_type="application/json")
