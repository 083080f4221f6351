"""The training loop on the tiny model: what it changes, what it leaves, and its schedule."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from trainer.config import TrainConfig
from trainer.generate import generate
from trainer.loop import LogPoint, lr_at, total_steps, train
from trainer.model import attach_lora
from trainer.tiny import tiny_examples, tiny_model, tiny_tokenizer

FAST = TrainConfig(
    seq_len=128,
    max_tokens_per_batch=256,
    max_steps=30,
    learning_rate=1e-2,
    warmup_steps=2,
    lora_dropout=0.0,
    log_every=5,
)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def tokenizer():  # type: ignore[no-untyped-def]
    return tiny_tokenizer()


def test_training_changes_only_the_lora_weights(tokenizer) -> None:  # type: ignore[no-untyped-def]
    """After training every base parameter is bit-identical and every LoRA matrix has moved."""
    model = tiny_model(tokenizer)
    base_before = {name: p.detach().clone() for name, p in model.named_parameters()}
    peft = attach_lora(model, FAST)
    lora_before = {n: p.detach().clone() for n, p in peft.named_parameters() if "lora_" in n}
    train(peft, tokenizer, tiny_examples(4), FAST, device="cpu")

    after = dict(peft.named_parameters())
    base_after = {n: p for n, p in after.items() if "lora_" not in n}
    assert len(base_after) == len(base_before)
    for name, p in base_after.items():
        original = name.replace("base_model.model.", "", 1).replace(".base_layer", "")
        assert torch.equal(p, base_before[original]), name
    assert len(lora_before) == 2 * 7 * 2  # A and B, 7 linear layers, 2 blocks
    for name, p in lora_before.items():
        assert not torch.equal(after[name], p), name


def test_loss_falls_on_a_memorizable_set(tokenizer) -> None:  # type: ignore[no-untyped-def]
    """Thirty steps on four examples cut the loss to well under half its first value."""
    peft = attach_lora(tiny_model(tokenizer), FAST)
    result = train(peft, tokenizer, tiny_examples(4), FAST, device="cpu")
    assert result.curve[0].step == 1 and result.steps == 30
    assert result.final_loss < 0.5 * result.curve[0].loss
    assert result.curve[0].loss - result.final_loss > 2.0


def test_trained_student_answers_what_it_was_taught(tokenizer) -> None:  # type: ignore[no-untyped-def]
    """Greedy generation after training gives each example's completion."""
    examples = tiny_examples(4)
    peft = attach_lora(tiny_model(tokenizer), FAST)
    train(peft, tokenizer, examples, FAST, device="cpu")
    answers = generate(peft, tokenizer, examples, max_new_tokens=5, batch_size=4)
    assert answers == [e.completion for e in examples]


def test_same_seed_same_run(tokenizer) -> None:  # type: ignore[no-untyped-def]
    """Two runs with one seed (dropout on) give the same curve and the same adapter."""
    cfg = TrainConfig(
        seq_len=64, max_tokens_per_batch=64, max_steps=4, log_every=1, lora_dropout=0.1
    )
    runs = []
    for _ in range(2):
        peft = attach_lora(tiny_model(tokenizer), cfg)
        result = train(peft, tokenizer, tiny_examples(6), cfg, device="cpu")
        runs.append((result.curve, {n: p for n, p in peft.named_parameters() if "lora_" in n}))
    assert [p.loss for p in runs[0][0]] == [p.loss for p in runs[1][0]]
    for name, p in runs[0][1].items():
        assert torch.equal(p, runs[1][1][name]), name


def test_result_counts_tokens_examples_and_log_points(tokenizer) -> None:  # type: ignore[no-untyped-def]
    """on_log gets each curve point; counts cover the data fraction and dropped examples."""
    examples = tiny_examples(8)
    examples[0] = dataclasses.replace(examples[0], completion="x " * 200)
    cfg = TrainConfig(
        seq_len=64, max_tokens_per_batch=128, max_steps=7, log_every=3, data_fraction=1.0
    )
    seen: list[LogPoint] = []
    result = train(
        attach_lora(tiny_model(tokenizer), cfg),
        tokenizer,
        examples,
        cfg,
        device="cpu",
        on_log=seen.append,
    )
    assert [p.step for p in result.curve] == [1, 3, 6, 7]
    assert seen == result.curve
    assert (result.examples, result.dropped) == (7, 1)
    assert 0 < result.label_tokens < result.tokens
    assert all(p.tokens_per_s > 0 and math.isfinite(p.loss) for p in result.curve)

    half = dataclasses.replace(cfg, data_fraction=0.5)
    result = train(
        attach_lora(tiny_model(tokenizer), half), tokenizer, examples, half, device="cpu"
    )
    assert result.examples + result.dropped == 4


def test_bf16_autocast_runs(tokenizer) -> None:  # type: ignore[no-untyped-def]
    """With bf16 on, steps run under autocast (here CPU's) and the loss stays finite."""
    cfg = TrainConfig(seq_len=64, max_tokens_per_batch=128, max_steps=2, log_every=1, bf16=True)
    result = train(
        attach_lora(tiny_model(tokenizer), cfg), tokenizer, tiny_examples(2), cfg, device="cpu"
    )
    assert all(math.isfinite(p.loss) for p in result.curve)


def test_no_example_fits_is_an_error(tokenizer) -> None:  # type: ignore[no-untyped-def]
    """A run whose every example is over seq_len fails instead of training on nothing."""
    cfg = TrainConfig(seq_len=8, max_tokens_per_batch=8, max_steps=1)
    with pytest.raises(ValueError, match="seq_len=8"):
        train(
            attach_lora(tiny_model(tokenizer), cfg), tokenizer, tiny_examples(2), cfg, device="cpu"
        )


@pytest.mark.parametrize(
    ("step", "expected"),
    [
        (0, 1.0 / 11),  # warm-up from near zero...
        (9, 10.0 / 11),
        (10, 1.0),  # ...to the peak
        (55, 0.1 + 0.9 * 0.5),  # half-way through the decay
        (99, 0.1 + 0.45 * (1 + math.cos(math.pi * 89 / 90))),  # near the floor at the end
    ],
)
def test_lr_warms_up_then_decays_by_cosine(step, expected) -> None:  # type: ignore[no-untyped-def]
    """Linear warm-up to the peak, then cosine decay toward min_lr_ratio x peak."""
    cfg = TrainConfig(learning_rate=1.0, warmup_steps=10, min_lr_ratio=0.1)
    assert lr_at(step, 100, cfg) == pytest.approx(expected)


def test_warmup_ratio_and_constant_schedule() -> None:
    """warmup_ratio sizes the warm-up when warmup_steps is 0; "constant" holds the peak."""
    cfg = TrainConfig(learning_rate=1.0, warmup_ratio=0.1, schedule="constant")
    assert lr_at(9, 100, cfg) < 1.0
    assert [lr_at(s, 100, cfg) for s in (10, 50, 99)] == [1.0, 1.0, 1.0]


@pytest.mark.parametrize(
    ("epochs", "max_steps", "accum", "expected"),
    [(3.0, 0, 1, 30), (3.0, 0, 4, 8), (0.5, 0, 1, 5), (3.0, 7, 4, 7)],
)
def test_total_steps(epochs, max_steps, accum, expected) -> None:  # type: ignore[no-untyped-def]
    """Steps are epochs x batches / accumulation (rounded up), unless max_steps is set."""
    cfg = TrainConfig(epochs=epochs, max_steps=max_steps, grad_accum_steps=accum)
    assert total_steps(10, cfg) == expected
