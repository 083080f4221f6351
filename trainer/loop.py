"""The training loop: AdamW on the LoRA parameters, warm-up then cosine decay, on CPU or CUDA.

An optimizer step takes ``grad_accum_steps`` micro-batches; its loss is the mean over every
labelled token of all of them (not a mean of micro-batch means), so accumulation gives the same
update as one big batch. The forward runs under bfloat16 autocast where the device computes it
natively (``cfg.bf16``) and, on CUDA if ``cfg.compile``, through ``torch.compile``.

Data-parallel (``trainer.distributed``): every rank draws the same seeded stream of
micro-batches; each optimizer step's are split among the ranks in order, each rank scales its
loss by the step's labelled tokens over all ranks, and DDP (or FSDP, ``trainer.sharding``)
averages the gradients, so N ranks take exactly the steps one process takes with the same
micro-batches per step. How a step runs is ``trainer.step``.
"""

from __future__ import annotations

import itertools
import math
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import structlog
import torch

from trainer import distributed
from trainer.batches import Batch, Encoded, Plan, collate, encode_all, epoch_plan, subsample
from trainer.config import TrainConfig
from trainer.examples import Example
from trainer.memory import plan
from trainer.memory_facts import (
    budget_bytes,
    device_of,
    enable_checkpointing,
    lengths_of,
    peak_bytes,
    reset_peak,
    resident_bytes,
    shape_of,
)
from trainer.model import place
from trainer.sharding import shard_blocks
from trainer.step import Stepper, TokenLoss, use_bf16

log = structlog.get_logger("trainer")


@dataclass(frozen=True)
class LogPoint:
    """One point of the loss curve: the mean loss over the steps since the previous point."""

    step: int
    loss: float
    lr: float
    tokens_per_s: float  # real (non-pad) tokens per second over the same steps


@dataclass(frozen=True)
class TrainResult:
    curve: list[LogPoint]
    steps: int  # optimizer steps taken
    tokens: int  # real (non-pad) tokens through the model
    label_tokens: int  # tokens the loss was taken on (answers + end of turn)
    examples: int  # examples trained on, after data_fraction and the length limit
    dropped: int  # examples over seq_len, left out
    wall_s: float
    memory: dict[str, Any] = field(default_factory=dict)  # the memory plan trained with
    peak_memory_bytes: int = 0  # measured: peak RSS on CPU, max allocated on CUDA

    @property
    def final_loss(self) -> float:
        return self.curve[-1].loss

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.wall_s if self.wall_s > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def train(
    model: Any,
    tokenizer: Any,
    train_examples: Sequence[Example],
    cfg: TrainConfig,
    *,
    device: str | torch.device,
    on_log: Callable[[LogPoint], None] | None = None,
    say: Callable[[str], None] | None = None,
) -> TrainResult:
    """Train the LoRA parameters of ``model`` (a PEFT model) on the examples' answers.

    ``say`` gets the memory plan (``trainer.memory``), for a person; without it, it is logged.
    """
    started = time.perf_counter()
    device = torch.device(device)
    reset_peak(device)
    world = distributed.current()

    # Data: the seeded share of the examples, tokenized; those over seq_len are left out.
    encoded, dropped = _encode(tokenizer, train_examples, cfg)

    # Model and memory: only what requires grad (the LoRA matrices) is optimized; rows only as
    # long as the data needs, and micro-batches, accumulation and checkpointing that fit this
    # machine, planned before the first step rather than found out by an OOM kill.
    torch.manual_seed(cfg.seed)
    cfg, memory, shards = _ready(model, encoded, cfg, device, world, say)
    encoded = [e for e in encoded if len(e) <= cfg.seq_len]  # only the base's context cuts
    total = total_steps(len(epoch_plan([len(e) for e in encoded], cfg, 0)), cfg)
    run = Stepper(model, cfg, device, world, shards)
    steps = _steps(encoded, cfg, tokenizer.pad_token_id, run.varlen, world)

    # Loop: a step per grad_accum_steps micro-batches; a curve point every log_every steps.
    meter = _Meter(time.perf_counter())
    curve: list[LogPoint] = []
    with _progress(total, show=world.main) as bar:
        for step in range(total):
            lr = lr_at(step, total, cfg)
            meter.add(*run.step(*next(steps), lr))
            if step == 0 or (step + 1) % cfg.log_every == 0 or step + 1 == total:
                curve.append(meter.point(step + 1, lr, device))
                if world.main:
                    _report(curve[-1], bar, on_log)
            if bar is not None:
                bar.update(1)
    model.eval()
    return TrainResult(
        curve=curve,
        steps=total,
        tokens=meter.total_tokens,
        label_tokens=meter.total_labelled,
        examples=len(encoded),
        dropped=dropped,
        wall_s=time.perf_counter() - started,
        memory=memory,
        peak_memory_bytes=peak_bytes(device),
    )


