"""A small OpenAI-compatible teacher on a loopback port, scriptable per test.

``mode`` decides how it answers the next requests:
    ok            a deterministic completion (tool calls when tools are offered, JSON when a
                  response_format asks for it), streamed when the request says so
    status:<N>    HTTP N with an OpenAI error body (and retry-after on 429)
    slow:<S>      wait S seconds before answering
    cut           stream a few chunks, then drop the connection
    no_done       stream every chunk but end without [DONE]
    error_first   answer 200 text/event-stream whose first event is an error
    hang_stream   stream one chunk, then stay silent (until the client goes away)
Every request is kept in ``received`` (path, headers, raw body); every answer body it sent in
full is kept in ``sent``.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiohttp import web

from tests.loopback import LoopbackServer


@dataclass
class FakeTeacher(LoopbackServer):
    mode: str = "ok"
    sent: list[bytes] = field(default_factory=list)
    disconnects: int = 0

    def add_routes(self, app: web.Application) -> None:
        app.router.add_post("/v1/chat/completions", self._chat)
        app.router.add_post("/v1/completions", self._chat)
        app.router.add_post("/v1/embeddings", self._embeddings)
        app.router.add_get("/v1/models", self._models)

    async def _models(self, request: web.Request) -> web.Response:
        await self.record(request)
        data = {
            "object": "list",
            "data": [{"id": "teacher-large", "object": "model", "created": 1, "owned_by": "fake"}],
        }
        return web.Response(body=orjson.dumps(data), content_type="application/json")

    async def _embeddings(self, request: web.Request) -> web.Response:
        rec = await self.record(request)
        inputs = rec.json["input"]
        inputs = inputs if isinstance(inputs, list) else [inputs]
        data = [
            {"object": "embedding", "index": i, "embedding": [0.1 * i, 0.2, -0.3]}
            for i in range(len(inputs))
        ]
        body = orjson.dumps(
            {
                "object": "list",
                "data": data,
                "model": rec.json["model"],
                "usage": {"prompt_tokens": 3, "total_tokens": 3},
            }
        )
        self.sent.append(body)
        return web.Response(body=body, content_type="application/json")

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        rec = await self.record(request)
        mode = self.mode
        if mode.startswith("status:"):
            return self._error_status(int(mode.split(":")[1]))
        if mode.startswith("slow:"):
            await asyncio.sleep(float(mode.split(":")[1]))
        req = rec.json
        if req.get("stream"):
            return await self._stream(request, req, mode)
        body = orjson.dumps(completion(req, request.path))
        self.sent.append(body)
        return web.Response(
            body=body,
            content_type="application/json",
            headers={"x-ratelimit-remaining-requests": "99"},
        )

    def _error_status(self, status: int) -> web.Response:
        body = orjson.dumps(
            {
                "error": {
                    "message": f"fake teacher error {status}",
                    "type": "rate_limit_error" if status == 429 else "api_error",
                    "param": None,
                    "code": None,
                }
            }
        )
        self.sent.append(body)
        headers = {"retry-after": "7"} if status == 429 else {}
        return web.Response(
            status=status, body=body, content_type="application/json", headers=headers
        )

    async def _stream(
        self, request: web.Request, req: dict[str, Any], mode: str
    ) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        out = bytearray()
        if mode == "error_first":
            event = b'data: {"error": {"message": "model overloaded", "type": "server_error"}}\n\n'
            await resp.write(event)
            self.sent.append(event)
            await resp.write_eof()
            return resp
        events = stream_events(req, request.path)
        cut_at = min(3, len(events) - 1)  # short answers are cut before their [DONE] too
        try:
            for i, event in enumerate(events):
                if mode == "cut" and i == cut_at:
                    assert request.transport is not None
                    request.transport.abort()
                    self.sent.append(bytes(out))
                    return resp
                if mode == "hang_stream" and i == 1:
                    await asyncio.sleep(30)
                if mode == "no_done" and event.startswith(b"data: [DONE]"):
                    break
                await resp.write(event)
                out += event
        except (asyncio.CancelledError, ConnectionResetError):
            self.disconnects += 1
            raise
        self.sent.append(bytes(out))
        await resp.write_eof()
        return resp


def _answer(req: dict[str, Any]) -> str:
    if (req.get("response_format") or {}).get("type") in ("json_schema", "json_object"):
        return '{"label": "positive", "confidence": 0.9}'
    messages = req.get("messages") or [{"content": req.get("prompt", "")}]
    last = messages[-1].get("content") or ""
    return f"echo: {last if isinstance(last, str) else 'parts'}"


def completion(req: dict[str, Any], path: str) -> dict[str, Any]:
    """The non-streamed answer to ``req``."""
    usage = {"prompt_tokens": 11, "completion_tokens": 7, "total_tokens": 18}
    base = {"id": "cmpl-fake", "created": 1700000000, "model": req["model"], "usage": usage}
    if path.endswith("/completions") and "chat" not in path:
        choice = {"index": 0, "text": _answer(req), "logprobs": None, "finish_reason": "stop"}
        return {**base, "object": "text_completion", "choices": [choice]}
    message: dict[str, Any] = {"role": "assistant", "content": _answer(req), "refusal": None}
    finish = "stop"
    if req.get("tools"):
        name = req["tools"][0]["function"]["name"]
        message = {
            "role": "assistant",
            "content": None,
            "refusal": None,
            "tool_calls": [
                {
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": name, "arguments": '{"city": "Paris"}'},
                }
            ],
        }
        finish = "tool_calls"
    choice = {"index": 0, "message": message, "logprobs": None, "finish_reason": finish}
    return {
        **base,
        "object": "chat.completion",
        "system_fingerprint": "fp_fake",
        "choices": [choice],
    }


def stream_events(req: dict[str, Any], path: str) -> list[bytes]:
    """The SSE events of the streamed answer to ``req`` (ending with ``data: [DONE]``)."""
    full = completion(req, path)
    chat = full["object"] == "chat.completion"
    head = {
        "id": "cmpl-fake",
        "created": full["created"],
        "model": full["model"],
        "object": "chat.completion.chunk" if chat else "text_completion",
    }
    chunks: list[dict[str, Any]] = []
    choice = full["choices"][0]
    if chat and choice["message"].get("tool_calls"):
        call = choice["message"]["tool_calls"][0]
        args = call["function"]["arguments"]
        deltas = [
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {
                        "index": 0,
                        "id": call["id"],
                        "type": "function",
                        "function": {"name": call["function"]["name"], "arguments": ""},
                    }
                ],
            }
        ]
        deltas += [
            {"tool_calls": [{"index": 0, "function": {"arguments": args[i : i + 4]}}]}
            for i in range(0, len(args), 4)
        ]
    else:
        text = choice["message"]["content"] if chat else choice["text"]
        words = [w + " " for w in text.split(" ")]
        words[-1] = words[-1].rstrip()
        deltas = ([{"role": "assistant", "content": ""}] if chat else []) + (
            [{"content": w} for w in words] if chat else [{"text": w} for w in words]
        )
    for d in deltas:
        c = (
            {"index": 0, "delta": d, "finish_reason": None}
            if chat
            else {"index": 0, "text": d["text"], "finish_reason": None}
        )
        chunks.append({**head, "choices": [c]})
    last = (
        {"index": 0, "delta": {}, "finish_reason": choice["finish_reason"]}
        if chat
        else {"index": 0, "text": "", "finish_reason": choice["finish_reason"]}
    )
    chunks.append({**head, "choices": [last]})
    if (req.get("stream_options") or {}).get("include_usage"):
        chunks.append({**head, "choices": [], "usage": full["usage"]})
    return [b"data: " + orjson.dumps(c) + b"\n\n" for c in chunks] + [b"data: [DONE]\n\n"]


def wait_for(predicate: Any, timeout: float = 5.0) -> bool:
    """Poll ``predicate`` until true or ``timeout`` seconds pass."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return bool(predicate())
