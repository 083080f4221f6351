"""How much memory a training run needs, and the batch shape that fits the machine it is given.

``plan(shape, device, budget, lengths, cfg)`` is pure: the base's shape, the device, a byte budget
and the training set's lengths in, a ``MemoryPlan`` out (or ``DoesNotFit`` naming the numbers).
The estimate, in bytes, for ``T`` tokens per micro-batch in rows of ``S`` tokens:

    weights      params x dtype bytes                       (the frozen base)
    lora         lora params x 16                           (fp32 value, grad, two AdamW moments)
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
``max_tokens_per_batch`` asks and the budget allows; gradient accumulation raised so that tokens
per optimizer step stay ``max_tokens_per_batch x grad_accum_steps``; gradient checkpointing only
when one row would not fit without it.
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


@dataclass(frozen=True)
class Device:
    kind: str  # "cpu" or "cuda"
    materializes_scores: bool  # attention keeps rows x heads x S² scores (eager attention)
    activation_bytes: int  # 4 for fp32, 2 under bf16 autocast
    peak_factor: float = 1.0  # a step's peak over the tensors autograd keeps


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

    def apply(self, cfg: TrainConfig) -> TrainConfig:
        """``cfg`` with the plan's row length, micro-batch and accumulation."""
        return replace(
            cfg,
            seq_len=self.row_len,
            max_tokens_per_batch=self.tokens_per_micro,
            grad_accum_steps=self.accum,
        )

    def describe(self, shape: Shape, device: Device) -> str:
        """A short block for the run's output."""
        return "\n".join(
            [
                f"[memory] {shape.name} on {device.kind}: budget {self.budget / GIB:.1f} GiB",
                f"[memory] {self.estimate.describe()}",
                f"[memory] rows of {self.row_len} tokens, {self.tokens_per_micro} tokens per "
                f"micro-batch x {self.accum} accumulated, gradient checkpointing "
                + ("on" if self.checkpointing else "off"),
            ]
        )


def estimate(shape: Shape, device: Device, tokens: int, row_len: int, share: float,
             checkpointing: bool) -> Estimate:  # fmt: skip
    """Peak bytes of a step with ``tokens`` per micro-batch in rows of ``row_len``."""
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
    return Estimate(
        weights=shape.params * shape.dtype_bytes,
        lora=shape.lora_params * LORA_BYTES_PER_PARAM,
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
    shape: Shape, device: Device, budget: int, lengths: Lengths, cfg: TrainConfig
) -> MemoryPlan:
    """Row length, tokens per micro-batch, accumulation and checkpointing that fit ``budget``.

    Raises ``DoesNotFit`` when one row does not fit even with gradient checkpointing.
    """
    row = row_length(lengths.longest, cfg, shape.context)
    share = lengths.label_share

    def rows_that_fit(checkpointing: bool) -> int:
        fixed = estimate(shape, device, 0, row, share, checkpointing).total
        per_row = estimate(shape, device, row, row, share, checkpointing).total - fixed
        return max(0, (budget - fixed) // max(1, per_row))

    checkpointing = rows_that_fit(False) < 1
    fit = rows_that_fit(checkpointing)
    if fit < 1:
        needed = estimate(shape, device, row, row, share, True).total
        raise DoesNotFit(needed, budget, row, shape.name)
    asked = cfg.max_tokens_per_batch * cfg.grad_accum_steps
    if fit * row >= cfg.max_tokens_per_batch:
        tokens, accum = max(row, cfg.max_tokens_per_batch), cfg.grad_accum_steps
    else:
        tokens = fit * row
        accum = math.ceil(asked / tokens)
    return MemoryPlan(
        row_len=row,
        tokens_per_micro=tokens,
        accum=accum,
        checkpointing=checkpointing,
        estimate=estimate(shape, device, tokens, row, share, checkpointing),
        budget=budget,
    )
