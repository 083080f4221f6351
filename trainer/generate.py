"""Batched chat generation for evaluation: the same prompt tokens as training, new text only.

Prompts go through the tokenizer's chat template exactly as in ``trainer.batches`` (so a student
is asked what it was trained on), are sorted by length into batches, left-padded, and decoded
greedily (``temperature=0``) or by sampling (``temperature``, ``top_p``). Generation ends at eos
or the template's end-of-turn token; ``stop`` strings also end it, and are cut from the text with
what follows. Works on a base model and on a PEFT model alike.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from transformers import GenerationConfig

from trainer.batches import end_of_turn_ids, prompt_ids
from trainer.examples import Example

Messages = Sequence[dict[str, Any]]


def generate(
    model: Any,
    tokenizer: Any,
    examples_or_messages: Sequence[Example] | Sequence[Messages],
    *,
    max_new_tokens: int,
    batch_size: int = 16,
    temperature: float = 0.0,
    top_p: float = 1.0,
    stop: Sequence[str] | None = None,
    seed: int | None = None,
) -> list[str]:
    """The model's answer to each conversation, in input order, without the prompt."""
    prompts = [prompt_ids(tokenizer, _messages(item)) for item in examples_or_messages]
    stops = sorted({tokenizer.eos_token_id, end_of_turn_ids(tokenizer)[-1]})
    config = GenerationConfig(  # type: ignore[no-untyped-call]
        max_new_tokens=max_new_tokens,
        do_sample=temperature > 0,
        temperature=temperature if temperature > 0 else None,
        top_p=top_p if temperature > 0 and top_p < 1.0 else None,
        eos_token_id=stops,
        pad_token_id=tokenizer.pad_token_id,
        stop_strings=list(stop) if stop else None,
    )
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    answers: dict[int, str] = {}
    was_training = model.training
    model.eval()
    try:
        if seed is not None:
            torch.manual_seed(seed)
        for start in range(0, len(order), batch_size):
            chunk = order[start : start + batch_size]
            texts = _generate_batch(model, tokenizer, [prompts[i] for i in chunk], config, stops)
            answers.update(zip(chunk, texts, strict=True))
    finally:
        model.train(was_training)
    return [_cut(answers[i], stop) for i in range(len(prompts))]


def _messages(item: Example | Messages) -> Messages:
    return item.messages if isinstance(item, Example) else item


@torch.inference_mode()
def _generate_batch(
    model: Any,
    tokenizer: Any,
    prompts: list[list[int]],
    config: GenerationConfig,
    stops: list[int],
) -> list[str]:
    """Left-pad ``prompts``, generate, and decode each row's new tokens up to its first stop."""
    width = max(len(p) for p in prompts)
    input_ids = torch.full((len(prompts), width), tokenizer.pad_token_id, dtype=torch.long)
    attention_mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for row, prompt in enumerate(prompts):
        input_ids[row, width - len(prompt) :] = torch.tensor(prompt)
        attention_mask[row, width - len(prompt) :] = 1
    device = next(model.parameters()).device
    out = model.generate(
        input_ids=input_ids.to(device),
        attention_mask=attention_mask.to(device),
        generation_config=config,
        tokenizer=tokenizer if config.stop_strings else None,
    )
    texts = []
    for row in out[:, width:].tolist():
        ends = [row.index(s) for s in stops if s in row]
        texts.append(tokenizer.decode(row[: min(ends, default=len(row))], skip_special_tokens=True))
    return texts


def _cut(text: str, stop: Sequence[str] | None) -> str:
    """``text`` up to the first stop string."""
    for s in stop or ():
        at = text.find(s)
        if at >= 0:
            text = text[:at]
    return text
