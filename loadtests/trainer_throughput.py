"""Training throughput: Protégé's LoRA loop against Hugging Face ``Trainer`` defaults.

    PYTHONPATH=. python loadtests/trainer_throughput.py [--model smollm2-config|tiny]
        [--device cuda|cpu] [--examples N] [--seconds S] [--scenarios a,b,c] [--out FILE]

Trains LoRA r=16 (every linear layer) on SmolLM2-135M's architecture with random weights (or a
tiny Llama) over the same synthetic chat examples in each scenario, one after another in this
process, and reports real (non-pad) training tokens per second over a timed window after each
scenario's warm-up, with its ratio to ``hf-trainer-defaults`` measured in the same run. Needs
no download and no model file. Exits 0 whatever the figures (it is a report); ``--strict``
exits 1 when the target fails. ``--out`` is rewritten after every scenario.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import trainer_imports

# Per device: seq_len, tokens per micro-batch, the same for protege-bigbatch, example lengths.
GPU_DEFAULTS = {"seq_len": 2048, "tokens": 16384, "big": 65536, "min_len": 50, "max_len": 600}
CPU_DEFAULTS = {"seq_len": 256, "tokens": 2048, "big": 8192, "min_len": 50, "max_len": 250}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", choices=("smollm2-config", "tiny"), default="smollm2-config")
    p.add_argument("--device", choices=("cuda", "cpu"), help="default: cuda if available")
    p.add_argument("--examples", type=int, default=2000, help="synthetic examples (>= 8)")
    p.add_argument("--seconds", type=float, default=20.0, help="timed window per scenario")
    p.add_argument("--scenarios", help="comma-separated subset, in the order given")
    p.add_argument("--out", type=Path, help="also write every number as JSON")
    p.add_argument("--seq-len", type=int, help="Protégé row length (default 2048; CPU 256)")
    p.add_argument("--tokens-per-batch", type=int, help="Protégé micro-batch (16384; CPU 2048)")
    p.add_argument("--big-tokens-per-batch", type=int, help="protege-bigbatch (65536; CPU 8192)")
    p.add_argument("--min-len", type=int, help="shortest example target (default 50)")
    p.add_argument("--max-len", type=int, help="longest example target (default 600; CPU 250)")
    p.add_argument("--warmup-steps", type=int, help="steps before each window (default 5; CPU 2)")
    p.add_argument("--compile-budget", type=float, default=240.0, help="most seconds of the "
                   "compile warm-up before the timed run starts anyway")  # fmt: skip
    p.add_argument("--threads", type=int, help="CPU threads for torch (default: 1 for the tiny "
                   "model on a CPU, where more only add contention; else torch's own)")  # fmt: skip
    p.add_argument("--strict", action="store_true", help="exit 1 if the target fails")
    return p.parse_args(argv)


def options(args: argparse.Namespace) -> Any:
    import torch
    from trainer_suite import SCENARIOS, Options

    name = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise SystemExit("trainer_throughput: --device cuda but no CUDA device is visible")
    chosen = tuple(s.strip() for s in (args.scenarios or ",".join(SCENARIOS)).split(","))
    unknown = [s for s in chosen if s not in SCENARIOS]
    if unknown or args.examples < 8 or args.seconds <= 0:
        raise SystemExit(
            f"trainer_throughput: scenarios are {', '.join(SCENARIOS)}; --examples >= 8; "
            f"--seconds > 0 (got unknown={unknown}, examples={args.examples})"
        )
    d = GPU_DEFAULTS if name == "cuda" else CPU_DEFAULTS
    return Options(
        model=args.model,
        device=torch.device(name),
        examples=args.examples,
        seconds=args.seconds,
        scenarios=chosen,
        seq_len=args.seq_len or d["seq_len"],
        tokens_per_batch=args.tokens_per_batch or d["tokens"],
        big_tokens_per_batch=args.big_tokens_per_batch or d["big"],
        min_len=args.min_len or d["min_len"],
        max_len=args.max_len or d["max_len"],
        warmup_steps=args.warmup_steps or (5 if name == "cuda" else 2),
        compile_budget_s=args.compile_budget,
        threads=_threads(args, name),
    )


def _threads(args: argparse.Namespace, device: str) -> int:
    import torch

    if args.threads:
        return int(args.threads)
    return 1 if device == "cpu" and args.model == "tiny" else torch.get_num_threads()


def header(opts: Any, bench: Any, stand_ins: list[str]) -> list[str]:
    import peft
    import torch
    import trainer_models as models
    import transformers

    gpu = torch.cuda.get_device_name(opts.device) if opts.device.type == "cuda" else "-"
    check = models.check_smollm2_config() if opts.model == "smollm2-config" else "-"
    s = bench.stats
    return [
        f"Trainer throughput: {opts.model} on {opts.device.type} ({gpu}), LoRA r=16, all linear",
        f"  torch {torch.__version__}, transformers {transformers.__version__}, "
        f"peft {peft.__version__}, python {platform.python_version()}, "
        f"CPU threads {opts.threads}",
        f"  model config: {check}",
        f"  data: {s.examples} examples, {s.tokens:,} tokens ({s.label_tokens:,} labelled), "
        f"lengths {s.min_len}-{s.max_len} (mean {s.mean_len})",
        f"  Protégé: seq_len {opts.seq_len}, {opts.tokens_per_batch} tokens per micro-batch "
        f"(bigbatch {opts.big_tokens_per_batch}); window {opts.seconds:g} s after "
        f"{opts.warmup_steps} warm-up steps",
        *(f"  import: {note}" for note in stand_ins),
    ]


def run(opts: Any, out: Path | None, stand_ins: list[str]) -> list[Any]:
    """Every scenario in turn, with a progress line each; ``out`` rewritten after each."""
    from trainer_report import to_json
    from trainer_suite import expected_seconds, prepare, run_scenario

    bench = prepare(opts)
    lines = header(opts, bench, stand_ins)
    print("\n".join(lines), flush=True)
    total = sum(expected_seconds(name, opts) for name in opts.scenarios)
    print(f"\n{len(opts.scenarios)} scenarios, expected about {total / 60:.1f} min", flush=True)
    results: list[Any] = []
    for i, name in enumerate(opts.scenarios, 1):
        tag = f"[{i}/{len(opts.scenarios)}] {name}"
        print(f"{tag}: running (about {expected_seconds(name, opts):.0f} s)", flush=True)
        results.append(run_scenario(name, opts, bench))
        print(f"{tag}: {_done(results[-1])}", flush=True)
        if out is not None:
            _write(out, {"header": lines, **_context(opts, bench, stand_ins)}, to_json(results))
    return results


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    stand_ins = trainer_imports.prepare()
    trainer_imports.quiet_training_logs()
    import torch
    from trainer_report import notes_lines, table, verdict, verdict_lines

    opts = options(args)
    torch.set_num_threads(opts.threads)
    started = time.perf_counter()
    results = run(opts, args.out, stand_ins)
    judged = verdict(results)
    print("\n" + "\n".join(table(results)))
    print("\n" + "\n".join(verdict_lines(judged, gpu=opts.device.type == "cuda")))
    notes = notes_lines(results)
    if notes:
        print("\nNotes\n" + "\n".join(f"  {n}" for n in notes))
    print(f"\nTotal {time.perf_counter() - started:.0f} s", flush=True)
    if args.out is not None:
        _add_verdict(args.out, asdict(judged))
    return 1 if args.strict and not judged.passed else 0


def _done(result: Any) -> str:
    if result.measured is None:
        return f"skipped ({result.skipped})"
    m = result.measured
    return (
        f"{m.tokens_per_s:,.0f} tokens/s over {m.seconds:.1f} s ({m.steps} steps), "
        f"{result.wall_s:.0f} s in all"
    )


def _context(opts: Any, bench: Any, stand_ins: list[str]) -> dict[str, Any]:
    from trainer_report import REFERENCE_H100, TARGET_RATIO, TARGET_TOKENS_PER_S

    return {
        "options": {**asdict(opts), "device": str(opts.device)},
        "data": asdict(bench.stats),
        "stand_ins": stand_ins,
        "target": {"tokens_per_s": TARGET_TOKENS_PER_S, "ratio_vs_baseline": TARGET_RATIO},
        "reference_h100_tokens_per_s": REFERENCE_H100,
    }


def _write(out: Path, context: dict[str, Any], results: list[dict[str, Any]]) -> None:
    out.write_text(json.dumps({**context, "results": results}, indent=2, default=str) + "\n")


def _add_verdict(out: Path, judged: dict[str, Any]) -> None:
    if out.is_file():
        doc = json.loads(out.read_text())
        out.write_text(json.dumps({**doc, "verdict": judged}, indent=2) + "\n")


if __name__ == "__main__":
    sys.exit(main())
