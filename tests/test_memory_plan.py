"""The memory plan: pure choices from shape, device, budget, lengths; its estimate vs autograd."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from trainer.batches import Encoded, collate, encode_all
from trainer.config import TrainConfig
from trainer.loop import train
from trainer.memory import (
    GIB,
    Device,
    DoesNotFit,
    Lengths,
    Shape,
    estimate,
    plan,
    row_length,
    share_step,
)
from trainer.memory_facts import device_of, lengths_of, shape_of
from trainer.model import attach_lora
from trainer.step import TokenLoss
from trainer.tiny import tiny_examples, tiny_model, tiny_tokenizer

SMOLLM2 = Shape(
    name="SmolLM2-135M", layers=30, hidden=576, intermediate=1536, heads=9, vocab=49152,
    context=8192, params=134_515_008, dtype_bytes=4, lora_params=4_884_480,
    head_on_labelled_only=True,
)  # fmt: skip
CPU = Device("cpu", materializes_scores=True, activation_bytes=4)
CUDA = Device("cuda", materializes_scores=False, activation_bytes=2)
SHORT = Lengths(longest=90, label_share=0.1)
LONG = Lengths(longest=1000, label_share=0.5)
DEFAULTS = TrainConfig()


def _needs(tokens: int, row: int, *, device: Device = CPU, ckpt: bool = False) -> int:
    return estimate(SMOLLM2, device, tokens, row, LONG.label_share, ckpt).total


@pytest.mark.parametrize(
    ("longest", "cfg", "context", "row"),
    [
        (90, DEFAULTS, 8192, 128),  # ~80-token examples: no 1,024-token rows
        (128, DEFAULTS, 8192, 128),  # already a multiple of 64
        (1000, DEFAULTS, 8192, 1024),  # long data: seq_len is the bound
        (1000, TrainConfig(seq_len=256, max_tokens_per_batch=1024), 8192, 256),
        (1000, DEFAULTS, 512, 512),  # the base's context is the bound
    ],
)
def test_row_length_follows_the_data_within_bounds(longest, cfg, context, row) -> None:  # type: ignore[no-untyped-def]
    """Rows are the longest example rounded up to 64, within seq_len and the base's context."""
    shape = dataclasses.replace(SMOLLM2, context=context)
    chosen = plan(shape, CPU, 64 * GIB, Lengths(longest, 0.1), cfg)
    assert chosen.row_len == row


def test_ample_budget_keeps_the_configured_batch() -> None:
    """With room to spare, tokens per micro-batch and accumulation are the configuration's."""
    chosen = plan(SMOLLM2, CPU, 64 * GIB, SHORT, DEFAULTS)
    assert (chosen.tokens_per_micro, chosen.accum, chosen.checkpointing) == (1024, 1, False)
    assert chosen.apply(DEFAULTS).seq_len == 128


def test_a_device_past_its_efficient_size_accumulates_instead() -> None:
    """Where a bigger micro-batch is no faster (CPU), the step is taken in efficient pieces:
    the same tokens per optimizer step, a fraction of the memory."""
    cpu = dataclasses.replace(CPU, efficient_tokens=2048)
    cfg = TrainConfig(max_tokens_per_batch=8192)
    chosen = plan(SMOLLM2, cpu, 64 * GIB, SHORT, cfg)
    assert (chosen.tokens_per_micro, chosen.accum) == (2048, 4)
    assert chosen.estimate.total < plan(SMOLLM2, CPU, 64 * GIB, SHORT, cfg).estimate.total


@pytest.mark.parametrize(
    ("tokens", "accum", "row", "ranks", "shared"),
    [
        (2048, 4, 128, 1, (2048, 4)),  # one rank: as planned
        (2048, 4, 128, 2, (2048, 2)),  # micro-batches split among the ranks
        (2048, 3, 128, 2, (2048, 2)),  # ...rounded up: a step never shrinks
        (2048, 1, 128, 2, (1024, 1)),  # fewer micro-batches than ranks: each cut to a share
        (2048, 1, 128, 3, (640, 1)),  # ...in whole rows
        (256, 1, 256, 4, (256, 1)),  # never under one row
    ],
)
def test_ranks_share_an_optimizer_step(tokens, accum, row, ranks, shared) -> None:  # type: ignore[no-untyped-def]
    """N data-parallel ranks together take about the step one process would."""
    assert share_step(tokens, accum, row, ranks) == shared


