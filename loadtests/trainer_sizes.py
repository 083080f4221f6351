"""Which bases fit which GPUs how: the trainer's memory plan (``trainer/memory.py``) for the
shapes of public bases, in each training mode.

    python loadtests/trainer_sizes.py [--tokens 1024] [--ranks 8]

For each base and mode it prints the plan's estimate per GPU for the smallest step the trainer
takes (one row of ``--tokens`` tokens, gradient checkpointing on) and for a comfortable one
(8 rows, checkpointing off), and which common GPU sizes hold the smallest. Modes: LoRA on a
bfloat16 base on one GPU (and each rank under DDP); QLoRA on a 4-bit base on one GPU; LoRA with
the decoder blocks sharded over ``--ranks`` GPUs (FSDP). These are the plan's figures, with
CUDA's peak factor not yet measured (1.0): a first guide, not a measurement.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from trainer.memory import GIB, Device, Shape, estimate

GPUS_GB = (24, 48, 80, 141)  # L4/4090, L40S/A6000, A100/H100, H200
CUDA = Device("cuda", materializes_scores=False, activation_bytes=2)
LORA_R = 16


@dataclass(frozen=True)
class Base:
    name: str
    layers: int
    hidden: int
    intermediate: int
    heads: int
    kv_heads: int
    vocab: int
    tied: bool  # output head shares the embeddings

    def block_params(self) -> int:
        kv = self.hidden // self.heads * self.kv_heads
        attention = 2 * self.hidden * self.hidden + 2 * self.hidden * kv
        return attention + 3 * self.hidden * self.intermediate + 2 * self.hidden

    def lora_params(self) -> int:
        h, i = self.hidden, self.intermediate
        kv = h // self.heads * self.kv_heads
        per_layer = LORA_R * ((h + h) * 2 + (h + kv) * 2 + (h + i) * 2 + (i + h))
        return self.layers * per_layer

    def params(self) -> int:
        embeddings = self.vocab * self.hidden * (1 if self.tied else 2)
        return self.layers * self.block_params() + embeddings + self.hidden

    def shape(self, *, four_bit: bool = False) -> Shape:
        blocks = self.layers * self.block_params()
        # 4-bit NF4 blocks: half a byte a weight, counted as a quarter of the bf16 weights;
        # embeddings, norms and the head stay bf16.
        params = self.params() - blocks + blocks // 4 if four_bit else self.params()
        return Shape(
            name=self.name, layers=self.layers, hidden=self.hidden,
            intermediate=self.intermediate, heads=self.heads, vocab=self.vocab,
            context=131_072, params=params, dtype_bytes=2, lora_params=self.lora_params(),
            head_on_labelled_only=True, block_params=self.block_params(),
        )  # fmt: skip


# Shapes from the bases' published configs.
BASES = (
    Base("SmolLM2-135M", 30, 576, 1536, 9, 3, 49_152, True),
    Base("Llama-3.2-1B", 16, 2048, 8192, 32, 8, 128_256, True),
    Base("Llama-3.2-3B", 28, 3072, 8192, 24, 8, 128_256, True),
    Base("Llama-3.1-8B", 32, 4096, 14_336, 32, 8, 128_256, False),
    Base("Qwen2.5-14B", 48, 5120, 13_824, 40, 8, 152_064, False),
    Base("Qwen2.5-32B", 64, 5120, 27_648, 40, 8, 152_064, False),
    Base("Llama-3.1-70B", 80, 8192, 28_672, 64, 8, 128_256, False),
)


def needs(shape: Shape, tokens: int, rows: int, checkpointing: bool, shards: int) -> float:
    """GiB per GPU for ``rows`` rows of ``tokens`` tokens (about half of them labelled)."""
    total = estimate(shape, CUDA, rows * tokens, tokens, 0.5, checkpointing, shards).total
    return total / GIB


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=1024, help="row length")
    parser.add_argument("--ranks", type=int, default=8, help="GPUs the FSDP mode shards over")
    args = parser.parse_args(argv)
    modes = (
        ("LoRA, bf16 base", {}, 1),
        ("QLoRA, 4-bit base", {"four_bit": True}, 1),
        (f"LoRA, FSDP over {args.ranks}", {}, args.ranks),
    )
    print("| base | params | mode | GiB/GPU: 1 row, checkpointing | GiB/GPU: 8 rows | "
          "smallest GPU that holds 1 row |")  # fmt: skip
    print("|---|---|---|---|---|---|")
    for base in BASES:
        for mode, kwargs, shards in modes:
            shape = base.shape(**kwargs)
            least = needs(shape, args.tokens, 1, True, shards)
            roomy = needs(shape, args.tokens, 8, False, shards)
            fits = next((f"{gb} GB" for gb in GPUS_GB if least * GIB <= gb * 1e9 * 0.9), "none")
            print(f"| {base.name} | {base.params() / 1e9:.2f}B | {mode} | {least:.1f} | "
                  f"{roomy:.1f} | {fits} |")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
