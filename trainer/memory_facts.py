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
from trainer.targets import decoder_blocks

SAFE_SHARE: Final = 0.7  # of the memory available now, when no budget is set
# Training's peak RSS on CPU over the tensors autograd keeps: one step alone peaks at 1.6x
# them, and steps after the first a little higher again (freed memory is not all handed back).
# Measured with the trainer's own loop on SmolLM2 (loadtests/trainer_memory.py). Not yet
# measured on CUDA.
CPU_PEAK_FACTOR: Final = 2.3
# Tokens per micro-batch past which a CPU step gets no faster per token (SmolLM2, 2 cores,
# bf16: 389 tokens/s at 1,024, 403 at 2,048; float32: 273 at 2,048, 268 at 4,096).
CPU_EFFICIENT_TOKENS: Final = 2048


def shape_of(model: Any, *, head_on_labelled_only: bool) -> Shape:
    """The shape of a (PEFT-wrapped) causal LM from its config and parameters."""
    c = model.config
    frozen = [p for p in model.parameters() if not p.requires_grad]
    block = decoder_blocks(model)[0]
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
        dtype_bytes=_bytes_per_weight(frozen),
        lora_params=sum(p.numel() for p in model.parameters() if p.requires_grad),
        head_on_labelled_only=head_on_labelled_only,
        block_params=sum(p.numel() for p in block.parameters() if not p.requires_grad),
    )


def _bytes_per_weight(frozen: Sequence[Any]) -> int:
    """The frozen weights' bytes per parameter as stored (4-bit ones are packed in bytes)."""
    stored = sum(p.numel() * p.element_size() for p in frozen)
    return max(1, round(stored / max(1, sum(p.numel() for p in frozen)))) if frozen else 4


def device_of(device: torch.device, *, attn_impl: str, bf16: bool, dtype_bytes: int) -> Device:
    """Eager attention keeps the scores; SDPA does not, on CUDA nor on CPU (there, with a packing
    mask, a step's peak is the same in rows of 128 and of 1,024 tokens: measured)."""
    cpu = device.type == "cpu"
    return Device(
        device.type,
        materializes_scores=attn_impl == "eager",
        activation_bytes=2 if bf16 else dtype_bytes,
        peak_factor=CPU_PEAK_FACTOR if cpu else 1.0,
        efficient_tokens=CPU_EFFICIENT_TOKENS if cpu else 0,
    )


def lengths_of(encoded: Sequence[Encoded]) -> Lengths:
    share = max((1 - e.prompt_len / len(e) for e in encoded), default=1.0)
    return Lengths(longest=max((len(e) for e in encoded), default=1), label_share=share)


def budget_bytes(cfg: TrainConfig, device: torch.device, resident: int, sharers: int = 1) -> int:
    """``memory_budget_gb`` if set (per process), else a safe share of what is free now plus
    ``resident``, the bytes of the model already loaded there (the estimate counts them too).
    On CPU the ``sharers`` training processes of this machine split what is free."""
    if cfg.memory_budget_gb > 0:
        return int(cfg.memory_budget_gb * GIB)
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
    else:
        free = psutil.virtual_memory().available // max(1, sharers)
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


def reset_peak(device: torch.device) -> None:
    """Start measuring the peak anew: CUDA's allocator statistics, or on Linux the process's
    peak RSS (``VmHWM``, reset through ``/proc/self/clear_refs``; elsewhere it is never reset)."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        return
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass


def peak_bytes(device: torch.device) -> int:
    """Most bytes held since ``reset_peak``: allocated on CUDA, resident on CPU."""
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device))
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return int(psutil.Process().memory_info().rss)
