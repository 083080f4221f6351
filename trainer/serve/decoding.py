"""From one request's generated tokens to what it is told: token texts, stops, the answer.

Text. Tokens are decoded incrementally (TGI's prefix/read offsets): a token whose bytes do not
yet make whole characters gets an empty text, and the token that completes them gets all of
it. Special tokens (eos, the chat template's markers) are not part of the answer's text; their
events carry their own text and ``special=True``. The last few prompt tokens are decoding
context, so tokenizers that read a leading space from the previous token decode it right.

Ending. A request ends, in LoRAX's order, at its ``max_new_tokens`` ("length"), at an
end-of-sequence token unless ``ignore_eos`` ("eos_token"), or when its text contains a stop
sequence ("stop_sequence"), which is cut off with everything after it. Until a stop sequence
is ruled out, the text that could begin one is held back (see ``trainer.serve.results``).

Constraint. A request with a ``response_format`` chooses among the tokens its grammar allows
(``trainer.serve.constrained``) and ends at the end token that follows its complete JSON, even
with ``ignore_eos``; when its grammar fails, the request fails alone (``GenerationFailed``).
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence
from typing import Any

import torch

from trainer.serve.constrained import Constraint
from trainer.serve.errors import GenerationFailed, StudentError
from trainer.serve.protocol import GenerationSpec
from trainer.serve.results import (
    Alternative,
    Answer,
    Event,
    FinishReason,
    PrefillToken,
    Step,
    Token,
)
from trainer.serve.sampling import Choice, RowSampler

CONTEXT_TOKENS = 5  # prompt tokens decoded before the answer's first token


class Detokenizer:
    """The text of a growing sequence of (non-special) token ids, delta by delta."""

    def __init__(self, tokenizer: Any, context: Sequence[int] = ()) -> None:
        self._tokenizer = tokenizer
        self._ids = list(context)
        self._prefix = 0
        self._read = len(self._ids)

    def push(self, token_id: int) -> str:
        """The text ``token_id`` completes; "" while its characters are still incomplete."""
        self._ids.append(token_id)
        before = self._decode(self._ids[self._prefix : self._read])
        after = self._decode(self._ids[self._prefix :])
        if len(after) > len(before) and not after.endswith("\ufffd"):
            self._prefix, self._read = self._read, len(self._ids)
            return after[len(before) :]
        return ""

    def flush(self) -> str:
        """Whatever is still pending, complete or not."""
        before = self._decode(self._ids[self._prefix : self._read])
        after = self._decode(self._ids[self._prefix :])
        self._prefix = self._read = len(self._ids)
        return after[len(before) :]

    def _decode(self, ids: list[int]) -> str:
        text: str = self._tokenizer.decode(
            ids, skip_special_tokens=True, clean_up_tokenization_spaces=False
        )
        return text


def find_stop(text: str, stops: Sequence[str], start: int = 0) -> int | None:
    """Where the earliest stop sequence in ``text[start:]`` begins, if one is there."""
    found = [at for s in stops if s and (at := text.find(s, start)) >= 0]
    return min(found) if found else None


def held_back(text: str, stops: Sequence[str]) -> int:
    """Length of the longest end of ``text`` that could still grow into a stop sequence."""
    longest = 0
    for stop in stops:
        for size in range(min(len(stop) - 1, len(text)), longest, -1):
            if text.endswith(stop[:size]):
                longest = size
                break
    return longest


class RowState:
    """One request inside a batch: chooses its tokens, tells its client, knows when it ends."""

    def __init__(
        self,
        spec: GenerationSpec,
        emit: Callable[[Event | StudentError], None],
        tokenizer: Any,
        *,
        special_ids: Collection[int],
        eos_ids: Collection[int],
        device: torch.device,
        constraint: Constraint | None = None,
    ) -> None:
        self.spec = spec
        self.emit = emit
        self.constraint = constraint
        self.sampler = RowSampler(spec.sampling, spec.alternatives, device)
        self.prefill: tuple[PrefillToken, ...] = ()
        self.done = False
        self._tokenizer = tokenizer
        self._special = special_ids
        self._eos = eos_ids
        self._detok = Detokenizer(tokenizer, spec.prompt_ids[-CONTEXT_TOKENS:])
        self._text = ""  # the answer so far
        self._sent = 0  # characters of it already in token texts
        self._tokens: list[Token] = []
        self._choice: Choice | None = None

    @property
    def length(self) -> int:
        """Prompt plus generated tokens (the row's real tokens, padding excluded)."""
        return len(self.spec.prompt_ids) + len(self._tokens)

    def choose(self, row_ids: torch.Tensor, scores: torch.Tensor) -> int:
        """This step's token, from the row's ids (padded on the left) and its raw scores.

        A row whose grammar fails is done (it has told its client) and its token is ignored.
        """
        if self.constraint is not None:
            try:
                scores = self.constraint.mask(scores)
            except GenerationFailed as exc:
                self.fail(exc)
                return 0
        self._choice = self.sampler.choose(row_ids[-self.length :], scores)
        return self._choice.token_id

    def accept(self, token_id: int) -> None:
        """Take the token the step produced: tell the client, and end the request if due."""
        choice = self._choice
        if choice is None or choice.token_id != token_id:
            raise RuntimeError(f"step produced token {token_id}, not the chosen one")
        if self.constraint is not None and token_id not in self._eos:
            try:
                self.constraint.consume(token_id)
            except GenerationFailed as exc:
                self.fail(exc)
                return
        special = token_id in self._special
        if not special:
            self._text += self._detok.push(token_id)
        reason = self._finish_reason(token_id)
        if reason is None:
            token = self._token(choice, "" if special else self._release(), special)
            self._tokens.append(token)
            self.emit(Step(token))
        else:
            self._finish(choice, special, reason)

    def fail(self, error: StudentError) -> None:
        """End the request with ``error`` instead of an answer."""
        self.done = True
        self.emit(error)

    def _finish_reason(self, token_id: int) -> FinishReason | None:
        if len(self._tokens) + 1 >= self.spec.max_new_tokens:
            return "length"
        ends = not self.spec.ignore_eos or self.constraint is not None
        if ends and token_id in self._eos:
            return "eos_token"
        if find_stop(self._text, self.spec.stop, self._sent) is not None:
            return "stop_sequence"
        return None

    def _release(self) -> str:
        """The text now known not to be part of a stop sequence, not yet sent."""
        end = len(self._text) - held_back(self._text[self._sent :], self.spec.stop)
        released, self._sent = self._text[self._sent : end], max(self._sent, end)
        return released

    def _finish(self, choice: Choice, special: bool, reason: FinishReason) -> None:
        self._text += self._detok.flush()
        stop_at = find_stop(self._text, self.spec.stop, self._sent)
        end = len(self._text) if stop_at is None else stop_at
        tail = self._text[self._sent : end]
        # A special last token keeps its own text, unless held-back text must go out with it.
        token = self._token(choice, tail, special and not tail)
        self._tokens.append(token)
        self.done = True
        sampling = self.spec.sampling
        self.emit(
            Answer(
                token=token,
                text=self._text[:end],
                finish_reason=reason,
                prompt_tokens=len(self.spec.prompt_ids),
                generated_tokens=len(self._tokens),
                seed=sampling.seed if sampling.do_sample else None,
                tokens=tuple(self._tokens),
                prefill=self.prefill,
            )
        )

    def _token(self, choice: Choice, text: str, special: bool) -> Token:
        alternatives = None
        if self.spec.alternatives:
            alternatives = tuple(
                Alternative(i, self._piece(i), logprob) for i, logprob in choice.alternatives
            )
        if special:
            text = self._piece(choice.token_id)
        return Token(choice.token_id, text, choice.logprob, special, alternatives)

    def _piece(self, token_id: int) -> str:
        piece: str = self._tokenizer.decode([token_id], skip_special_tokens=False)
        return piece