def test_a_plan_for_ranks_counts_the_steps_micro_batches_over_all_of_them() -> None:
    """``apply`` sets grad_accum_steps to the micro-batches of a step over every rank."""
    cfg = TrainConfig(max_tokens_per_batch=2048, grad_accum_steps=4)
    chosen = plan(SMOLLM2, CPU, 64 * GIB, SHORT, cfg, ranks=2)
    assert (chosen.tokens_per_micro, chosen.accum, chosen.ranks) == (2048, 2, 2)
    assert chosen.apply(cfg).grad_accum_steps == 4
    assert "on each of 2 ranks" in chosen.describe(SMOLLM2, CPU)


def test_tight_budget_trades_micro_batch_for_accumulation() -> None:
    """Fewer tokens per micro-batch, more accumulation, tokens per step kept (within one)."""
    cfg = TrainConfig(max_tokens_per_batch=8192, grad_accum_steps=2)
    chosen = plan(SMOLLM2, CPU, _needs(3000, 1024), LONG, cfg)
    assert chosen.row_len == 1024 and chosen.tokens_per_micro == 2048
    assert chosen.accum == 8  # 16,384 tokens per step as asked
    assert not chosen.checkpointing
    assert chosen.estimate.total <= chosen.budget


def test_checkpointing_turns_on_when_one_row_does_not_fit_without() -> None:
    """A budget under one plain row but over one checkpointed row switches checkpointing on."""
    budget = _needs(1024, 1024) - 1
    assert _needs(1024, 1024, ckpt=True) <= budget
    chosen = plan(SMOLLM2, CPU, budget, LONG, DEFAULTS)
    assert chosen.checkpointing and chosen.tokens_per_micro >= 1024
    assert chosen.estimate.total <= budget


def test_impossible_budget_names_the_numbers() -> None:
    """When not one checkpointed row fits, the error gives what is needed and what is there."""
    with pytest.raises(DoesNotFit) as caught:
        plan(SMOLLM2, CPU, 1 * GIB // 4, LONG, DEFAULTS)
    message = str(caught.value)
    assert "one row of 1024 tokens with SmolLM2-135M" in message
    assert "0.2 GiB available" in message and "needs about 0." in message
    assert caught.value.needed > caught.value.available


def test_cuda_without_materialized_scores_fits_more_than_cpu() -> None:
    """At the same budget, attention that keeps no scores leaves room for more tokens."""
    fp32_cuda = dataclasses.replace(CUDA, activation_bytes=4)
    budget, cfg = _needs(3500, 1024), TrainConfig(max_tokens_per_batch=16384)
    cpu = plan(SMOLLM2, CPU, budget, LONG, cfg)
    cuda = plan(SMOLLM2, fp32_cuda, budget, LONG, cfg)
    assert cuda.tokens_per_micro > cpu.tokens_per_micro


def test_the_weights_dtype_counts() -> None:
    """bfloat16 weights take half the bytes of float32 ones, and a budget can hinge on it."""
    bf16 = dataclasses.replace(SMOLLM2, dtype_bytes=2)
    full = estimate(SMOLLM2, CPU, 1024, 1024, 0.5, False)
    half = estimate(bf16, CPU, 1024, 1024, 0.5, False)
    assert full.weights == 2 * half.weights
    budget = half.total
    assert plan(bf16, CPU, budget, LONG, DEFAULTS).tokens_per_micro >= 1024
    assert plan(SMOLLM2, CPU, budget, LONG, DEFAULTS).checkpointing


@pytest.mark.parametrize("device", [CPU, CUDA])
def test_activations_scale_with_tokens(device: Device) -> None:
    """Twice the rows of the same length: twice the activations, attention and logits."""
    one = estimate(SMOLLM2, device, 2048, 1024, 0.5, False)
    two = estimate(SMOLLM2, device, 4096, 1024, 0.5, False)
    assert two.activations == 2 * one.activations
    assert two.attention == 2 * one.attention and two.logits == 2 * one.logits
    assert two.weights == one.weights and two.lora == one.lora


def _saved_bytes(model: object, rows: int, length: int) -> int:
    """Bytes autograd keeps for one forward, parameters left out (each storage once)."""
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}  # type: ignore[attr-defined]
    kept: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        if storage.data_ptr() not in params:
            kept[storage.data_ptr()] = storage.nbytes()
        return t

    batch = collate([[Encoded(tuple(range(1, length + 1)), length - 1)]] * rows, 0)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        TokenLoss(model)(batch, "cpu").sum().backward()
    return sum(kept.values())


