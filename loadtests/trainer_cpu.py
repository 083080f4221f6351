"""Trainer on CPU: ``protege train`` with its defaults beside a plain padded loop, one run.

    python loadtests/trainer_cpu.py [--out DIR] [--requests 1000] [--plain-seconds 120]
        [--threads 2] [--set KEY=VALUE ...] [--skip-demo-settings]

The demo task's store is built as a user would (``protege demo``, the stages after the traffic
skipped). On it, each in its own child process with ``OMP_NUM_THREADS=--threads``: ``protege
train --device cpu`` with its defaults, then with the demo's ``TRAIN_SETTINGS`` on the same
snapshot (figures from each ``run.json``), then ``trainer_baselines.naive_padded`` with LoRA on
the real SmolLM2 in float32 and (where the CPU computes it natively) bfloat16 weights, timed for
``--plain-seconds`` after 2 warm-up steps. A thread samples each child's RSS every 20 ms. Prints
one table and three verdicts, writes ``DIR/results.json``; exits 0 whatever the figures.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shlex
import shutil
import subprocess
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

import psutil
import trainer_cpu_report as report
import trainer_imports
from trainer_cpu_report import Scenario

ROOT: Final = Path(__file__).resolve().parent.parent
DEMO_SKIP: Final = "train,publish,student,shadow,canary,full"
ECHOED: Final = ("[data]", "[memory]", "[train]", "[eval]", "[plain]")
SAMPLE_S: Final = 0.02  # RSS sampling interval
WARMUP_STEPS: Final = 2  # plain loop steps before its window opens
DTYPES: Final = {report.PLAIN_FP32: "float32", report.PLAIN_BF16: "bfloat16"}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=Path(".protege/trainer-cpu"),
                   help="store, runs, logs and results.json")  # fmt: skip
    p.add_argument("--requests", type=int, default=1000, help="demo exchanges (the data)")
    p.add_argument("--plain-seconds", type=float, default=120.0, help="plain loops' window")
    p.add_argument("--threads", type=int, default=2, help="OMP_NUM_THREADS of every child")
    p.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                   help="a TrainConfig setting of both protege runs (repeatable)")  # fmt: skip
    p.add_argument("--skip-demo-settings", action="store_true",
                   help="no protege run with the demo's settings")  # fmt: skip
    # A plain loop in this process: its scenario, store and snapshot (the parent's child).
    p.add_argument("--plain", choices=tuple(DTYPES), help=argparse.SUPPRESS)
    p.add_argument("--store", help=argparse.SUPPRESS)
    p.add_argument("--snapshot", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.requests < 20 or args.plain_seconds <= 0 or args.threads < 1:
        p.error("--requests >= 20, --plain-seconds > 0 and --threads >= 1")
    for item in args.sets:
        if "=" not in item:
            p.error(f"--set {item!r} must be KEY=VALUE")
    return args


# --- child processes ---


class PeakRss:
    """The peak RSS of a process and its children, sampled every ``SAMPLE_S`` by a thread."""

    def __init__(self, pid: int) -> None:
        self.peak = 0
        self._root = psutil.Process(pid)
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def __enter__(self) -> PeakRss:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._done.set()
        self._thread.join()

    def _sample(self) -> None:
        while True:
            self.peak = max(self.peak, self._rss())
            if self._done.wait(SAMPLE_S):
                return

    def _rss(self) -> int:
        try:
            procs = [self._root, *self._root.children(recursive=True)]
        except psutil.NoSuchProcess:
            return 0  # the child has exited; its peak is already counted
        total = 0
        for proc in procs:
            try:
                total += proc.memory_info().rss
            except psutil.NoSuchProcess:
                continue  # ended between the listing and the reading: it holds nothing now
        return total


@dataclass(frozen=True)
class Child:
    exit_code: int
    wall_s: float
    peak_rss: int
    tail: list[str]  # its last output lines


def run_child(command: list[str], log: Path, threads: int) -> Child:
    """Run ``command`` from the repository root, its output into ``log``; echo ``ECHOED``."""
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "PYTHONUNBUFFERED": "1"}
    tail: deque[str] = deque(maxlen=20)
    log.parent.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    with log.open("w", encoding="utf-8") as sink:
        sink.write(f"$ {shlex.join(command)}\n")
        proc = subprocess.Popen(
            command, cwd=ROOT, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT, text=True, bufsize=1,
        )  # fmt: skip
        assert proc.stdout is not None
        with PeakRss(proc.pid) as rss:
            for line in proc.stdout:
                sink.write(line)
                tail.append(line.rstrip("\n"))
                if line.startswith(ECHOED):
                    print(f"  {line.rstrip()}", flush=True)
            code = proc.wait()
    return Child(code, time.perf_counter() - started, rss.peak, list(tail))


def _ran(scenario: Scenario, child: Child) -> Scenario:
    scenario.exit_code, scenario.child_wall_s = child.exit_code, round(child.wall_s, 1)
    scenario.peak_rss_bytes = child.peak_rss
    if child.exit_code != 0:
        scenario.missing = f"failed: exit code {child.exit_code}, log {scenario.log}"
    return scenario


# --- data and Protégé runs ---


def build_data(out: Path, requests: int, threads: int) -> str | None:
    """The demo's store under ``out/demo``, afresh; None, or why it could not be built."""
    folder = out / "demo"
    if folder.exists():
        shutil.rmtree(folder)
    command = [sys.executable, "-m", "protege.cli", "demo", "--workdir", str(folder),
               "--requests", str(requests), "--skip", DEMO_SKIP]  # fmt: skip
    child = run_child(command, out / "demo.log", threads)
    if child.exit_code != 0:
        return f"protege demo exit code {child.exit_code}, log {out / 'demo.log'}"
    return None


