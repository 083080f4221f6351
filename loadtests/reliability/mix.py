"""What the scenario clients send: mixed, seeded traffic over several tasks.

Chat completions (streamed or not), text completions and embeddings, for three tasks (model
names, or route aliases when a scenario configures routes), with prompts of ~60, ~600 and
~4,000 characters and a ``user`` drawn from a pool of 200, so canary stickiness sees a realistic
spread. A request may carry an instruction for the fake teacher (``metadata.fake_teacher``,
see ``fakes.ScriptedTeacher``) and ask the client to leave early (``leave``).
"""

from __future__ import annotations

import random
import string
from dataclasses import dataclass
from typing import Any, Final

MODELS: Final = ("support-triage", "summarize", "extract")
_VOCABULARY: Final = (
    "order invoice refund parcel keyboard cable warranty delivery address account password "
    "billing subscription ticket replacement damaged missing late cancel upgrade plan receipt "
    "customer agent urgent please thanks hello update status tracking number weeks days"
)
_WORDS: Final = tuple(_VOCABULARY.split())
# (characters, weight): short questions, paragraphs, long documents
_LENGTHS: Final = ((60, 6), (600, 3), (4000, 1))


@dataclass(frozen=True)
class Request:
    path: str  # under the gateway's base URL, e.g. /v1/chat/completions
    body: dict[str, Any]
    stream: bool
    # None: read the whole answer; "after_first_event": close the connection after the first
    # SSE event; "before_answer": give up before the answer arrives (client timeout)
    leave: str | None = None
    nonce: str | None = None  # a marker in the prompt, to find the record of an abandoned call


class Mix:
    """An endless, seeded sequence of requests."""

    def __init__(
        self,
        seed: int = 7,
        models: tuple[str, ...] = MODELS,
        stream_share: float = 0.4,
        chat_only: bool = False,
    ) -> None:
        self._rng = random.Random(seed)
        self._models = models
        self._stream_share = stream_share
        self._chat_only = chat_only

    def prompt(self, chars: int | None = None) -> str:
        if chars is None:
            sizes, weights = zip(*_LENGTHS, strict=True)
            chars = self._rng.choices(sizes, weights)[0]
        words: list[str] = []
        size = 0
        while size < chars:
            word = self._rng.choice(_WORDS)
            words.append(word)
            size += len(word) + 1
        return " ".join(words)

    def nonce(self) -> str:
        """Letters only: redaction rules (phone and card numbers) never touch it."""
        return "".join(self._rng.choices(string.ascii_lowercase, k=20))

    def next(self) -> Request:
        rng = self._rng
        model = rng.choice(self._models)
        user = f"user-{rng.randrange(200)}"
        kind = "chat" if self._chat_only else rng.choices(("chat", "text", "embed"), (8, 1, 1))[0]
        if kind == "embed":
            body = {"model": model, "input": self.prompt(), "user": user}
            return Request("/v1/embeddings", body, False)
        stream = rng.random() < self._stream_share
        if kind == "text":
            body = {"model": model, "prompt": self.prompt(), "max_tokens": 64, "user": user}
        else:
            messages = [
                {"role": "system", "content": "You are a concise support assistant."},
                {"role": "user", "content": self.prompt()},
            ]
            body = {"model": model, "messages": messages, "max_tokens": 256, "user": user}
        if stream:
            body["stream"] = True
            body["stream_options"] = {"include_usage": True}
        path = "/v1/completions" if kind == "text" else "/v1/chat/completions"
        return Request(path, body, stream)

    def leaver(self, stream: bool) -> Request:
        """A chat request whose client goes away: a stream after its first event (the teacher
        then stalls), or a plain call before its (slow) answer."""
        nonce = self.nonce()
        body: dict[str, Any] = {
            "model": self._rng.choice(self._models),
            "messages": [{"role": "user", "content": f"{self.prompt(60)} {nonce}"}],
            "user": f"user-{self._rng.randrange(200)}",
            "metadata": {"fake_teacher": "hang_stream" if stream else "slow:0.6"},
        }
        if stream:
            body["stream"] = True
        leave = "after_first_event" if stream else "before_answer"
        return Request("/v1/chat/completions", body, stream, leave, nonce)
