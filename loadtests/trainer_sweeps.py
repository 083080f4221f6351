"""Trainer sweeps: the tables the trainer's default settings are chosen from.

    python loadtests/trainer_sweeps.py --out DIR [--tasks demo,extract]
        [--params learning_rate=5e-4,1e-3,2e-3 epochs=1,2,3 ...] [--set KEY=VALUE ...]
        [--examples 1000] [--reuse-stores] [--dry-run]

Builds each task's store once under ``DIR/<task>/data``: the demo's ticket routing through the
real gateway (``protege demo`` with every stage after the traffic skipped), the invoice
extraction of ``sweep_tasks`` written straight into a store. Then, per task and per setting,
one ``protege train --sweep KEY=V1,V2,... --no-publish`` in a child process (its output in
``DIR/logs/``), every other setting fixed and every run scored on the task's same frozen test
sets. ``DIR/sweeps.md`` (the tables, ``sweep_report``) and ``DIR/sweeps.json`` (everything) are
rewritten after every sweep, so an interrupted run keeps what it measured. A sweep that fails is
reported as failed with its exit code and log, and the next one runs. ``--dry-run`` builds the
stores and prints the commands without training. Exits 0 whatever the scores (it is a report);
2 for bad arguments.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import shlex
import shutil
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any, Final

import orjson
import sweep_report
import sweep_tasks
import yaml

ROOT: Final = Path(__file__).resolve().parent.parent
TASKS: Final = {"demo": "demo-tickets", "extract": sweep_tasks.TASK}
PARAMS: Final = (
    "learning_rate=5e-4,1e-3,2e-3", "epochs=1,2,3", "lora_r=8,16,32",
    "max_tokens_per_batch=1024,2048,4096",
)  # fmt: skip
# Every run's settings but the swept one: the trainer's defaults, named so that a table stays
# what it says when the defaults move; rows long enough for the invoices (about 240-330 tokens
# each; the tickets take about 70) and larger evaluation batches.
FIXED: Final = (
    "epochs=3", "learning_rate=1e-3", "lora_r=16", "seq_len=512", "max_tokens_per_batch=1024",
    "eval_batch_size=32",
)  # fmt: skip
DEMO_SKIP: Final = "train,publish,student,shadow,canary,full"


@dataclass(frozen=True)
class Data:
    """A task's store and the settings file ``protege train --config`` reads for it."""

    name: str  # demo, extract
    task: str
    store: str
    config: Path
    error: str | None = None  # why the store could not be built


@dataclass
class Run:
    """One ``protege train --sweep`` and what came of it."""

    task: str
    key: str
    values: list[str]
    command: list[str]
    out: Path
    log: Path
    exit_code: int | None = None
    seconds: float | None = None
    sweep: dict[str, Any] | None = None  # its sweep.json

    def to_json(self, root: Path) -> dict[str, Any]:
        """The run for ``sweeps.json``, its log relative to ``root``."""
        return {
            "task": self.task, "key": self.key, "values": self.values,
            "command": shlex.join(self.command), "log": str(self.log.relative_to(root)),
            "exit_code": self.exit_code, "seconds": self.seconds, "sweep": self.sweep,
        }  # fmt: skip


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, required=True, help="stores, runs, logs and the report")
    p.add_argument("--tasks", type=_tasks, default=tuple(TASKS), help="demo,extract (default)")
    p.add_argument("--params", nargs="+", type=_param, default=[_param(p) for p in PARAMS],
                   metavar="KEY=V1,V2,...", help="the settings swept, one sweep each "
                   f"(default: {' '.join(PARAMS)})")  # fmt: skip
    p.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                   help=f"a fixed setting of every run, over {' '.join(FIXED)}")  # fmt: skip
    p.add_argument("--examples", type=int, default=1000, help="exchanges per task (default 1000)")
    p.add_argument("--reuse-stores", action="store_true",
                   help="keep the stores already in --out (the same test sets)")  # fmt: skip
    p.add_argument("--dry-run", action="store_true", help="build the stores, print the commands")
    args = p.parse_args(argv)
    if args.examples < 20:
        p.error("--examples must be at least 20")
    for item in args.sets:
        if "=" not in item:
            p.error(f"--set {item!r} must be KEY=VALUE")
    return args


