"""A deterministic OpenAI-compatible judge on a loopback port.

Its verdict is ``rule(user_message)`` (by default: pass unless the judged answer says "wrong").
What it does instead is set per test:
    mode        ok (a JSON verdict), garbage (prose), fenced (the JSON in a ```json block)
    failures    HTTP statuses to answer the next calls with, one each (e.g. [429, 500]), then ok
    delay_s     seconds to wait before answering
    gate        while cleared, calls wait (in flight) before answering; set it to let them go
It counts calls, the calls in flight (and their most at once), their start times, and the
tokens its ``usage`` reported (prompt: characters of the messages / 4, completion: of the answer).
"""

from __future__ import annotations

import asyncio
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiohttp import web

from tests.loopback import LoopbackServer

_ANSWER = re.compile(r"<(?:answer|student_answer)>\n(.*?)\n</(?:answer|student_answer)>", re.S)
_REFERENCE = re.compile(
    r"<(?:reference|teacher_answer)>\n(.*?)\n</(?:reference|teacher_answer)>", re.S
)


def judged_answer(user: str) -> str:
    """The answer being judged in a judge's user message."""
    m = _ANSWER.search(user)
    return m.group(1) if m else ""


def judged_reference(user: str) -> str:
    """The reference (the teacher's answer) in a judge's user message."""
    m = _REFERENCE.search(user)
    return m.group(1) if m else ""


def _opened(gate: threading.Event) -> threading.Event:
    gate.set()
    return gate


def not_wrong(user: str) -> bool:
    """The default rule: pass unless the judged answer contains "wrong"."""
    return "wrong" not in judged_answer(user).lower()


@dataclass
class FakeJudge(LoopbackServer):
    mode: str = "ok"
    rule: Callable[[str], bool] = not_wrong
    failures: list[int] = field(default_factory=list)
    delay_s: float = 0.0
    gate: threading.Event = field(default_factory=lambda: _opened(threading.Event()))
    calls: int = 0
    in_flight: int = 0
    max_in_flight: int = 0
    starts: list[float] = field(default_factory=list)
    tokens: int = 0

    def add_routes(self, app: web.Application) -> None:
        app.router.add_post("/v1/chat/completions", self._chat)

    async def _chat(self, request: web.Request) -> web.Response:
        rec = await self.record(request)
        self.calls += 1
        self.starts.append(time.monotonic())
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            if self.delay_s:
                await asyncio.sleep(self.delay_s)
            if not self.gate.is_set():
                await asyncio.to_thread(self.gate.wait)
            if self.failures:
                status = self.failures.pop(0)
                body = {"error": {"message": f"fake judge {status}", "type": "api_error"}}
                return web.json_response(body, status=status, headers={"retry-after": "0"})
            return web.json_response(self._completion(rec.json))
        finally:
            self.in_flight -= 1

    def _completion(self, req: dict[str, Any]) -> dict[str, Any]:
        user = req["messages"][-1]["content"]
        verdict = "pass" if self.rule(user) else "fail"
        text = orjson.dumps({"verdict": verdict, "reason": f"rule says {verdict}"}).decode()
        if self.mode == "garbage":
            text = f"I think the answer should {verdict}."
        elif self.mode == "fenced":
            text = f"```json\n{text}\n```"
        prompt = sum(len(m["content"]) for m in req["messages"]) // 4 + 1
        completion = len(text) // 4 + 1
        self.tokens += prompt + completion
        usage = {
            "prompt_tokens": prompt,
            "completion_tokens": completion,
            "total_tokens": prompt + completion,
        }
        message = {"role": "assistant", "content": text}
        return {
            "id": "judge-fake",
            "object": "chat.completion",
            "created": 1700000000,
            "model": req["model"],
            "choices": [{"index": 0, "message": message, "finish_reason": "stop"}],
            "usage": usage,
        }
