"""How much memory a training run needs, and the batch shape that fits the machine it is given.

``plan(shape, device, budget, lengths, cfg)`` is pure: the base's shape, the device, a byte budget
and the training set's lengths in, a ``MemoryPlan`` out (or ``DoesNotFit`` naming the numbers).
The estimate, in bytes, for ``T`` tokens per micro-batch in rows of ``S`` tokens:

    weights      params x dtype bytes                       (the frozen base)
    lora         lora params x 16                           (fp32 value, grad, two AdamW moments)
                 sharded over N ranks (FSDP): the blocks' weights and the LoRA state / N, plus
                 two whole blocks (the one running and the next, gathered ahead)
    activations  T x layers x a x (16 hidden + 5 intermediate)      kept for backward; with
                 gradient checkpointing T x a x (layers x hidden + one layer's full set)
    attention    T x S (the bool mask) + T x S x heads x a x layers where scores materialize
    logits       T x share x vocab x 8 (fp32 logits + log-softmax) when the output layer runs on
                 the labelled tokens only, else T x vocab x (a + 8)
    transients   (peak factor - 1) x (activations + attention + logits): what a step holds at
                 its peak beyond the saved tensors (backward's temporaries, the allocator's slack)

``a`` is the activation dtype's size (2 under bf16 autocast). The factors 16 and 5 count what
autograd keeps per token in a LoRA'd Llama block (norm inputs and outputs, q/k/v, the dropout
copies LoRA makes of each linear input, attention output; gate, up, SiLU, product, its dropout
copy), measured with saved-tensor hooks on the tiny model and SmolLM2's shape. Rows x their
length never exceed ``T`` (see ``trainer.batches.plan_batches``), so ``T x S`` bounds rows x S².
The peak factor is measured too (``loadtests/trainer_memory.py``): on CPU training's peak RSS
is about 2.3x the saved tensors, whatever the row length; on CUDA it is not measured yet (1.0).

Choices: rows only as long as the data needs (its longest example rounded up to 64 tokens, within
``seq_len`` and the base's context: on CPU attention costs S² per row, so packing 80-token
examples into 1,024-token rows pays for nothing); as many tokens per micro-batch as
``max_tokens_per_batch`` asks, the budget allows and the device turns into speed (on CPU a step
of 2,048 tokens is no slower per token than one of 4,096, and takes half the memory); gradient
accumulation raised so that tokens per optimizer step stay ``max_tokens_per_batch x
grad_accum_steps``; gradient checkpointing only when one row would not fit without it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields, replace
from typing import Final

from core.errors import ConfigError
from trainer.config import TrainConfig

GIB: Final = 1 << 30
ROW_MULTIPLE: Final = 64  # row lengths are rounded up to this many tokens
HIDDEN_COPIES: Final = 16  # hidden-sized tensors autograd keeps per token per layer
INTERMEDIATE_COPIES: Final = 5  # intermediate-sized ones
LORA_BYTES_PER_PARAM: Final = 16  # fp32 value, gradient, AdamW's two moments
LOGIT_BYTES: Final = 8  # fp32 logits and their log-softmax, per vocabulary entry


class DoesNotFit(ConfigError):
    """Not even one row of training data fits the memory budget (``protege`` prints it, exit 2)."""

    def __init__(self, needed: int, available: int, row_len: int, base: str) -> None:
        super().__init__(
            f"training needs about {needed / GIB:.1f} GiB for one row of {row_len} tokens with "
            f"{base}; {available / GIB:.1f} GiB available (set memory_budget_gb, or a shorter "
            "seq_len with overlong=truncate_prompt)"
        )
        self.needed = needed
        self.available = available


@dataclass(frozen=True)
class Shape:
    """What the estimate needs to know about the base model and its adapter."""

    name: str
    layers: int
    hidden: int
    intermediate: int
    heads: int
    vocab: int
    context: int  # longest position the base was made for
    params: int  # base parameters (frozen)
    dtype_bytes: int  # bytes per base weight
    lora_params: int  # trainable parameters
    head_on_labelled_only: bool  # the loss runs the output layer on labelled tokens only
    block_params: int = 0  # frozen parameters of one decoder block (what FSDP shards)


@dataclass(frozen=True)
class Device:
    kind: str  # "cpu" or "cuda"
    materializes_scores: bool  # attention keeps rows x heads x S² scores (eager attention)
    activation_bytes: int  # 4 for fp32, 2 under bf16 autocast
    peak_factor: float = 1.0  # a step's peak over the tensors autograd keeps
    efficient_tokens: int = 0  # tokens per micro-batch past which a step is no faster; 0: none


@dataclass(frozen=True)
class Lengths:
    """The training set as the plan sees it."""

    longest: int  # tokens of the longest example
    label_share: float  # largest share of one example's tokens that are labelled


@dataclass(frozen=True)
class Estimate:
    """Bytes per term; see the module doc for each formula."""

    weights: int
    lora: int
    activations: int
    attention: int
    logits: int
    transients: int

    @property
    def total(self) -> int:
        return sum(getattr(self, f.name) for f in fields(self))

    def describe(self) -> str:
        terms = ", ".join(f"{f.name} {getattr(self, f.name) / GIB:.2f}" for f in fields(self))
        return f"{terms}: total {self.total / GIB:.2f} GiB"


@dataclass(frozen=True)
class MemoryPlan:
    row_len: int  # seq_len to train with
    tokens_per_micro: int  # max_tokens_per_batch to train with
    accum: int  # grad_accum_steps to train with
    checkpointing: bool  # gradient checkpointing on
    estimate: Estimate  # at these settings
    budget: int  # bytes
    ranks: int = 1  # data-parallel processes sharing each optimizer step
    sharded: bool = False  # decoder blocks and LoRA state sharded over the ranks (FSDP)

    def apply(self, cfg: TrainConfig) -> TrainConfig:
        """``cfg`` with the plan's row length, micro-batch and accumulation (``grad_accum_steps``
        counts the micro-batches of a step over all ranks)."""
        return replace(
            cfg,
            seq_len=self.row_len,
            max_tokens_per_batch=self.tokens_per_micro,
            grad_accum_steps=self.accum * self.ranks,
        )

    def describe(self, shape: Shape, device: Device) -> str:
        """A short block for the run's output."""
        return "\n".join(
            [
                f"[memory] {shape.name} on {device.kind}: budget {self.budget / GIB:.1f} GiB",
                f"[memory] {self.estimate.describe()}",
                f"[memory] rows of {self.row_len} tokens, {self.tokens_per_micro} tokens per "
                f"micro-batch x {self.accum} accumulated"
                + (f" on each of {self.ranks} ranks" if self.ranks > 1 else "")
                + (" (blocks sharded)" if self.sharded else "")
                + ", gradient checkpointing "
                + ("on" if self.checkpointing else "off"),
            ]
        )