def _tasks(text: str) -> tuple[str, ...]:
    names = tuple(n.strip() for n in text.split(",") if n.strip())
    unknown = [n for n in names if n not in TASKS]
    if not names or unknown:
        raise argparse.ArgumentTypeError(f"tasks are {','.join(TASKS)}, got {text!r}")
    return names


def _param(text: str) -> tuple[str, list[str]]:
    key, _, listed = text.partition("=")
    values = [v.strip() for v in listed.split(",") if v.strip()]
    if not key.strip() or not values:
        raise argparse.ArgumentTypeError(f"a parameter is KEY=V1,V2,..., got {text!r}")
    return key.strip(), values


def fixed_settings(sets: list[str]) -> list[str]:
    """``FIXED`` with ``sets`` over it, key by key (a later one wins)."""
    merged = {item.partition("=")[0].strip(): item for item in [*FIXED, *sets]}
    return list(merged.values())


def train_command(
    data: Data, key: str, values: list[str], fixed: list[str], out: Path
) -> list[str]:
    """The ``protege train`` sweeping ``key`` over ``values``; the swept key is not also set."""
    command = [
        sys.executable, "-m", "protege.cli", "train", "--task", data.task, "--store", data.store,
        "--config", str(data.config), "--out", str(out), "--no-publish",
        "--sweep", f"{key}={','.join(values)}",
    ]  # fmt: skip
    for item in fixed:
        if item.partition("=")[0].strip() != key:
            command += ["--set", item]
    return command


# --- data ---


def build_data(name: str, root: Path, examples: int, reuse: bool) -> Data:
    """The task's store under ``root/<task>/data``, built afresh unless ``reuse`` finds one."""
    folder = root / TASKS[name] / "data"
    builder = _demo_data if name == "demo" else _extract_data
    if reuse and (folder / "store").is_dir():
        return builder(folder, examples, root / "logs", build=False)
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    return builder(folder, examples, root / "logs", build=True)


def _demo_data(folder: Path, examples: int, logs: Path, *, build: bool) -> Data:
    """Tickets sent through the real gateway to the demo teacher (``protege demo``)."""
    data = Data("demo", TASKS["demo"], f"file://{folder / 'store'}", folder / "protege.yaml")
    if not build:
        return data
    log = logs / f"{data.task}-store.log"
    command = [sys.executable, "-m", "protege.cli", "demo", "--workdir", str(folder),
               "--requests", str(examples), "--skip", DEMO_SKIP]  # fmt: skip
    code = _run_logged(command, log)
    if code != 0:
        return replace(data, error=f"protege demo exit code {code}, log {log}")
    return data


def _extract_data(folder: Path, examples: int, logs: Path, *, build: bool) -> Data:
    """Invoice emails written straight into a store, as the gateway and sidecar would."""
    store = f"file://{folder / 'store'}"
    data = Data("extract", TASKS["extract"], store, folder / "protege.yaml")
    if build:
        asyncio.run(sweep_tasks.write_store(store, examples))
        text = yaml.safe_dump(sweep_tasks.config(store), sort_keys=False)
        data.config.write_text(text, encoding="utf-8")
    return data


# --- runs ---


def _run_logged(command: list[str], log: Path) -> int:
    """Run ``command`` from the repository root, its output streamed into ``log``."""
    log.parent.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    with log.open("w", encoding="utf-8") as sink:
        sink.write(f"$ {shlex.join(command)}\n")
        sink.flush()
        done = subprocess.run(command, cwd=ROOT, env=env, stdout=sink, stderr=subprocess.STDOUT,
                              check=False)  # fmt: skip
    return done.returncode


