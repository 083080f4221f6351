"""The real offline base, SmolLM2-135M-Instruct (GGUF): its tokens, and one short LoRA run."""

from __future__ import annotations

import copy
import math
from pathlib import Path
from typing import Any

import pytest
import torch

from trainer.batches import IGNORE, collate, encode, encode_all, end_of_turn_ids, prompt_ids
from trainer.config import TrainConfig
from trainer.examples import Example
from trainer.generate import generate
from trainer.loop import train
from trainer.model import attach_lora, load_adapter, load_base, resolve_base, save_adapter
from trainer.tiny import tiny_examples

COMPLETIONS = [
    "positive",
    " leading space",
    '{"name": "Ada", "city": "London"}',
    "line one\nline two\n",
    "ünïcödé — 東京 🙂",
]
SYSTEMS = [None, "Classify the sentiment."]  # without one, the template adds SmolLM's own

pytestmark = pytest.mark.slow  # loads the real SmolLM2 base, and trains it


@pytest.fixture(scope="module")
def smollm2() -> tuple[Any, Any]:
    """SmolLM2 loaded once for this module (about 20 s on 2 cores)."""
    return load_base(resolve_base("smollm2"))


def _example(completion: str, system: str | None) -> Example:
    messages = [{"role": "user", "content": "Is this review good? I love it."}]
    if system is not None:
        messages.insert(0, {"role": "system", "content": system})
    return Example(request_id="r", messages=messages, completion=completion, group="g")


@pytest.mark.parametrize("system", SYSTEMS)
@pytest.mark.parametrize("completion", COMPLETIONS)
def test_tokens_equal_the_template_and_labels_only_the_answer(smollm2, completion, system) -> None:  # type: ignore[no-untyped-def]
    """SmolLM2: prompt + answer tokens equal the template's; labels are -100 on the prompt only."""
    _, tokenizer = smollm2
    example = _example(completion, system)
    encoded = encode(tokenizer, example, end_of_turn_ids(tokenizer))
    turn = [*example.messages, {"role": "assistant", "content": completion}]
    full = tokenizer(tokenizer.apply_chat_template(turn, tokenize=False), add_special_tokens=False)
    assert list(encoded.input_ids) == full["input_ids"][: len(encoded)]
    assert tokenizer.decode(full["input_ids"][len(encoded) :]) == "\n"

    prompt = prompt_ids(tokenizer, example.messages)
    assert encoded.prompt_len == len(prompt)
    assert encoded.labels[: len(prompt)] == [IGNORE] * len(prompt)
    answer = encoded.labels[len(prompt) :]
    assert answer[-1] == tokenizer.convert_tokens_to_ids("<|im_end|>") == tokenizer.eos_token_id
    assert tokenizer.decode(answer) == completion + "<|im_end|>"


def test_train_save_reload_generate(smollm2, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """Two LoRA steps on SmolLM2, saved, reloaded by PEFT with equal logits, then generation."""
    base, tokenizer = smollm2
    cfg = TrainConfig(seq_len=128, max_tokens_per_batch=128, max_steps=2, log_every=1)
    examples = tiny_examples(4)
    peft = attach_lora(copy.deepcopy(base), cfg)
    result = train(peft, tokenizer, examples, cfg, device="cpu")
    assert result.steps == 2 and all(math.isfinite(p.loss) for p in result.curve)

    out = save_adapter(peft, tmp_path / "adapter", config=cfg)
    reloaded = load_adapter(copy.deepcopy(base), out)
    encoded, _ = encode_all(tokenizer, examples[:2], cfg)
    inputs = collate([[e] for e in encoded], tokenizer.pad_token_id).inputs("cpu")
    with torch.no_grad():
        torch.testing.assert_close(reloaded(**inputs).logits, peft(**inputs).logits)

    answers = generate(reloaded, tokenizer, examples, max_new_tokens=4, batch_size=4)
    assert len(answers) == 4 and all(isinstance(a, str) for a in answers)
    assert any(a.strip() for a in answers)
