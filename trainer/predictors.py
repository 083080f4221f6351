"""The predictors evaluation compares: a model answering test examples, greedily or sampling as
the task's traffic does (``trainer.decoding``), and answers computed once and served from memory
(the zero-shot base's, shared by every run of a sweep)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from trainer.config import TrainConfig
from trainer.decoding import as_traffic
from trainer.examples import Example
from trainer.generate import generate

Predictor = Callable[[list[Example]], list[str]]


def greedy_predictor(model: Any, tokenizer: Any, max_new: int, cfg: TrainConfig) -> Predictor:
    """The model answering greedily (deterministic: the evaluation's first figures)."""

    def predict(examples: list[Example]) -> list[str]:
        return generate(
            model, tokenizer, examples, max_new_tokens=max_new, batch_size=cfg.eval_batch_size
        )

    return predict


def sampled_predictor(model: Any, tokenizer: Any, max_new: int, cfg: TrainConfig) -> Predictor:
    """The model answering each example with the sampling its own request used (seeded)."""

    def generate_at(examples: list[Example], temperature: float, top_p: float) -> list[str]:
        return generate(
            model, tokenizer, examples, max_new_tokens=max_new,
            batch_size=cfg.eval_batch_size, temperature=temperature, top_p=top_p, seed=cfg.seed,
        )  # fmt: skip

    return as_traffic(generate_at)


def cached(predict: Predictor, tests: dict[str, list[Example]]) -> Predictor:
    """``predict``'s answers to every test example, computed now and served from memory."""
    answers: dict[str, str] = {}
    for examples in tests.values():
        if examples:
            answers.update(zip((e.request_id for e in examples), predict(examples), strict=True))

    def cached(examples: list[Example]) -> list[str]:
        return [answers[e.request_id] for e in examples]

    return cached


def answer_budget(tokenizer: Any, tests: dict[str, list[Example]], cap: int) -> int:
    """New tokens to generate: the longest reference answer plus slack, within ``cap``."""
    longest = max(
        (len(tokenizer(e.completion, add_special_tokens=False)["input_ids"])
         for examples in tests.values() for e in examples),
        default=cap,
    )  # fmt: skip
    return min(cap, int(longest * 1.5) + 8)
