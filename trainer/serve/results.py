"""What generation gives one request: a ``Step`` per token while it runs, then an ``Answer``.

Token texts are what a client concatenates: the texts of the non-special tokens of the steps
and of the answer's last token add up to the answer's text. Text that may be the start of a
stop sequence is held back until it is known not to be one, so a stop sequence never reaches
the client; the answer's last token carries what was held back.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

FinishReason = Literal["length", "eos_token", "stop_sequence"]


@dataclass(frozen=True)
class Alternative:
    id: int
    text: str
    logprob: float

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "text": self.text, "logprob": self.logprob}


@dataclass(frozen=True)
class Token:
    id: int
    text: str
    logprob: float
    special: bool
    alternatives: tuple[Alternative, ...] | None = None  # only when the request asked for them

    def to_json(self) -> dict[str, Any]:
        """LoRAX's token object (``alternative_tokens`` only when there are some)."""
        out: dict[str, Any] = {
            "id": self.id,
            "text": self.text,
            "logprob": self.logprob,
            "special": self.special,
        }
        if self.alternatives is not None:
            out["alternative_tokens"] = [a.to_json() for a in self.alternatives]
        return out


@dataclass(frozen=True)
class PrefillToken:
    id: int
    text: str
    logprob: float | None  # None for the first token: nothing predicts it

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "text": self.text, "logprob": self.logprob}


@dataclass(frozen=True)
class Step:
    """A generated token of an answer that goes on."""

    token: Token


@dataclass(frozen=True)
class Answer:
    """The complete answer; ``token`` is its last token."""

    token: Token
    text: str
    finish_reason: FinishReason
    prompt_tokens: int
    generated_tokens: int
    seed: int | None  # the sampling seed; None when decoding was greedy
    tokens: tuple[Token, ...]  # every generated token, the last one included
    prefill: tuple[PrefillToken, ...] = ()  # the prompt's tokens, when asked for


Event = Step | Answer