@pytest.mark.usefixtures("one_torch_thread")
def test_activation_estimate_is_the_right_order_for_the_tiny_model() -> None:
    """The plan's activations are within a factor 1.5 of what autograd keeps on the tiny model."""
    tokenizer = tiny_tokenizer()
    model = attach_lora(tiny_model(tokenizer), TrainConfig())
    model.train()
    shape = shape_of(model, head_on_labelled_only=True)
    measured = _saved_bytes(model, rows=4, length=128)
    planned = estimate(shape, CPU, 4 * 128, 128, 1 / 128, False).activations
    assert measured / 1.5 < planned < measured * 1.5


@pytest.mark.usefixtures("one_torch_thread")
def test_a_budget_one_row_needs_checkpointing_for_trains_with_it() -> None:
    """A budget between one row's needs with and without gradient checkpointing: the loop turns
    checkpointing on, trains in single-row micro-batches, and the LoRA weights still learn."""
    tokenizer = tiny_tokenizer()
    cfg = TrainConfig(
        seq_len=128, max_tokens_per_batch=256, max_steps=3, lora_dropout=0.0, learning_rate=1e-2,
        bf16=False,
    )
    model = attach_lora(tiny_model(tokenizer), cfg)
    examples = tiny_examples(4)
    encoded, _ = encode_all(tokenizer, examples, cfg)
    lengths = lengths_of(encoded)
    shape = shape_of(model, head_on_labelled_only=True)
    row = row_length(lengths.longest, cfg, shape.context)
    here = device_of(torch.device("cpu"), attn_impl="sdpa", bf16=False, dtype_bytes=4)
    bare = estimate(shape, here, row, row, lengths.label_share, False).total
    checkpointed = estimate(shape, here, row, row, lengths.label_share, True).total
    assert checkpointed < bare
    budget = (bare + checkpointed) / 2 / GIB
    before = {n: p.detach().clone() for n, p in model.named_parameters() if "lora_B" in n}

    tight = dataclasses.replace(cfg, memory_budget_gb=budget)
    result = train(model, tokenizer, examples, tight, device="cpu")

    assert result.memory["gradient_checkpointing"] is True
    assert result.memory["tokens_per_micro_batch"] == row
    assert result.memory["grad_accum_steps"] == -(-256 // row)
    assert result.steps == 3 and all(math.isfinite(p.loss) for p in result.curve)
    after = dict(model.named_parameters())
    assert all(not torch.equal(after[n], p) for n, p in before.items())


def test_a_step_split_into_micro_batches_keeps_its_size() -> None:
    """2,048 tokens a step where 1,536 fit: two micro-batches of 1,024, not 2 x 1,536."""
    cpu = dataclasses.replace(CPU, efficient_tokens=1536)
    chosen = plan(SMOLLM2, cpu, 64 * GIB, SHORT, TrainConfig(max_tokens_per_batch=2048))
    assert (chosen.tokens_per_micro, chosen.accum) == (1024, 2)