def protege_run(
    name: str, out: Path, sets: list[str], threads: int, dataset: str | None
) -> Scenario:
    """``protege train`` on the demo store with ``sets``, into ``out/<folder>``."""
    from protege.demo import TASK

    folder = "default" if name == report.DEFAULT else "demo-settings"
    run_dir, demo = out / folder, out / "demo"
    command = [
        sys.executable, "-m", "protege.cli", "train", "--task", TASK,
        "--config", str(demo / "protege.yaml"), "--store", f"file://{demo / 'store'}",
        "--out", str(run_dir), "--no-publish", "--device", "cpu",
        *(["--dataset", dataset] if dataset else []),
    ]  # fmt: skip
    for item in sets:
        command += ["--set", item]
    scenario = Scenario(name, command=shlex.join(command), log=str(out / f"{folder}.log"))
    (run_dir / "run.json").unlink(missing_ok=True)  # an earlier run's figures are not taken
    scenario = _ran(scenario, run_child(command, Path(scenario.log), threads))
    if scenario.missing is None and not (run_dir / "run.json").is_file():
        scenario.missing = f"failed: no {run_dir / 'run.json'}, log {scenario.log}"
    if scenario.missing is None:
        run = json.loads((run_dir / "run.json").read_text(encoding="utf-8"))
        scenario = report.from_run(scenario, run)
    return scenario


# --- the plain padded loop ---


def plain_run(name: str, out: Path, threads: int, seconds: float, snapshot: str) -> Scenario:
    """``name``'s plain loop in a fresh child process (this script with ``--plain``)."""
    command = [sys.executable, str(Path(__file__).resolve()), "--plain", name,
               "--store", f"file://{out / 'demo' / 'store'}", "--snapshot", snapshot,
               "--plain-seconds", str(seconds)]  # fmt: skip
    scenario = Scenario(name, command=shlex.join(command), log=str(out / f"{name}.log"))
    child = run_child(command, Path(scenario.log), threads)
    scenario = _ran(scenario, child)
    if scenario.missing is None:
        got = json.loads(next(line for line in reversed(child.tail) if line.startswith("{")))
        scenario.tokens, scenario.train_s = got["tokens"], got["seconds"]
        scenario.steps, scenario.examples = got["steps"], got["examples"]
        scenario.snapshot, scenario.notes = snapshot, got["notes"]
    return scenario


