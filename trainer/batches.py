"""From ``Example``s to training batches: chat-template tokens, assistant-only labels, packing.

Tokens. An example is the prompt exactly as generation will see it (the messages through the
tokenizer's chat template with the generation prompt), then the completion, then the template's
end-of-turn token (``<|im_end|>`` for ChatML). Only the completion and the end-of-turn token are
labelled; anything the template writes after the end-of-turn token (ChatML's ``\\n``) is left out,
since generation stops at that token. Prompt and completion are tokenized apart, so the tokens
trained on are the tokens seen at generation time; for ordinary completions they equal what the
template gives for the whole conversation (a completion that starts with a newline can merge with
the template's newline there, and then the two differ by that one merge).

Length. An example longer than ``seq_len`` is dropped by default: a student is served the whole
prompt, so training on a cut prompt teaches it to answer without what it will be given.
``overlong="truncate_prompt"`` keeps such examples by cutting the oldest prompt tokens (the left),
never the answer; an answer that alone fills ``seq_len`` is dropped either way.

Packing. Examples are packed into rows of at most ``seq_len`` tokens (best-fit decreasing). A row
carries ``position_ids`` that restart at 0 for each example and a block-diagonal causal mask
``[batch, 1, seq, seq]`` (True = may attend), so no example sees another and a packed row trains
exactly like its examples one by one. Rows are grouped into micro-batches by token budget
(rows x longest row <= ``max_tokens_per_batch``), longest with longest so little is padding.
With flash attention a batch can instead be one flat row with restarting ``position_ids`` and no
mask (``varlen``): the kernel reads the example boundaries from the positions.
"""

from __future__ import annotations

import bisect
import math
import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final, TypeVar

import torch

from core.text import content_text
from trainer.config import TrainConfig
from trainer.examples import Example

IGNORE: Final = -100  # label of a token that is not trained on
_ANSWER: Final = "\x00protege-answer\x00"  # stands in for an answer when reading the template
T = TypeVar("T")

Row = list[int]  # indices of the examples packed into one row
Plan = list[list[Row]]  # micro-batches of rows


@dataclass(frozen=True)
class Encoded:
    """One tokenized example: prompt tokens, then the labelled answer tokens."""

    input_ids: tuple[int, ...]
    prompt_len: int  # tokens before the answer, never labelled

    def __len__(self) -> int:
        return len(self.input_ids)

    @property
    def labels(self) -> list[int]:
        return [IGNORE] * self.prompt_len + list(self.input_ids[self.prompt_len :])


@dataclass(frozen=True)
class Batch:
    """A collated micro-batch; ``attention_mask`` is None for flat varlen batches."""

    input_ids: torch.Tensor  # [rows, seq]
    labels: torch.Tensor  # [rows, seq], IGNORE on prompts and padding
    position_ids: torch.Tensor  # [rows, seq], restarting at 0 for each example
    attention_mask: torch.Tensor | None  # [rows, 1, seq, seq] bool, block-diagonal causal
    tokens: int  # real (non-pad) tokens

    @property
    def label_tokens(self) -> int:
        return int((self.labels != IGNORE).sum())

    def inputs(
        self, device: torch.device | str, *, float_mask: torch.dtype | None = None
    ) -> dict[str, torch.Tensor | None]:
        """Model keyword arguments on ``device``; ``float_mask`` makes the mask additive."""
        mask = self.attention_mask
        if mask is not None and float_mask is not None:
            bias = torch.zeros(mask.shape, dtype=float_mask)
            mask = bias.masked_fill(~mask, torch.finfo(float_mask).min)
        return {
            "input_ids": self.input_ids.to(device),
            "position_ids": self.position_ids.to(device),
            "attention_mask": None if mask is None else mask.to(device),
        }


# --- chat template ---


def chat_messages(messages: Sequence[dict[str, Any]]) -> list[dict[str, str]]:
    """Messages a chat template can render: role and text content (``core.text``)."""
    out = []
    for message in messages:
        out.append({"role": str(message["role"]), "content": content_text(message.get("content"))})
    return out


def prompt_ids(tokenizer: Any, messages: Sequence[dict[str, Any]]) -> list[int]:
    """The prompt tokens generation starts from: the chat template plus the generation prompt."""
    text = tokenizer.apply_chat_template(
        chat_messages(messages), tokenize=False, add_generation_prompt=True
    )
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def end_of_turn_ids(tokenizer: Any) -> list[int]:
    """The tokens the chat template closes an assistant answer with, through the first special one.

    Falls back to the eos token when the template writes no special token after an answer.
    """
    probe = [{"role": "user", "content": "hi"}]
    prompt = tokenizer.apply_chat_template(probe, tokenize=False, add_generation_prompt=True)
    full = tokenizer.apply_chat_template(
        [*probe, {"role": "assistant", "content": _ANSWER}], tokenize=False
    )
    if not full.startswith(prompt + _ANSWER):
        raise ValueError(
            "the chat template does not write the answer right after the generation prompt"
        )
    suffix = full[len(prompt) + len(_ANSWER) :]
    ids = list(tokenizer(suffix, add_special_tokens=False)["input_ids"])
    special = set(tokenizer.all_special_ids)
    for i, token in enumerate(ids):
        if token in special:
            return ids[: i + 1]
    return [tokenizer.eos_token_id]


