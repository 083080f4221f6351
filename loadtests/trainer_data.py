"""The benchmark's data: synthetic support-ticket chats of varied length, and their tokenizer.

Each example is a ``trainer.synthetic`` ticket (system prompt, user ticket) whose user turn is
padded with support-desk words up to a length drawn uniformly from ``[min_len, max_len]`` tokens,
answered with the teacher's JSON plus a short explanation (up to a fifth of the example). The
tokenizer is ``trainer.tiny``'s byte-level BPE trained on those words, so a word is about one
token; only token ids matter to throughput, and every id is below any model's vocabulary.
"""

from __future__ import annotations

import random
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final

from trainer.batches import Encoded, encode_all, end_of_turn_ids, prompt_ids
from trainer.config import TrainConfig
from trainer.examples import Example
from trainer.synthetic import CATEGORIES, SYSTEM, answer, messages, ticket
from trainer.tiny import tiny_tokenizer

WORDS: Final = (
    "account", "access", "after", "again", "agent", "app", "billing", "browser", "card", "cart",
    "change", "checkout", "customer", "dashboard", "data", "delivery", "device", "email", "error",
    "export", "file", "form", "help", "invoice", "issue", "login", "message", "mobile", "network",
    "order", "page", "password", "payment", "phone", "plan", "price", "problem", "profile",
    "refund", "report", "request", "screen", "server", "service", "settings", "shipping",
    "status", "support", "team", "ticket", "today", "update", "upload", "user", "week", "work",
    "because", "since", "before", "while", "when", "still", "never", "always",
)  # fmt: skip
VOCAB_SIZE: Final = 1024


@dataclass(frozen=True)
class DataStats:
    examples: int
    tokens: int  # real tokens over all examples
    label_tokens: int  # tokens the loss is taken on
    min_len: int
    mean_len: float
    max_len: int


def make_tokenizer() -> Any:
    """The tiny BPE, trained on tickets and the padding words: a word is about one token."""
    rng = random.Random(0)
    lines = [" ".join(rng.sample(WORDS, len(WORDS))) for _ in range(40)]
    tickets = [ticket(rng)[0] for _ in range(200)]
    answers = [answer(category) for category in CATEGORIES]
    return tiny_tokenizer([*lines, *tickets, *answers, *[SYSTEM] * 20], vocab_size=VOCAB_SIZE)


def make_examples(
    tokenizer: Any, n: int, min_len: int, max_len: int, seed: int = 0
) -> list[Example]:
    """``n`` chat examples whose token lengths spread over ``[min_len, max_len]``."""
    rng = random.Random(seed)
    per_word = _tokens_per_word(tokenizer)
    end_of_turn = len(end_of_turn_ids(tokenizer))
    return [
        _example(tokenizer, rng, i, rng.randint(min_len, max_len), per_word, end_of_turn)
        for i in range(n)
    ]


def encode(tokenizer: Any, examples: Sequence[Example], seq_len: int) -> list[Encoded]:
    """The examples tokenized exactly as the training loop does; all must fit ``seq_len``."""
    cfg = TrainConfig(seq_len=seq_len, max_tokens_per_batch=max(seq_len, 8192))
    encoded, dropped = encode_all(tokenizer, examples, cfg)
    if dropped:
        longest = max(len(e) for e in encode_all(tokenizer, examples, _no_limit())[0])
        raise SystemExit(
            f"trainer_throughput: {dropped} examples exceed --seq-len {seq_len} "
            f"(longest {longest} tokens); lower --max-len or raise --seq-len"
        )
    return encoded


def stats(encoded: Sequence[Encoded]) -> DataStats:
    lengths = [len(e) for e in encoded]
    return DataStats(
        examples=len(encoded),
        tokens=sum(lengths),
        label_tokens=sum(len(e) - e.prompt_len for e in encoded),
        min_len=min(lengths),
        mean_len=round(statistics.fmean(lengths), 1),
        max_len=max(lengths),
    )


def _example(
    tokenizer: Any, rng: random.Random, i: int, length: int, per_word: float, end_of_turn: int
) -> Example:
    text, category = ticket(rng)
    completion = (answer(category) + " " + _words(rng, rng.randint(0, length // 5))).rstrip()
    answer_len = len(tokenizer(completion, add_special_tokens=False)["input_ids"]) + end_of_turn
    prompt_len = len(prompt_ids(tokenizer, messages(text)))
    extra = round(max(0, length - prompt_len - answer_len) / per_word)
    user = (text + " " + _words(rng, extra)).rstrip()
    return Example(
        request_id=f"bench-{i}",
        messages=messages(user),
        completion=completion,
        group=f"user-{i % 97}",
        label=category,
    )


def _words(rng: random.Random, n: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(n))


def _tokens_per_word(tokenizer: Any) -> float:
    sample = " " + " ".join(WORDS)
    return len(tokenizer(sample, add_special_tokens=False)["input_ids"]) / len(WORDS)


def _no_limit() -> TrainConfig:
    return TrainConfig(seq_len=1 << 20, max_tokens_per_batch=1 << 20)
