"""The training loop: AdamW on the LoRA parameters, warm-up then cosine decay, on CPU or CUDA.

An optimizer step takes ``grad_accum_steps`` micro-batches; its loss is the mean over every
labelled token of all of them (not a mean of micro-batch means), so accumulation gives the same
update as one big batch. On CUDA the forward runs under bfloat16 autocast (``cfg.bf16``, on by
default where supported) and, if ``cfg.compile``, through ``torch.compile``.
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
import torch.nn.functional as F

from trainer.batches import IGNORE, Batch, Encoded, collate, encode_all, epoch_plan, subsample
from trainer.config import TrainConfig
from trainer.examples import Example
from trainer.memory import plan
from trainer.memory_facts import (
    budget_bytes,
    device_of,
    enable_checkpointing,
    lengths_of,
    resident_bytes,
    shape_of,
)

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

    # Data: the seeded share of the examples, tokenized; those over seq_len are left out.
    encoded, dropped = _encode(tokenizer, train_examples, cfg)

    # Model: only what requires grad (the LoRA matrices) is optimized.
    torch.manual_seed(cfg.seed)
    model.to(device).train()

    # Memory: rows only as long as the data needs, and micro-batches, accumulation and
    # checkpointing that fit this machine, before the first step rather than an OOM kill.
    cfg, memory = _fit_memory(model, encoded, cfg, device, say)
    encoded = [e for e in encoded if len(e) <= cfg.seq_len]  # only the base's context cuts
    total = total_steps(len(epoch_plan([len(e) for e in encoded], cfg, 0)), cfg)
    run = _Run(model, cfg, device)
    batches = _micro_batches(encoded, cfg, tokenizer.pad_token_id, run.varlen)

    # Loop: a step per grad_accum_steps micro-batches; a curve point every log_every steps.
    meter = _Meter(time.perf_counter())
    curve: list[LogPoint] = []
    with _progress(total) as bar:
        for step in range(total):
            lr = lr_at(step, total, cfg)
            meter.add(*run.step(list(itertools.islice(batches, cfg.grad_accum_steps)), lr))
            if step == 0 or (step + 1) % cfg.log_every == 0 or step + 1 == total:
                curve.append(meter.point(step + 1, lr, device))
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


class TokenLoss:
    """Cross-entropy of every next-token prediction of a causal LM, ``[rows, seq - 1]``.

    Unlabelled positions get 0. For plain decoder + ``lm_head`` architectures the output layer
    runs on the labelled positions only, which spares most of the ``tokens x vocab`` logits
    (time on CPU, memory on GPU); others compute all logits. The mask is made additive where
    the attention adds it (eager), and left out for flash attention (varlen batches).
    """

    _HEAD_ONLY_WHERE_LABELLED = frozenset({"llama", "mistral", "qwen2", "qwen3", "phi3"})

    def __init__(self, model: Any, *, compile: bool = False) -> None:
        impl = str(getattr(model.config, "_attn_implementation", None) or "sdpa")
        self.varlen = impl.startswith("flash_attention")
        self.float_mask = model.dtype if impl == "eager" else None
        base = model.get_base_model() if hasattr(model, "get_base_model") else model
        self.split = getattr(model.config, "model_type", None) in self._HEAD_ONLY_WHERE_LABELLED
        self.body = base.model if self.split else model
        self.head = base.lm_head if self.split else None
        if compile:
            self.body = torch.compile(self.body)

    def __call__(self, batch: Batch, device: torch.device | str) -> torch.Tensor:
        inputs = batch.inputs(device, float_mask=self.float_mask)
        labels = batch.labels[:, 1:].to(device)
        out = self.body(**inputs, use_cache=False)
        if self.head is None:
            logits = out.logits[:, :-1].float()
            flat = F.cross_entropy(
                logits.flatten(0, 1), labels.flatten(), ignore_index=IGNORE, reduction="none"
            )
            return flat.view(labels.shape)
        keep = labels != IGNORE
        logits = self.head(out.last_hidden_state[:, :-1][keep]).float()
        losses = torch.zeros(labels.shape, dtype=logits.dtype, device=logits.device)
        losses[keep] = F.cross_entropy(logits, labels[keep], reduction="none")
        return losses


class _Run:
    """How a step runs here: the loss, bf16 autocast, accumulation, clipping, AdamW."""

    def __init__(self, model: Any, cfg: TrainConfig, device: torch.device) -> None:
        cuda = device.type == "cuda"
        if cfg.compile and not cuda:
            log.warning("compile is for CUDA only; running eagerly", device=str(device))
        self.loss = TokenLoss(model, compile=cfg.compile and cuda)
        self.varlen = self.loss.varlen
        self.device = device
        self.max_grad_norm = cfg.max_grad_norm
        bf16 = _bf16(cfg, device)
        self.autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=bool(bf16))
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(
            self.params,
            lr=cfg.learning_rate,
            betas=(cfg.adam_beta1, cfg.adam_beta2),
            weight_decay=cfg.weight_decay,
            fused=cuda,
        )

    def step(self, micro: list[Batch], lr: float) -> tuple[float, int, int]:
        """One optimizer step over ``micro``; the loss sum, labelled and real tokens."""
        labelled = sum(b.label_tokens for b in micro)
        loss_sum = 0.0
        for batch in micro:
            with self.autocast:
                total = self.loss(batch, self.device).sum()
            torch.autograd.backward(total / max(1, labelled))
            loss_sum += float(total.detach())
        if self.max_grad_norm > 0:
            torch.nn.utils.clip_grad_norm_(self.params, self.max_grad_norm)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return loss_sum, labelled, sum(b.tokens for b in micro)


def _bf16(cfg: TrainConfig, device: torch.device) -> bool:
    """Whether the forward runs under bfloat16 autocast (``cfg.bf16``; None: where supported)."""
    if cfg.bf16 is not None:
        return cfg.bf16
    return device.type == "cuda" and torch.cuda.is_bf16_supported()


def _fit_memory(
    model: Any,
    encoded: Sequence[Encoded],
    cfg: TrainConfig,
    device: torch.device,
    say: Callable[[str], None] | None,
) -> tuple[TrainConfig, dict[str, Any]]:
    """``cfg`` with the memory plan's batch shape applied (checkpointing switched on if it
    says so), and the plan as a record; raises ``DoesNotFit`` naming the numbers."""
    loss = TokenLoss(model)
    shape = shape_of(model, head_on_labelled_only=loss.head is not None)
    impl = str(getattr(model.config, "_attn_implementation", None) or "sdpa")
    bf16 = _bf16(cfg, device)
    where = device_of(device, attn_impl=impl, bf16=bf16, dtype_bytes=shape.dtype_bytes)
    budget = budget_bytes(cfg, device, resident_bytes(model, device))
    chosen = plan(shape, where, budget, lengths_of(encoded), cfg)
    text = chosen.describe(shape, where)
    if say is not None:
        say(text)
    else:
        log.info("train.memory", plan=text)
    if chosen.checkpointing:
        enable_checkpointing(model)
    record = {
        "row_len": chosen.row_len,
        "tokens_per_micro_batch": chosen.tokens_per_micro,
        "grad_accum_steps": chosen.accum,
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


def _micro_batches(
    encoded: Sequence[Encoded], cfg: TrainConfig, pad_id: int, varlen: bool
) -> Iterator[Batch]:
    """Micro-batches without end: epoch after epoch, each freshly shuffled and packed."""
    lengths = [len(e) for e in encoded]
    for epoch in itertools.count():
        for batch in epoch_plan(lengths, cfg, epoch):
            yield collate([[encoded[i] for i in row] for row in batch], pad_id, varlen=varlen)


def _progress(total: int) -> Any:
    """A tqdm bar when tqdm is installed and stderr is a terminal, else a null context."""
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