def measure_plain(name: str, store: str, snapshot: str, seconds: float) -> dict[str, Any]:
    """In this process: LoRA on SmolLM2 in ``name``'s dtype, ``naive_padded`` for ``seconds``."""
    import torch
    from trainer_baselines import BATCH_SIZE, naive_padded

    from protege.demo import TASK
    from trainer.batches import encode_all
    from trainer.config import TrainConfig
    from trainer.dataset import load_snapshot
    from trainer.model import attach_lora, load_base, resolve_base

    _, splits, _ = asyncio.run(load_snapshot(store, TASK, snapshot))
    cfg = TrainConfig()
    dtype = getattr(torch, DTYPES[name])
    model, tokenizer = load_base(resolve_base("smollm2"), dtype=dtype)
    encoded, dropped = encode_all(tokenizer, splits["train"], cfg)
    if len(encoded) < BATCH_SIZE:
        raise SystemExit(f"{name}: {len(encoded)} training examples, a batch needs {BATCH_SIZE}")
    model = attach_lora(model, cfg)
    print(f"[plain] {name}: {len(encoded)} examples ({dropped} over {cfg.seq_len} tokens left "
          f"out), batch {BATCH_SIZE}, {torch.get_num_threads()} threads", flush=True)  # fmt: skip
    measured = naive_padded(model, encoded, tokenizer.pad_token_id, device=torch.device("cpu"),
                            seconds=seconds, warmup=WARMUP_STEPS)  # fmt: skip
    print(f"[plain] {name}: {measured.tokens_per_s:,.0f} real tokens/s over "
          f"{measured.steps} steps in {measured.seconds:.1f} s", flush=True)  # fmt: skip
    loss = measured.final_loss if measured.final_loss is not None else float("nan")
    notes = [f"{WARMUP_STEPS} warm-up steps took {measured.warmup_s:.1f} s",
             f"final loss {loss:.3f}; {measured.notes[0]}"]  # fmt: skip
    return {"tokens": measured.tokens, "seconds": measured.seconds, "steps": measured.steps,
            "examples": len(encoded), "notes": notes}  # fmt: skip


# --- report ---


def write_results(out: Path, head: dict[str, Any], scenarios: list[Scenario]) -> None:
    body = report.results(head, scenarios)
    (out / "results.json").write_text(json.dumps(body, indent=2), encoding="utf-8")


def protege_scenarios(args: argparse.Namespace, out: Path) -> list[Scenario]:
    """Protégé with its defaults, then with the demo's settings on the same snapshot."""
    from protege.demo import TRAIN_SETTINGS

    print(f"[run] {report.DEFAULT}", flush=True)
    default = protege_run(report.DEFAULT, out, args.sets, args.threads, None)
    if args.skip_demo_settings:
        return [default, Scenario(report.DEMO, missing="skipped (--skip-demo-settings)")]
    print(f"[run] {report.DEMO}: {' '.join(TRAIN_SETTINGS)}", flush=True)
    sets = [*TRAIN_SETTINGS, *args.sets]
    return [default, protege_run(report.DEMO, out, sets, args.threads, default.snapshot)]


def plain_scenario(
    name: str, args: argparse.Namespace, out: Path, snapshot: str | None
) -> Scenario:
    """``name``'s plain loop on the default run's training split, or why it did not run."""
    from trainer.model import native_bf16

    if snapshot is None:
        return Scenario(name, missing="no snapshot: the default run failed")
    if name == report.PLAIN_BF16 and not native_bf16("cpu"):
        return Scenario(name, missing="skipped: no AMX/AVX-512 BF16 on this CPU")
    print(f"[run] {name}: {args.plain_seconds:g} s window", flush=True)
    return plain_run(name, out, args.threads, args.plain_seconds, snapshot)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    trainer_imports.prepare()
    if args.plain:
        print(json.dumps(measure_plain(args.plain, args.store, args.snapshot,
                                       args.plain_seconds)))  # fmt: skip
        return 0
    from trainer_sweeps import machine

    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    options = {k: getattr(args, k) for k in ("requests", "plain_seconds", "threads", "sets")}
    head = {"date": datetime.now(UTC).isoformat(timespec="seconds"), "machine": machine(),
            "options": options}  # fmt: skip

    # Data: the demo's traffic through the real gateway into a store.
    print(f"[data] protege demo: {args.requests} exchanges into {out / 'demo'}", flush=True)
    failed = build_data(out, args.requests, args.threads)
    if failed:
        print(f"[data] FAILED: {failed}")
        write_results(out, {**head, "data_error": failed}, [])
        return 0

    # Protégé, then the plain loops on its snapshot; the results rewritten after each.
    scenarios = protege_scenarios(args, out)
    write_results(out, head, scenarios)
    for name in (report.PLAIN_FP32, report.PLAIN_BF16):
        scenarios.append(plain_scenario(name, args, out, scenarios[0].snapshot))
        write_results(out, head, scenarios)

    print("", *report.render(scenarios), sep="\n")
    print(f"\n[report] {out / 'results.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