def total_steps(batches_per_epoch: int, cfg: TrainConfig) -> int:
    """Optimizer steps of the run: ``max_steps`` if set, else ``epochs`` worth of batches."""
    if cfg.max_steps > 0:
        return cfg.max_steps
    return max(1, math.ceil(cfg.epochs * batches_per_epoch / cfg.grad_accum_steps))


def lr_at(step: int, total: int, cfg: TrainConfig) -> float:
    """Learning rate of optimizer step ``step`` (0-based) of ``total``: warm-up, then decay."""
    warmup = cfg.warmup_steps or round(cfg.warmup_ratio * total)
    if step < warmup:
        return cfg.learning_rate * (step + 1) / (warmup + 1)
    if cfg.schedule == "constant":
        return cfg.learning_rate
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    low = cfg.learning_rate * cfg.min_lr_ratio
    return low + 0.5 * (1.0 + math.cos(math.pi * progress)) * (cfg.learning_rate - low)


def _ready(
    model: Any,
    encoded: Sequence[Encoded],
    cfg: TrainConfig,
    device: torch.device,
    world: distributed.World,
    say: Callable[[str], None] | None,
) -> tuple[TrainConfig, dict[str, Any], list[Any]]:
    """``model`` in training mode on ``device``, ``cfg`` with the memory plan applied, the
    plan's record, and the sharded blocks (none unless ``sharding=fsdp`` over several ranks).
    A sharded base moves to the device only once sharded (``trainer.sharding``), so no device
    ever holds it whole."""
    sharded = cfg.sharding == "fsdp" and world.distributed
    model.train()
    if not sharded:
        place(model, device)
    cfg, memory = _fit_memory(model, encoded, cfg, device, world, say, sharded)
    shards = []
    if sharded:
        shards = shard_blocks(model, compute=torch.bfloat16 if use_bf16(cfg, device) else None)
        place(model, device)
    return cfg, memory, shards


def _fit_memory(
    model: Any,
    encoded: Sequence[Encoded],
    cfg: TrainConfig,
    device: torch.device,
    world: distributed.World,
    say: Callable[[str], None] | None,
    sharded: bool,
) -> tuple[TrainConfig, dict[str, Any]]:
    """``cfg`` with the memory plan's batch shape applied (checkpointing switched on if it
    says so), and the plan as a record; raises ``DoesNotFit`` naming the numbers. Every rank
    plans with the smallest rank's budget, so all take the same shape."""
    loss = TokenLoss(model)
    shape = shape_of(model, head_on_labelled_only=loss.head is not None)
    impl = str(getattr(model.config, "_attn_implementation", None) or "sdpa")
    bf16 = use_bf16(cfg, device)
    where = device_of(device, attn_impl=impl, bf16=bf16, dtype_bytes=shape.dtype_bytes)
    budget = budget_bytes(cfg, device, resident_bytes(model, device), world.local_size)
    budget = distributed.smallest(budget, world)
    chosen = plan(shape, where, budget, lengths_of(encoded), cfg, world.size, sharded)
    text = chosen.describe(shape, where)
    if world.main and say is not None:
        say(text)
    elif world.main:
        log.info("train.memory", plan=text)
    if chosen.checkpointing:
        enable_checkpointing(model)
    record = {
        "row_len": chosen.row_len,
        "tokens_per_micro_batch": chosen.tokens_per_micro,
        "grad_accum_steps": chosen.accum,
        "ranks": chosen.ranks,
        "sharded": chosen.sharded,
        "gradient_checkpointing": chosen.checkpointing,
        "estimate_bytes": chosen.estimate.total,
        "budget_bytes": chosen.budget,
    }
    return chosen.apply(cfg), record


