"""Sharded data-parallel training (``sharding="fsdp"``): bases too big to hold whole per GPU.

Each decoder block is sharded over the ranks with FSDP2's ``fully_shard``: a rank keeps 1/N of
every block's weights (the frozen base and the LoRA matrices alike) and gathers one block's
whole weights only while that block runs, forward and backward. LoRA gradients are
reduce-scattered, averaged over the ranks as DDP would, so each rank's AdamW updates its own
shard. The embeddings, the final norm and the output head stay whole on every rank: they are
frozen, so they cost no gradient traffic, and they are a small share of a large base.

Under bfloat16 the blocks compute in bfloat16 (``MixedPrecisionPolicy``) while the LoRA
matrices stay float32 and their gradients are reduced in float32. The base is read whole into
host memory by every rank before it is sharded and moved to the device (host memory of at
least ranks x the base's size), so no GPU ever holds it whole.
"""

from __future__ import annotations

from typing import Any

import torch
from torch.distributed.fsdp import FSDPModule, MixedPrecisionPolicy, fully_shard

from trainer.targets import decoder_blocks


def shard_blocks(model: Any, *, compute: torch.dtype | None) -> list[FSDPModule]:
    """Shard every decoder block of ``model`` (a PEFT model) over the process group's ranks."""
    policy = MixedPrecisionPolicy(param_dtype=compute, reduce_dtype=torch.float32)
    shards = []
    for block in decoder_blocks(model):
        fully_shard(block, mp_policy=policy)
        shards.append(block)
    return shards


def sync_gradients(shards: list[FSDPModule], on: bool) -> None:
    """Reduce gradients after this backward (``on``), or keep accumulating them locally."""
    for shard in shards:
        shard.set_requires_gradient_sync(on)


def full_lora_state(model: Any) -> dict[str, torch.Tensor]:
    """Every LoRA weight whole, on the CPU, keyed as in ``model.state_dict()``. A collective:
    every rank calls it (each gathers the shards of the others)."""
    state = {}
    for name, param in model.named_parameters():
        if param.requires_grad:
            whole = param.full_tensor() if hasattr(param, "full_tensor") else param
            state[name] = whole.detach().to("cpu", copy=True)
    return state


def is_sharded(model: Any) -> bool:
    """Whether any decoder block of ``model`` is sharded."""
    return any(isinstance(block, FSDPModule) for block in decoder_blocks(model))
