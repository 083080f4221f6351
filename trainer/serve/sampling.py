"""Choosing one request's next token from the model's scores, as LoRAX's server does.

Every request of a batch chooses for itself: its own repetition penalty and warpers, and its
own seeded ``torch.Generator``, so a sampled answer depends on the seed alone, never on the
requests it happened to share a batch with. The reported logprob is the chosen token's under
the distribution it was chosen from (after the penalty and the warpers).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from transformers import (
    LogitsProcessor,
    LogitsProcessorList,
    RepetitionPenaltyLogitsProcessor,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
    TypicalLogitsWarper,
)

from trainer.serve.protocol import Sampling


@dataclass(frozen=True)
class Choice:
    token_id: int
    logprob: float
    alternatives: tuple[tuple[int, float], ...]  # the likeliest tokens and their logprobs


def processors_for(sampling: Sampling) -> LogitsProcessorList:
    """The penalty, then the warpers (only when sampling: greedy takes the top token anyway)."""
    steps: list[LogitsProcessor] = []
    if sampling.repetition_penalty != 1.0:
        steps.append(RepetitionPenaltyLogitsProcessor(sampling.repetition_penalty))
    if sampling.do_sample:
        if sampling.temperature != 1.0:
            steps.append(TemperatureLogitsWarper(sampling.temperature))
        if sampling.top_k > 0:
            steps.append(TopKLogitsWarper(sampling.top_k))
        if sampling.top_p < 1.0:
            steps.append(TopPLogitsWarper(sampling.top_p))
        if sampling.typical_p < 1.0:
            steps.append(TypicalLogitsWarper(sampling.typical_p))
    return LogitsProcessorList(steps)


class RowSampler:
    """One request's token chooser."""

    def __init__(self, sampling: Sampling, alternatives: int, device: torch.device) -> None:
        self._processors = processors_for(sampling)
        self._alternatives = alternatives
        self._generator: torch.Generator | None = None
        if sampling.do_sample:
            self._generator = torch.Generator(device=device)
            self._generator.manual_seed(sampling.seed)

    def choose(self, context: torch.Tensor, scores: torch.Tensor) -> Choice:
        """The next token after ``context`` (1-d token ids) given the raw ``scores`` (1-d)."""
        ids: Any = context[None]
        scores = self._processors(ids, scores[None].float())[0]
        logprobs = torch.log_softmax(scores, dim=-1)
        if self._generator is not None:
            token = int(torch.multinomial(logprobs.exp(), 1, generator=self._generator))
        else:
            token = int(torch.argmax(scores))
        alternatives: tuple[tuple[int, float], ...] = ()
        if self._alternatives:
            top = torch.topk(logprobs, min(self._alternatives, logprobs.numel()))
            alternatives = tuple(
                (int(i), float(v)) for i, v in zip(top.indices, top.values, strict=True)
            )
        return Choice(token, float(logprobs[token]), alternatives)
