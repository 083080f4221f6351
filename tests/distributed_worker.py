"""One rank of a data-parallel test run (``torchrun ... tests/distributed_worker.py OUT [fsdp]``),
or a lone process when started plainly: trains the tiny model on the tiny examples with the
settings the distributed tests compare, and rank 0 writes the loss curve and the LoRA weights
(gathered whole when the blocks are sharded) to OUT.
"""

from __future__ import annotations

import json
import sys
from dataclasses import replace
from pathlib import Path

import torch
from safetensors.torch import save_file

from trainer import distributed
from trainer.config import TrainConfig
from trainer.loop import train
from trainer.model import attach_lora
from trainer.sharding import full_lora_state
from trainer.tiny import tiny_examples, tiny_model, tiny_tokenizer

# Two micro-batches of two 64-token rows a step: one rank takes both, two ranks one each.
CONFIG = TrainConfig(
    seq_len=64, max_tokens_per_batch=128, grad_accum_steps=2, max_steps=8, log_every=1,
    learning_rate=5e-3, lora_dropout=0.0, bf16=False, memory_budget_gb=1.0,
)  # fmt: skip


def main(out: Path, sharding: str) -> None:
    torch.set_num_threads(1)
    cfg = replace(CONFIG, sharding=sharding)
    with distributed.joined("cpu") as world:
        tokenizer = tiny_tokenizer()
        model = attach_lora(tiny_model(tokenizer), cfg)
        result = train(model, tokenizer, tiny_examples(24), cfg, device="cpu")
        lora = full_lora_state(model)  # every rank: a collective when sharded
        if world.main:
            out.mkdir(parents=True, exist_ok=True)
            save_file({n: t.contiguous() for n, t in lora.items()}, str(out / "lora.safetensors"))
            curve = [point.loss for point in result.curve]
            summary = {"curve": curve, "memory": result.memory, "tokens": result.tokens}
            (out / "result.json").write_text(json.dumps(summary))
    distributed.leave(0, world)  # a rank exits at once: see trainer.distributed.leave


if __name__ == "__main__":
    main(Path(sys.argv[1]), sys.argv[2] if len(sys.argv) > 2 else "ddp")
