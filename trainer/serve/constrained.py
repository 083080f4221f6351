"""Constrained decoding: answers that satisfy a JSON schema (``response_format``), by llguidance.

``Grammars`` turns a schema's text into a matcher for one request. llguidance's view of the
vocabulary is built once, on the first constrained request (about a second for a real
tokenizer); compiled schemas stay in a small LRU keyed by their text, since every request of
a task repeats the same schema, and each request gets its own copy. Both are blocking work
for a worker thread, never the event loop. A schema llguidance cannot compile is an
``InvalidInput``, so the request is refused before it is queued.

``Constraint`` is one request's matcher inside a batch, used on the engine's thread only.
Before the row's penalty, warpers and sampling, every token the grammar forbids scores -inf;
the token the row takes is consumed; once the grammar is complete only an end token remains,
so the answer ends (``eos_token``) right after its JSON. A matcher that fails is a
``GenerationFailed`` for that request alone, never unconstrained text.

An answer cut short by ``max_new_tokens`` or a stop sequence is truncated JSON with that
finish reason, as LoRAX answers it; the grammar bounds whitespace (``WHITESPACE``) so that a
schema whose values are bounded (enums, patterns, integer ranges, ``maxLength``) always closes.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Collection
from typing import Any, Final

import numpy as np
import torch
from llguidance import LLMatcher, LLTokenizer
from llguidance.hf import from_tokenizer

from trainer.serve.errors import GenerationFailed, InvalidInput

# The whitespace allowed between JSON tokens: nothing, one space, or one line break and an
# indent of up to 16 spaces or tabs, so both compact and pretty-printed answers are possible.
# llguidance's default allows any run of whitespace, and a small model can emit it until
# max_new_tokens; a bound keeps every step of the answer moving towards its end.
WHITESPACE: Final = r"(?:\r?\n[ \t]{0,16}| )?"
CACHED_SCHEMAS: Final = 64  # compiled schemas kept; the least recently used one goes beyond
MAX_REASON: Final = 300  # characters of llguidance's error kept in a message


class Grammars:
    """Compiled JSON schemas for one model's tokenizer; thread-safe, blocking."""

    def __init__(
        self, tokenizer: Any, *, n_vocab: int, end_ids: Collection[int], size: int = CACHED_SCHEMAS
    ) -> None:
        self._hf_tokenizer = tokenizer
        self._n_vocab = n_vocab
        self._end = sorted(end_ids)
        self._size = size
        self._lock = threading.Lock()
        self._tokenizer: LLTokenizer | None = None
        self._compiled: OrderedDict[str, LLMatcher] = OrderedDict()
        self.compilations = 0  # schemas compiled (cache misses)

    def constraint(self, schema: str) -> Constraint:
        """A fresh matcher for ``schema`` (JSON text); ``InvalidInput`` if it cannot be used.

        Compiling holds the lock, so a burst of first requests for a schema compiles it once.
        """
        with self._lock:
            compiled = self._compiled.get(schema)
            if compiled is None:
                compiled = _compile(self._llg_tokenizer(), schema)
                self.compilations += 1
                self._compiled[schema] = compiled
                while len(self._compiled) > self._size:
                    self._compiled.popitem(last=False)
            self._compiled.move_to_end(schema)
            return Constraint(compiled.deep_copy(), self._end)

    def _llg_tokenizer(self) -> LLTokenizer:
        if self._tokenizer is None:
            # The model's end tokens end a complete answer; ids past the tokenizer's vocabulary
            # (logits may be wider) are never allowed.
            try:
                self._tokenizer = from_tokenizer(
                    self._hf_tokenizer, n_vocab=self._n_vocab, eos_token=self._end
                )
            except ValueError as exc:  # llguidance reads only fast (Rust) tokenizers
                raise InvalidInput(
                    f"`response_format` is not supported with this model's tokenizer: {exc}"
                ) from exc
        return self._tokenizer


def _compile(tokenizer: LLTokenizer, schema: str) -> LLMatcher:
    try:
        grammar = LLMatcher.grammar_from_json_schema(
            schema, defaults={"whitespace_pattern": WHITESPACE}
        )
        matcher = LLMatcher(tokenizer, grammar, log_level=0)
    except (ValueError, RuntimeError) as exc:
        raise InvalidInput(f"`response_format.schema` cannot be used: {exc}") from exc
    if matcher.is_error():
        raise InvalidInput(f"`response_format.schema` cannot be used: {_reason(matcher)}")
    return matcher


def _reason(matcher: LLMatcher) -> str:
    """The matcher's error on one line, without the parser state dump that may follow it."""
    lines = []
    for line in matcher.get_error().splitlines():
        if line.startswith("<state>"):
            break
        lines.append(line.strip())
    return " ".join(part for part in lines if part)[:MAX_REASON] or "unknown error"


class Constraint:
    """One request's grammar state: masks its scores, follows its tokens."""

    def __init__(self, matcher: LLMatcher, end_ids: Collection[int]) -> None:
        self._matcher = matcher
        self._end = np.array(sorted(end_ids), dtype=np.int64)

    @property
    def complete(self) -> bool:
        """The answer satisfies the grammar and nothing may follow but an end token."""
        return self._matcher.is_stopped() and not self._matcher.is_error()

    def mask(self, scores: torch.Tensor) -> torch.Tensor:
        """``scores`` (1-d) with -inf for every token the grammar does not allow next."""
        self._check()
        width = scores.shape[-1]
        if self._matcher.is_stopped():
            allowed = np.zeros(width, dtype=bool)
            allowed[self._end[self._end < width]] = True
        else:
            allowed = allowed_bits(self._matcher.compute_bitmask(), width)
        if not allowed.any():
            raise GenerationFailed("the response_format grammar allows no next token")
        # The mask is built in numpy: one torch operation per step, not several.
        forbidden = torch.from_numpy(~allowed).to(scores.device)
        return scores.masked_fill(forbidden, float("-inf"))

    def consume(self, token_id: int) -> None:
        """Advance past the token the row took."""
        if not self._matcher.consume_token(token_id):
            self._check()
            raise GenerationFailed(f"token {token_id} does not follow the response_format grammar")

    def _check(self) -> None:
        if self._matcher.is_error():
            raise GenerationFailed(f"response_format grammar: {_reason(self._matcher)}")


def allowed_bits(bitmask: bytes, width: int) -> np.ndarray[Any, np.dtype[np.bool_]]:
    """llguidance's bitmask (one bit per token, little-endian) as ``width`` booleans; tokens
    past the bitmask are not allowed."""
    bits = np.unpackbits(np.frombuffer(bitmask, dtype=np.uint8), bitorder="little")
    allowed = np.zeros(width, dtype=bool)
    allowed[: min(width, bits.size)] = bits[:width]
    return allowed
