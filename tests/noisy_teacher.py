"""A noisy OpenAI-compatible teacher of the synthetic ticket task, on a loopback port.

It answers a ticket (the last user message) with the right category (``trainer.synthetic``),
except ``error_rate`` of the time, when it names one of the other categories. Which answers are
wrong is seeded and fixed per ticket and draw: the n-th time a ticket is asked is draw n,
however the calls interleave, so a run's answers never depend on timing. ``noisy_answer`` with
draw -1 is the answer captured in the logs (the original). A ticket containing any of
``broken`` is answered HTTP 400 (an error no retry cures). Every request is kept in
``received``.
"""

from __future__ import annotations

import random
import re
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Final

from aiohttp import web

from tests.loopback import LoopbackServer
from trainer import synthetic

ORIGINAL: Final = -1  # the draw of the answer captured in the logs
_CUE: Final = re.compile(r"something is wrong with the (.+?),")


def truth(ticket: str) -> str:
    """The right category of a ticket made by ``synthetic.ticket``: the one its cue names."""
    m = _CUE.search(ticket)
    cue = m.group(1) if m else ""
    return next(c for c, cues in sorted(synthetic.CATEGORIES.items()) if cue in cues)


def noisy_answer(ticket: str, draw: int, *, seed: int = 0, error_rate: float = 0.2) -> str:
    """The teacher's answer to ``ticket`` on draw ``draw``: right, or wrong at ``error_rate``."""
    rng = random.Random(f"{seed}\x1f{draw}\x1f{ticket}")
    right = truth(ticket)
    if rng.random() >= error_rate:
        return synthetic.answer(right)
    return synthetic.answer(rng.choice(sorted(set(synthetic.CATEGORIES) - {right})))


@dataclass
class NoisyTeacher(LoopbackServer):
    seed: int = 0
    error_rate: float = 0.2
    broken: tuple[str, ...] = ()
    asked: Counter[str] = field(default_factory=Counter)  # ticket -> times answered

    def add_routes(self, app: web.Application) -> None:
        app.router.add_post("/v1/chat/completions", self._chat)

    async def _chat(self, request: web.Request) -> web.Response:
        rec = await self.record(request)
        req = rec.json
        ticket = str(req["messages"][-1]["content"])
        if any(b in ticket for b in self.broken):
            body = {"error": {"message": "bad ticket", "type": "invalid_request_error"}}
            return web.json_response(body, status=400)
        draw = self.asked[ticket]
        self.asked[ticket] += 1
        text = noisy_answer(ticket, draw, seed=self.seed, error_rate=self.error_rate)
        return web.json_response(completion(req, text))


def completion(req: dict[str, Any], text: str) -> dict[str, Any]:
    message = {"role": "assistant", "content": text}
    return {
        "id": "noisy", "object": "chat.completion", "created": 1700000000, "model": req["model"],
        "choices": [{"index": 0, "message": message, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 20, "completion_tokens": 6, "total_tokens": 26},
    }  # fmt: skip
