"""LoRA targets found per architecture: every linear layer of attention and MLP, by its name.

Architectures name their layers differently (Llama, Mistral, Qwen and Gemma ``q_proj`` …
``down_proj``; Phi-3 fuses ``qkv_proj`` and ``gate_up_proj``), so the names are read off the
model rather than listed here. Only the decoder blocks are searched, the list of
``num_hidden_layers`` modules, so the output head and the embeddings are never targets.
``find_targets`` reads a bare model; ``wrapped_targets`` reads what LoRA wraps in a PEFT model.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from peft.tuners.lora import LoraLayer
from torch import nn


def leaf_names(qualified: Iterable[str]) -> tuple[str, ...]:
    """The distinct last segments of dotted module names, in the order first seen."""
    return tuple(dict.fromkeys(name.rsplit(".", 1)[-1] for name in qualified))


def find_targets(model: nn.Module) -> tuple[str, ...]:
    """Names of the linear layers in ``model``'s decoder blocks (attention first, then MLP)."""
    blocks = decoder_blocks(model)
    names = leaf_names(n for n, m in blocks.named_modules() if isinstance(m, nn.Linear))
    if not names:
        raise ValueError(f"{type(model).__name__}: no linear layers in its decoder blocks")
    return names


def wrapped_targets(model: nn.Module) -> tuple[str, ...]:
    """Names of the layers LoRA wraps in a PEFT ``model``, in the order first seen."""
    return leaf_names(name for name, m in model.named_modules() if isinstance(m, LoraLayer))


def decoder_blocks(model: nn.Module) -> nn.ModuleList:
    """The list of ``num_hidden_layers`` decoder blocks; fails naming the model's class."""
    depth = _depth(model)
    for module in model.modules():
        if isinstance(module, nn.ModuleList) and len(module) == depth:
            return module
    raise ValueError(
        f"{type(model).__name__}: no list of {depth} decoder blocks to find LoRA targets in; "
        "set target_modules"
    )


def _depth(model: nn.Module) -> int:
    config: Any = getattr(model, "config", None)
    text = config.get_text_config() if config is not None else None
    depth = getattr(text, "num_hidden_layers", None)
    if not isinstance(depth, int) or depth < 1:
        raise ValueError(
            f"{type(model).__name__}: its config has no num_hidden_layers; set target_modules"
        )
    return depth
