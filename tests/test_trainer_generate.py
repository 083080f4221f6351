"""Batched generation: padding-independent answers, stops, adapters, input forms."""

from __future__ import annotations

import pytest

from trainer.config import TrainConfig
from trainer.generate import generate
from trainer.model import attach_lora
from trainer.tiny import tiny_examples, tiny_model, tiny_tokenizer

PROMPTS = [
    [{"role": "user", "content": "hi"}],
    [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is 2 + 2?"}],
    [{"role": "user", "content": "Summarize the ticket: the customer cannot log in at all."}],
    [{"role": "user", "content": "Translate: good morning"}],
]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def tokenizer():  # type: ignore[no-untyped-def]
    return tiny_tokenizer()


@pytest.fixture(scope="module")
def model(tokenizer):  # type: ignore[no-untyped-def]
    return tiny_model(tokenizer, seed=1)


def test_batched_answers_equal_one_by_one(model, tokenizer) -> None:  # type: ignore[no-untyped-def]
    """Greedy answers do not depend on batching or left padding, and come in input order."""
    batched = generate(model, tokenizer, PROMPTS, max_new_tokens=6, batch_size=4)
    alone = [generate(model, tokenizer, [p], max_new_tokens=6, batch_size=1)[0] for p in PROMPTS]
    assert batched == alone
    assert len(set(batched)) > 1  # the prompts really got different answers


def test_stop_strings_cut_the_answer(model, tokenizer) -> None:  # type: ignore[no-untyped-def]
    """An answer ends before the first stop string; answers without it are whole."""
    full = generate(model, tokenizer, PROMPTS, max_new_tokens=8, batch_size=4)
    stop = next(ch for answer in full for ch in answer[1:] if ch.isascii() and ch.isalnum())
    cut = generate(model, tokenizer, PROMPTS, max_new_tokens=8, batch_size=4, stop=[stop])
    for whole, part in zip(full, cut, strict=True):
        assert part == whole[: whole.find(stop)] if stop in whole else part == whole


def test_fresh_adapter_changes_no_answer(model, tokenizer) -> None:  # type: ignore[no-untyped-def]
    """A PEFT model with an untrained adapter (B = 0) answers like its base."""
    base = generate(model, tokenizer, PROMPTS, max_new_tokens=6, batch_size=2)
    peft = attach_lora(tiny_model(tokenizer, seed=1), TrainConfig())
    peft.train()
    assert generate(peft, tokenizer, PROMPTS, max_new_tokens=6, batch_size=2) == base
    assert peft.training  # the mode it had is given back


def test_examples_and_messages_give_the_same_answers(model, tokenizer) -> None:  # type: ignore[no-untyped-def]
    """Examples are prompted with their messages; their completion is not shown."""
    examples = tiny_examples(3)
    by_example = generate(model, tokenizer, examples, max_new_tokens=4, batch_size=3)
    by_messages = generate(model, tokenizer, [e.messages for e in examples], max_new_tokens=4)
    assert by_example == by_messages


def test_sampling_is_seeded(model, tokenizer) -> None:  # type: ignore[no-untyped-def]
    """With a temperature, the same seed gives the same samples."""
    first = generate(model, tokenizer, PROMPTS, max_new_tokens=6, temperature=0.8, seed=7)
    again = generate(model, tokenizer, PROMPTS, max_new_tokens=6, temperature=0.8, seed=7)
    assert first == again
