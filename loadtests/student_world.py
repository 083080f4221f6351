"""What the student benchmark serves: a base model, two published adapters, the prompts.

The adapters are LoRA layers attached to the base with their B matrices filled with seeded
random values (B starts at zero, which would make every adapter the base), saved with
``trainer.model.save_adapter`` and published to a ``file://`` store, so each answers
differently and the server has to switch between them.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import torch

from trainer.batches import end_of_turn_ids
from trainer.config import TrainConfig
from trainer.model import attach_lora, load_base, resolve_base, save_adapter
from trainer.publish import publish
from trainer.tiny import save_tiny

TASK: Final = "bench"
SEEDS: Final = (1, 2)
# Standard deviation of the random LoRA B entries: large for the tiny model (so its adapters
# visibly differ), small for SmolLM2 (so its answers stay close to the base's).
B_SCALE: Final = {"tiny": 0.5, "smollm2": 0.01}
_REVIEWS: Final = (
    "I love it, works exactly as described.",
    "The package arrived broken and late.",
    "Decent value for the price, nothing special.",
    "Support never answered my three emails.",
    "Battery lasts two days, very happy.",
    "The colour is not what the picture showed.",
    "Easy to set up, my kids use it daily.",
    "Stopped working after a week.",
)


@dataclass(frozen=True)
class World:
    model: str  # "tiny" or "smollm2"
    base: str  # the spec the server and the baseline load (a directory or "smollm2")
    store: str  # file:// URI the adapters are published to
    adapter_ids: tuple[str, ...]  # as requests name them: <task>/<version>
    adapter_dirs: tuple[Path, ...]  # the same adapters as saved, for the baseline


def prompts(count: int) -> list[str]:
    """``count`` short classification prompts, varied so batches mix lengths."""
    return [
        f"Review {i}: {_REVIEWS[i % len(_REVIEWS)]} Classify the sentiment of the review:"
        for i in range(count)
    ]


def adapter_for(index: int, world: World) -> int:
    """Which adapter request ``index`` uses: they alternate."""
    return index % len(world.adapter_ids)


def build_world(model: str, root: Path) -> World:
    """Save the base (tiny) or name it (smollm2), make and publish two adapters under ``root``."""
    if model == "tiny":
        save_tiny(root / "base")
        base = str(root / "base")
    else:
        base = "smollm2"
    store = f"file://{root / 'store'}"
    dirs = tuple(_random_adapter(base, root / f"adapter-{s}", s, B_SCALE[model]) for s in SEEDS)
    ids = tuple(asyncio.run(publish(store, TASK, d, {})).adapter_id for d in dirs)
    return World(model, base, store, ids, dirs)


def _random_adapter(base: str, out: Path, seed: int, scale: float) -> Path:
    model, _ = load_base(resolve_base(base))
    peft = attach_lora(model, TrainConfig(lora_r=4, lora_alpha=8, lora_dropout=0.0, seed=seed))
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in peft.named_parameters():
            if "lora_B" in name:
                param.copy_(torch.randn(param.shape, generator=generator) * scale)
    return save_adapter(peft, out)


def stop_ids(model: Any, tokenizer: Any) -> list[int]:
    """The tokens that end an answer, as the student server sets them."""
    ids = {tokenizer.eos_token_id, end_of_turn_ids(tokenizer)[-1]}
    configured = model.generation_config.eos_token_id
    ids |= set([configured] if isinstance(configured, int) else configured or [])
    return sorted(i for i in ids if i is not None)
