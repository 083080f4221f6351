"""The facts ``trainer.memory.plan`` decides from, gathered from the running process, and the
one action it asks of the model (gradient checkpointing). The decision itself stays pure there.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Final

import psutil
import torch

from trainer.batches import Encoded
from trainer.config import TrainConfig
from trainer.memory import GIB, Device, Lengths, Shape

SAFE_SHARE: Final = 0.7  # of the memory available now, when no budget is set
# Training's peak RSS on CPU over the tensors autograd keeps: one step alone peaks at 1.6x
# them, and steps after the first a little higher again (freed memory is not all handed back).
# Measured with the trainer's own loop on SmolLM2 (loadtests/trainer_memory.py). Not yet
# measured on CUDA.
CPU_PEAK_FACTOR: Final = 2.3


def shape_of(model: Any, *, head_on_labelled_only: bool) -> Shape:
    """The shape of a (PEFT-wrapped) causal LM from its config and parameters."""
    c = model.config
    frozen = [p for p in model.parameters() if not p.requires_grad]
    heads = int(c.num_attention_heads)
    return Shape(
        name=str(getattr(model, "name_or_path", "") or getattr(c, "_name_or_path", "the base")),
        layers=int(c.num_hidden_layers),
        hidden=int(c.hidden_size),
        intermediate=int(getattr(c, "intermediate_size", 4 * c.hidden_size)),
        heads=heads,
        vocab=int(c.vocab_size),
        context=int(getattr(c, "max_position_embeddings", 1 << 30)),
        params=sum(p.numel() for p in frozen),
        dtype_bytes=frozen[0].element_size() if frozen else 4,
        lora_params=sum(p.numel() for p in model.parameters() if p.requires_grad),
        head_on_labelled_only=head_on_labelled_only,
    )


def device_of(device: torch.device, *, attn_impl: str, bf16: bool, dtype_bytes: int) -> Device:
    """Eager attention keeps the scores; SDPA does not, on CUDA nor on CPU (there, with a packing
    mask, a step's peak is the same in rows of 128 and of 1,024 tokens: measured)."""
    peak = CPU_PEAK_FACTOR if device.type == "cpu" else 1.0
    return Device(device.type, attn_impl == "eager", 2 if bf16 else dtype_bytes, peak)


def lengths_of(encoded: Sequence[Encoded]) -> Lengths:
    share = max((1 - e.prompt_len / len(e) for e in encoded), default=1.0)
    return Lengths(longest=max((len(e) for e in encoded), default=1), label_share=share)


def budget_bytes(cfg: TrainConfig, device: torch.device, resident: int) -> int:
    """``memory_budget_gb`` if set, else a safe share of what is free now plus ``resident``,
    the bytes of the model already loaded there (the estimate counts them too)."""
    if cfg.memory_budget_gb > 0:
        return int(cfg.memory_budget_gb * GIB)
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
    else:
        free = psutil.virtual_memory().available
    return int(SAFE_SHARE * free) + resident


def resident_bytes(model: Any, device: torch.device) -> int:
    """Bytes of ``model``'s parameters that live on ``device``'s kind."""
    return sum(
        p.numel() * p.element_size() for p in model.parameters() if p.device.type == device.type
    )


def enable_checkpointing(model: Any) -> None:
    """Gradient checkpointing on a PEFT model: recompute each block in backward."""
    kwargs = {"use_reentrant": False}
    if hasattr(model, "activation_checkpointing_enable"):  # transformers >= 5 names it so
        model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
    if hasattr(model, "enable_input_require_grads"):
        model.enable_input_require_grads()  # PEFT: frozen embeddings still pass grads on
