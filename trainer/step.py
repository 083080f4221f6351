"""How one optimizer step runs: the loss of a batch, and the step over a rank's micro-batches.

``TokenLoss`` is the per-token cross-entropy (the output layer only where labelled, when the
architecture allows). ``Stepper`` runs a step: bfloat16 autocast where the device computes it
natively, gradient accumulation, gradients averaged over the ranks (DDP, or FSDP's own
reduce-scatter when the blocks are sharded), clipping, AdamW.
"""

from __future__ import annotations

from contextlib import nullcontext
from typing import Any

import structlog
import torch
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel

from trainer import distributed
from trainer.batches import IGNORE, Batch
from trainer.config import TrainConfig
from trainer.model import native_bf16
from trainer.sharding import sync_gradients

log = structlog.get_logger("trainer")


class TokenLoss(torch.nn.Module):
    """Cross-entropy of every next-token prediction of a causal LM, ``[rows, seq - 1]``.

    Unlabelled positions get 0. For plain decoder + ``lm_head`` architectures the output layer
    runs on the labelled positions only, which spares most of the ``tokens x vocab`` logits
    (time on CPU, memory on GPU); others compute all logits. The mask is made additive where
    the attention adds it (eager), and left out for flash attention (varlen batches). A module,
    so that DDP can wrap the whole loss (the body and the head that may run apart).
    """

    _HEAD_ONLY_WHERE_LABELLED = frozenset({"llama", "mistral", "qwen2", "qwen3", "phi3"})

    def __init__(self, model: Any, *, compile: bool = False) -> None:
        super().__init__()
        impl = str(getattr(model.config, "_attn_implementation", None) or "sdpa")
        self.varlen = impl.startswith("flash_attention")
        self.float_mask = model.dtype if impl == "eager" else None
        base = model.get_base_model() if hasattr(model, "get_base_model") else model
        self.split = getattr(model.config, "model_type", None) in self._HEAD_ONLY_WHERE_LABELLED
        self.body = base.model if self.split else model
        self.head = base.lm_head if self.split else None
        if compile:
            self.body = torch.compile(self.body)

    def forward(self, batch: Batch, device: torch.device | str) -> torch.Tensor:
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


class Stepper:
    """How a step runs here: the loss (under DDP over several ranks), bf16 autocast,
    accumulation, clipping, AdamW."""

    def __init__(
        self,
        model: Any,
        cfg: TrainConfig,
        device: torch.device,
        world: distributed.World,
        shards: list[Any],
    ) -> None:
        cuda = device.type == "cuda"
        if cfg.compile and not cuda:
            log.warning("compile is for CUDA only; running eagerly", device=str(device))
        loss = TokenLoss(model, compile=cfg.compile and cuda)
        self.varlen = loss.varlen
        self.world = world
        self.shards = shards  # FSDP: the blocks reduce-scatter their own gradients
        self.ddp = None
        self.loss: Any = loss
        if world.distributed and not shards:  # LoRA gradients averaged over ranks in backward
            self.ddp = self.loss = DistributedDataParallel(loss, broadcast_buffers=False)
        self.device = device
        self.max_grad_norm = cfg.max_grad_norm
        bf16 = use_bf16(cfg, device)
        self.autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=bool(bf16))
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(
            self.params,
            lr=cfg.learning_rate,
            betas=(cfg.adam_beta1, cfg.adam_beta2),
            weight_decay=cfg.weight_decay,
            fused=cuda,
        )

    def step(
        self, micro: list[Batch], labelled: int, tokens: int, lr: float
    ) -> tuple[float, int, int]:
        """One optimizer step over this rank's ``micro`` of a step with ``labelled`` and
        ``tokens`` over all ranks; the step's loss sum, labelled and real tokens."""
        scale = self.world.size / max(1, labelled)  # DDP averages: the mean over all ranks' tokens
        loss_sum = 0.0
        for i, batch in enumerate(micro):
            last = i == len(micro) - 1
            if self.shards:
                sync_gradients(self.shards, last)
            with self.ddp.no_sync() if self.ddp is not None and not last else nullcontext():
                with self.autocast:
                    total = self.loss(batch, self.device).sum()
                torch.autograd.backward(total * scale)
            loss_sum += float(total.detach())
        loss_sum = distributed.total(loss_sum, self.world)
        if self.max_grad_norm > 0:
            torch.nn.utils.clip_grad_norm_(self.params, self.max_grad_norm)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return loss_sum, labelled, tokens


def use_bf16(cfg: TrainConfig, device: torch.device) -> bool:
    """Whether the forward runs under bfloat16 autocast (``cfg.bf16``; None: where native)."""
    return native_bf16(device) if cfg.bf16 is None else cfg.bf16