def run_sweep(run: Run) -> None:
    """Train, then read the sweep's ``sweep.json`` (none from an earlier run is taken)."""
    result = run.out / "sweep.json"
    result.unlink(missing_ok=True)
    started = time.monotonic()
    run.exit_code = _run_logged(run.command, run.log)
    run.seconds = round(time.monotonic() - started, 1)
    if result.is_file():
        run.sweep = orjson.loads(result.read_bytes())


def plan_runs(
    data: list[Data], params: list[tuple[str, list[str]]], fixed: list[str], root: Path
) -> list[Run]:
    """Per task with a store, one sweep per swept setting, trained into ``root/<task>/<key>``."""
    runs = []
    for d in (d for d in data if not d.error):
        for key, values in params:
            out, log = root / d.task / key, root / "logs" / f"{d.task}-{key}.log"
            command = train_command(d, key, values, fixed, out)
            runs.append(Run(d.task, key, values, command, out, log))
    return runs


def outcome(run: Run) -> str:
    """How a finished run went, for its progress line."""
    if run.exit_code != 0 or run.sweep is None:
        return f"FAILED (exit code {run.exit_code}), log {run.log}"
    kept = run.sweep["rows"][run.sweep["kept"]]["value"]
    return f"done in {run.seconds:,.0f} s, kept {sweep_report.shown(kept)}"


def machine() -> dict[str, Any]:
    """What the figures were measured on."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.partition(":")[2].strip()
                break
    except OSError:
        pass  # not Linux: platform's name stands
    try:
        torch_version = version("torch")
    except PackageNotFoundError:
        torch_version = "not installed"
    return {
        "cpu": cpu, "cores": os.cpu_count(), "usable_cores": len(os.sched_getaffinity(0)),
        "device": _device(), "torch": torch_version, "python": platform.python_version(),
    }  # fmt: skip


def _device() -> str:
    """Where ``protege train`` trains by default: the first CUDA GPU if present, else the CPU."""
    try:
        import torch
    except ImportError:
        return "cpu"
    return f"cuda ({torch.cuda.get_device_name(0)})" if torch.cuda.is_available() else "cpu"


def write_report(out: Path, report: dict[str, Any]) -> None:
    (out / "sweeps.json").write_bytes(orjson.dumps(report, option=orjson.OPT_INDENT_2))
    (out / "sweeps.md").write_text(sweep_report.render(report), encoding="utf-8")


def report(
    head: dict[str, Any], data: list[Data], runs: list[Run], root: Path
) -> dict[str, Any]:
    """``sweeps.json``'s content: ``head`` (date, machine, settings), the stores, the runs."""
    return {
        **head,
        "tasks": [{**asdict(d), "config": str(d.config)} for d in data],
        "sweeps": [run.to_json(root) for run in runs],
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    args.out = args.out.resolve()
    args.out.mkdir(parents=True, exist_ok=True)
    fixed = fixed_settings(args.sets)

    # Data: each task's store, once; every sweep of the task trains and tests on it.
    data = []
    for name in args.tasks:
        print(f"[data] {TASKS[name]}: {args.examples} exchanges", flush=True)
        data.append(build_data(name, args.out, args.examples, args.reuse_stores))
        if data[-1].error:
            print(f"[data] {TASKS[name]}: FAILED, {data[-1].error}", flush=True)
    runs = plan_runs(data, args.params, fixed, args.out)
    if args.dry_run:
        for run in runs:
            print(shlex.join(run.command))
        return 0

    # Sweeps: one after another (they would share the cores), the report after each.
    head = {"date": datetime.now(UTC).isoformat(timespec="seconds"), "machine": machine(),
            "examples": args.examples, "fixed": fixed}  # fmt: skip
    for index, run in enumerate(runs, start=1):
        print(f"[{index}/{len(runs)}] {run.task} {run.key}={','.join(run.values)}: ", end="",
              flush=True)  # fmt: skip
        run_sweep(run)
        print(outcome(run), flush=True)
        write_report(args.out, report(head, data, runs, args.out))
    write_report(args.out, report(head, data, runs, args.out))
    print(f"[report] {args.out / 'sweeps.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