def estimate(shape: Shape, device: Device, tokens: int, row_len: int, share: float,
             checkpointing: bool, shards: int = 1) -> Estimate:  # fmt: skip
    """Peak bytes of a step with ``tokens`` per micro-batch in rows of ``row_len``, the blocks
    sharded over ``shards`` ranks."""
    a = device.activation_bytes
    per_layer = a * (HIDDEN_COPIES * shape.hidden + INTERMEDIATE_COPIES * shape.intermediate)
    scores = row_len * shape.heads * a if device.materializes_scores else 0
    if checkpointing:
        activations = tokens * (shape.layers * shape.hidden * a + per_layer)
        attention = tokens * row_len + tokens * scores
    else:
        activations = tokens * shape.layers * per_layer
        attention = tokens * row_len + tokens * scores * shape.layers
    if shape.head_on_labelled_only:
        logits = math.ceil(tokens * share) * shape.vocab * LOGIT_BYTES
    else:
        logits = tokens * shape.vocab * (a + LOGIT_BYTES)
    blocks = shape.layers * shape.block_params if shards > 1 else 0
    gathered = 2 * shape.block_params if shards > 1 else 0
    return Estimate(
        weights=(shape.params - blocks + math.ceil(blocks / shards) + gathered) * shape.dtype_bytes,
        lora=math.ceil(shape.lora_params * LORA_BYTES_PER_PARAM / shards),
        activations=activations,
        attention=attention,
        logits=logits,
        transients=math.ceil((device.peak_factor - 1) * (activations + attention + logits)),
    )


def row_length(longest: int, cfg: TrainConfig, context: int) -> int:
    """The data's longest example rounded up to ``ROW_MULTIPLE``, within seq_len and context."""
    rounded = math.ceil(max(1, longest) / ROW_MULTIPLE) * ROW_MULTIPLE
    return max(8, min(rounded, cfg.seq_len, context))


def plan(
    shape: Shape,
    device: Device,
    budget: int,
    lengths: Lengths,
    cfg: TrainConfig,
    ranks: int = 1,
    sharded: bool = False,
) -> MemoryPlan:
    """Row length, tokens per micro-batch, accumulation and checkpointing that fit ``budget``
    (each rank's), the tokens of an optimizer step shared by ``ranks`` data-parallel ranks,
    the decoder blocks ``sharded`` over them or not.

    Raises ``DoesNotFit`` when one row does not fit even with gradient checkpointing.
    """
    row = row_length(lengths.longest, cfg, shape.context)
    share = lengths.label_share
    shards = ranks if sharded else 1

    def rows_that_fit(checkpointing: bool) -> int:
        fixed = estimate(shape, device, 0, row, share, checkpointing, shards).total
        per_row = estimate(shape, device, row, row, share, checkpointing, shards).total - fixed
        return max(0, (budget - fixed) // max(1, per_row))

    checkpointing = rows_that_fit(False) < 1
    fit = rows_that_fit(checkpointing)
    if fit < 1:
        needed = estimate(shape, device, row, row, share, True, shards).total
        raise DoesNotFit(needed, budget, row, shape.name)
    asked = cfg.max_tokens_per_batch * cfg.grad_accum_steps
    cap = fit * row
    if device.efficient_tokens:
        cap = min(cap, max(row, device.efficient_tokens // row * row))
    if cap >= cfg.max_tokens_per_batch:
        tokens, accum = max(row, cfg.max_tokens_per_batch), cfg.grad_accum_steps
    else:  # the fewest micro-batches that fit, each as even a share of the step as rows allow
        accum = math.ceil(asked / cap)
        tokens = min(cap, math.ceil(asked / accum / row) * row)
    tokens, accum = share_step(tokens, accum, row, ranks)
    return MemoryPlan(
        row_len=row,
        tokens_per_micro=tokens,
        accum=accum,
        checkpointing=checkpointing,
        estimate=estimate(shape, device, tokens, row, share, checkpointing, shards),
        budget=budget,
        ranks=ranks,
        sharded=shards > 1,
    )


def share_step(tokens: int, accum: int, row: int, ranks: int) -> tuple[int, int]:
    """Micro-batch tokens and micro-batches per rank so that ``ranks`` ranks together take a
    step of about ``tokens x accum`` tokens: the micro-batches split among the ranks, or when
    there are fewer micro-batches than ranks, each micro-batch cut to a share (whole rows)."""
    if ranks <= 1:
        return tokens, accum
    if accum >= ranks:
        return tokens, math.ceil(accum / ranks)
    return max(row, tokens * accum // ranks // row * row), 1
