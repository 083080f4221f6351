"""Student server throughput: the local LoRAX-compatible server against plain transformers.

    .venv/bin/python loadtests/student_throughput.py [--model tiny|smollm2] [--requests N] \
        [--max-new-tokens T] [--out results.json]

Measured in one run, on the same base model, adapters and prompts: greedy ``model.generate``
in this process, one prompt at a time (the baseline), then ``protege student`` as a child
process loaded with the ``lorax`` client at concurrency 1 and 8, the two adapters alternating.
See loadtests/README.md ("Student server throughput").
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Final

import httpx
import procs
import torch
import transformers
from student_phases import Phase, baseline, server_phase
from student_world import World, build_world, prompts

_ROOT: Final = Path(__file__).resolve().parent.parent
CONCURRENCY: Final = (1, 8)
DEFAULTS: Final = {"tiny": (64, 32), "smollm2": (16, 16)}  # requests, max new tokens
ONE_THREAD: Final = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", choices=("tiny", "smollm2"), default="tiny")
    p.add_argument("--requests", type=int, help="requests per phase (tiny 64, smollm2 16)")
    p.add_argument("--max-new-tokens", type=int, help="per request (tiny 32, smollm2 16)")
    p.add_argument("--out", type=Path, help="also write every number as JSON")
    args = p.parse_args(argv)
    requests, tokens = DEFAULTS[args.model]
    args.requests = args.requests or requests
    args.max_new_tokens = args.max_new_tokens or tokens
    return args


def student_argv(world: World, port: int, cache: Path) -> list[str]:
    return [
        *(sys.executable, "-m", "protege.cli", "student"),
        *("--base-model", world.base, "--store", world.store),
        *("--port", str(port), "--max-adapters", "4", "--device", "cpu"),
        *("--cache-dir", str(cache)),
    ]


def student_info(url: str) -> dict[str, Any]:
    info: dict[str, Any] = httpx.get(url + "/info", timeout=10).json()["student"]
    return info


async def warm_up(url: str, world: World, max_new_tokens: int) -> None:
    """One request per adapter: downloads and attaches both before anything is timed."""
    await server_phase(url, world, prompts(len(world.adapter_ids)), max_new_tokens, 1)


def measure_server(
    world: World, texts: list[str], max_new_tokens: int, cores: tuple[int, int], tmp: Path
) -> list[Phase]:
    """Start the server on the first core, load it from the second, one phase per concurrency."""
    port = procs.free_port()
    log = tmp / "student.log"
    env = procs.local_env({**ONE_THREAD, "PYTHONPATH": str(_ROOT)})
    proc = procs.start(student_argv(world, port, tmp / "cache"), cores[0], log, env, _ROOT)
    url = f"http://{procs.HOST}:{port}"
    try:
        procs.wait_healthy(proc, port, "/health", log, timeout_s=300)
        procs.pin_tree(proc.pid, cores[0])
        asyncio.run(warm_up(url, world, max_new_tokens))
        phases = []
        for concurrency in CONCURRENCY:
            before = student_info(url)
            phase = asyncio.run(server_phase(url, world, texts, max_new_tokens, concurrency))
            after = student_info(url)
            phase.batches = after["batches"] - before["batches"]
            phase.largest_batch = after["max_batch_size_seen"]
            phases.append(phase)
            print(f"  {phase.name}: {phase.wall_s:.1f} s", flush=True)
        return phases
    finally:
        procs.stop(proc)


def ratio(value: float, base: float) -> str:
    return f"{value / base:.2f}x" if base else "-"


def table(phases: list[Phase]) -> str:
    """The phases side by side, with tokens/s and p50 against the first (the baseline)."""
    base = phases[0]
    head = (
        f"{'phase':<24}{'req':>5}{'tokens':>8}{'wall s':>8}{'tok/s':>9}{'x base':>8}"
        f"{'p50 ms':>9}{'x base':>8}{'p99 ms':>9}{'batches':>9}{'largest':>8}"
    )
    lines = [head, "-" * len(head)]
    for p in phases:
        p50 = p.percentile_ms(50)
        lines.append(
            f"{p.name:<24}{p.requests:>5}{p.tokens:>8}{p.wall_s:>8.2f}{p.tokens_per_s:>9.1f}"
            f"{ratio(p.tokens_per_s, base.tokens_per_s):>8}{p50:>9.1f}"
            f"{ratio(p50, base.percentile_ms(50)):>8}{p.percentile_ms(99):>9.1f}"
            f"{'-' if p.batches is None else p.batches:>9}"
            f"{'-' if p.largest_batch is None else p.largest_batch:>8}"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    transformers.utils.logging.disable_progress_bar()  # type: ignore[no-untyped-call]
    cores = procs.bench_cores()
    torch.set_num_threads(1)  # the server gets one core and one thread too
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="protege-student-bench-") as tmp:
        # Set-up: base, two adapters published to a file:// store.
        world = build_world(args.model, Path(tmp))
        texts = prompts(args.requests)
        print(
            f"model {args.model} ({world.base}), {args.requests} requests x "
            f"{args.max_new_tokens} new tokens, adapters {', '.join(world.adapter_ids)}"
        )
        # Baseline on the core the server will get, so both run on the same hardware.
        os.sched_setaffinity(0, {cores[0]})
        phases = [baseline(world, texts, args.max_new_tokens)]
        print(f"  {phases[0].name}: {phases[0].wall_s:.1f} s", flush=True)
        gc.collect()
        # The server on that core; this process, the load generator, on the other.
        os.sched_setaffinity(0, {cores[1]})
        phases += measure_server(world, texts, args.max_new_tokens, cores, Path(tmp))
    print()
    print(table(phases))
    print(f"\ntotal run time {time.perf_counter() - started:.1f} s")
    if args.out:
        result = {
            "options": {k: str(v) for k, v in vars(args).items()},
            "phases": [p.to_json() for p in phases],
        }
        args.out.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