class _Meter:
    """Loss and token counts since the last curve point, and over the whole run."""

    def __init__(self, now: float) -> None:
        self.since = now
        self.loss_sum = 0.0
        self.labelled = 0
        self.tokens = 0
        self.total_tokens = 0
        self.total_labelled = 0

    def add(self, loss_sum: float, labelled: int, tokens: int) -> None:
        self.loss_sum += loss_sum
        self.labelled += labelled
        self.tokens += tokens
        self.total_tokens += tokens
        self.total_labelled += labelled

    def point(self, step: int, lr: float, device: torch.device) -> LogPoint:
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        now = time.perf_counter()
        elapsed = max(now - self.since, 1e-9)
        point = LogPoint(step, self.loss_sum / max(1, self.labelled), lr, self.tokens / elapsed)
        self.since, self.loss_sum, self.labelled, self.tokens = now, 0.0, 0, 0
        return point


def _encode(
    tokenizer: Any, train_examples: Sequence[Example], cfg: TrainConfig
) -> tuple[list[Encoded], int]:
    """The seeded ``data_fraction`` of the examples that fit ``seq_len``, and how many did not."""
    encoded, dropped = encode_all(
        tokenizer, subsample(train_examples, cfg.data_fraction, cfg.seed), cfg
    )
    if not encoded:
        raise ValueError(f"no training example fits seq_len={cfg.seq_len}")
    if dropped:
        log.warning("train.dropped_overlong", dropped=dropped, seq_len=cfg.seq_len)
    log.info("train.start", examples=len(encoded), tokens=sum(len(e) for e in encoded))
    return encoded, dropped


def _steps(
    encoded: Sequence[Encoded],
    cfg: TrainConfig,
    pad_id: int,
    varlen: bool,
    world: distributed.World,
) -> Iterator[tuple[list[Batch], int, int]]:
    """Optimizer steps without end: this rank's share of each step's ``grad_accum_steps``
    micro-batches, collated, and the labelled and real tokens of the whole step. Micro-batches
    come epoch after epoch, each freshly shuffled and packed, the same on every rank."""
    lengths = [len(e) for e in encoded]
    labelled = [len(e) - e.prompt_len for e in encoded]
    stream = itertools.chain.from_iterable(epoch_plan(lengths, cfg, e) for e in itertools.count())
    share = cfg.grad_accum_steps // world.size
    while True:
        step: Plan = list(itertools.islice(stream, cfg.grad_accum_steps))
        every = [i for batch in step for row in batch for i in row]
        mine = step[world.rank * share : (world.rank + 1) * share]
        yield (
            [collate([[encoded[i] for i in r] for r in b], pad_id, varlen=varlen) for b in mine],
            sum(labelled[i] for i in every),
            sum(lengths[i] for i in every),
        )


def _progress(total: int, *, show: bool) -> Any:
    """A tqdm bar when shown, tqdm is installed and stderr is a terminal, else a null context."""
    if not show:
        return _NoBar()
    try:
        from tqdm.auto import tqdm
    except ImportError:  # pragma: no cover - tqdm ships with transformers
        return _NoBar()
    bar = tqdm(total=total, desc="train", unit="step", disable=None)
    return _NoBar() if bar.disable else bar


class _NoBar:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None


def _report(point: LogPoint, bar: Any, on_log: Callable[[LogPoint], None] | None) -> None:
    if bar is not None:
        bar.set_postfix(loss=f"{point.loss:.4f}", lr=f"{point.lr:.2e}", refresh=False)
    else:
        log.info("train.step", **asdict(point))
    if on_log is not None:
        on_log(point)