def encode(tokenizer: Any, example: Example, end_of_turn: Sequence[int]) -> Encoded:
    """The example's prompt and answer tokens (answer = completion + end of turn)."""
    prompt = prompt_ids(tokenizer, example.messages)
    answer = tokenizer(example.completion, add_special_tokens=False)["input_ids"]
    return Encoded(tuple(prompt + list(answer) + list(end_of_turn)), len(prompt))


def fit(encoded: Encoded, seq_len: int, overlong: str) -> Encoded | None:
    """The example within ``seq_len`` tokens, or None when it is dropped (see module doc)."""
    if len(encoded) <= seq_len:
        return encoded
    answer_len = len(encoded) - encoded.prompt_len
    if overlong == "drop" or answer_len >= seq_len:
        return None
    keep = seq_len - answer_len
    return Encoded(encoded.input_ids[encoded.prompt_len - keep :], keep)


def encode_all(
    tokenizer: Any, examples: Sequence[Example], cfg: TrainConfig
) -> tuple[list[Encoded], int]:
    """The examples that fit ``cfg.seq_len``, tokenized, and how many were dropped."""
    end_of_turn = end_of_turn_ids(tokenizer)
    fitted = [fit(encode(tokenizer, e, end_of_turn), cfg.seq_len, cfg.overlong) for e in examples]
    kept = [e for e in fitted if e is not None]
    return kept, len(fitted) - len(kept)


def subsample(items: Sequence[T], fraction: float, seed: int) -> list[T]:
    """A seeded share of ``items`` in their order; a smaller share is a subset of a larger one."""
    if fraction >= 1.0:
        return list(items)
    order = list(range(len(items)))
    random.Random(seed).shuffle(order)
    keep = sorted(order[: max(1, math.ceil(fraction * len(items)))])
    return [items[i] for i in keep]


# --- packing and batching (pure: lengths in, indices out) ---


def pack(lengths: Sequence[int], capacity: int) -> list[Row]:
    """Indices grouped into rows of at most ``capacity`` tokens, best-fit decreasing.

    Ties keep the order of ``lengths``, so shuffling the input varies which examples meet.
    """
    rows: list[Row] = []
    rooms: list[tuple[int, int]] = []  # (free tokens, row), sorted
    for i in sorted(range(len(lengths)), key=lambda i: -lengths[i]):
        at = bisect.bisect_left(rooms, (lengths[i], -1))
        if at < len(rooms):
            room, row = rooms.pop(at)
            rows[row].append(i)
            bisect.insort(rooms, (room - lengths[i], row))
        else:
            rows.append([i])
            bisect.insort(rooms, (capacity - lengths[i], len(rows) - 1))
    return rows


def plan_batches(lengths: Sequence[int], max_tokens: int) -> list[list[int]]:
    """Indices grouped longest-first so that rows x longest row <= ``max_tokens``."""
    batches: list[list[int]] = []
    current: list[int] = []
    for i in sorted(range(len(lengths)), key=lambda i: -lengths[i]):
        if current and (len(current) + 1) * lengths[current[0]] > max_tokens:
            batches.append(current)
            current = []
        current.append(i)
    if current:
        batches.append(current)
    return batches


def epoch_plan(lengths: Sequence[int], cfg: TrainConfig, epoch: int) -> Plan:
    """One epoch's micro-batches of rows of example indices, seeded by ``cfg.seed`` and epoch."""
    rng = random.Random(cfg.seed * 100_003 + epoch)
    order = list(range(len(lengths)))
    rng.shuffle(order)
    shuffled = [lengths[i] for i in order]
    if cfg.packing:
        rows = [[order[j] for j in row] for row in pack(shuffled, cfg.seq_len)]
    else:
        rows = [[i] for i in order]
    row_lengths = [sum(lengths[i] for i in row) for row in rows]
    plan = [
        [rows[r] for r in batch] for batch in plan_batches(row_lengths, cfg.max_tokens_per_batch)
    ]
    rng.shuffle(plan)
    return plan


# --- collation ---


def block_causal_mask(segments: torch.Tensor) -> torch.Tensor:
    """``[rows, 1, seq, seq]`` bool: a token attends to earlier tokens of its own segment.

    ``segments`` is ``[rows, seq]``; padding is one more segment, so no query row is all False.
    """
    seq = segments.shape[1]
    same = segments[:, :, None] == segments[:, None, :]
    causal = torch.ones(seq, seq, dtype=torch.bool, device=segments.device).tril()
    return (same & causal).unsqueeze(1)


def collate(rows: Sequence[Sequence[Encoded]], pad_id: int, *, varlen: bool = False) -> Batch:
    """Right-padded tensors for rows of packed examples (one flat row, no mask, if ``varlen``)."""
    if varlen:
        rows = [[e for row in rows for e in row]]
    width = max(sum(len(e) for e in row) for row in rows)
    shape = (len(rows), width)
    input_ids = torch.full(shape, pad_id, dtype=torch.long)
    labels = torch.full(shape, IGNORE, dtype=torch.long)
    position_ids = torch.zeros(shape, dtype=torch.long)
    segments = torch.full(shape, -1, dtype=torch.long)
    for r, row in enumerate(rows):
        start = 0
        for k, example in enumerate(row):
            end = start + len(example)
            input_ids[r, start:end] = torch.tensor(example.input_ids)
            labels[r, start:end] = torch.tensor(example.labels)
            position_ids[r, start:end] = torch.arange(len(example))
            segments[r, start:end] = k
            start = end
    tokens = int((segments >= 0).sum())
    mask = None if varlen else block_causal_mask(segments)
    return Batch(input_ids, labels, position_ids, mask, tokens)
