"""Data-parallel training: two ``gloo`` ranks on CPU take the steps one process takes, the
``protege train --nproc`` launch writes one adapter from rank 0, and a rank that dies fails the
run with nothing written or published. ``pytest -k distributed`` selects these tests."""

from __future__ import annotations

import asyncio
import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
import pytest
import torch
from safetensors.torch import load_file

from core.errors import ConfigError
from tests.test_demo import tiny_base  # noqa: F401  (a fixture: a tiny base for ticket words)
from tests.test_learning import log_tickets
from trainer.distributed import World, launch_command, without_nproc, world_from_env
from trainer.model import load_adapter, load_base, resolve_base
from trainer.publish import list_versions

ROOT = Path(__file__).resolve().parent.parent
WORKER = ROOT / "tests" / "distributed_worker.py"
TORCHRUN = [
    sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--rdzv-backend", "c10d",
    "--rdzv-endpoint", "127.0.0.1:0", "--max-restarts", "0",
]  # fmt: skip
CURATION = (
    "trainer:\n  tasks:\n    tickets:\n      label: {json_path: '$.category'}\n"
    "      test_fraction: 0.25\n      test_balanced_per_class: 2\n"
)


def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}


@pytest.mark.parametrize(
    ("env", "world"),
    [
        ({}, World()),
        ({"RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "1"}, World(1, 2, 1, 2)),
        ({"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "2"},
         World(3, 4, 1, 2)),
    ],
)  # fmt: skip
def test_distributed_world_is_read_from_torchrun_env(env: dict[str, str], world: World) -> None:
    """RANK, WORLD_SIZE, LOCAL_RANK and LOCAL_WORLD_SIZE as torchrun sets them; one lone rank
    without them."""
    assert world_from_env(env) == world
    assert world_from_env(env).main == (world.rank == 0)


def test_distributed_launch_reruns_the_command_without_nproc_on_loopback() -> None:
    """The launch is torchrun on one node, rendezvous on 127.0.0.1, no restarts, running the
    same protege command minus its --nproc."""
    argv = ["train", "--task", "t", "--nproc", "2", "--set", "epochs=1", "--nproc=3"]
    assert without_nproc(argv) == ["train", "--task", "t", "--set", "epochs=1"]
    command = launch_command(2, argv, python="py")
    assert command[:3] == ["py", "-m", "torch.distributed.run"]
    joined = " ".join(command)
    assert "--nproc-per-node 2" in joined and "--rdzv-endpoint 127.0.0.1:0" in joined
    assert "--max-restarts 0" in joined
    assert command[-6:] == ["-m", "protege.cli", "train", "--task", "t", "--set", "epochs=1"][-6:]


def test_distributed_nproc_inside_torchrun_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    """--nproc in a process that already is a rank would launch ranks of ranks: refused."""
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    with pytest.raises(ConfigError, match="already one rank"):
        from trainer.cli import _launch

        _launch(type("Args", (), {"argv": [], "out": None, "task": "t", "nproc": 2})())


@pytest.mark.timeout(240)
@pytest.mark.parametrize("sharding", ["ddp", "fsdp"])
def test_distributed_two_ranks_take_the_steps_of_one_process(
    sharding: str, tmp_path: Path
) -> None:
    """Two gloo ranks, each taking one of a step's two micro-batches (the base whole on each,
    or its blocks sharded over both), follow one process's loss curve and end with the same
    LoRA weights (float32, no dropout: equal up to summation order)."""
    alone, pair = tmp_path / "alone", tmp_path / "pair"
    _run([sys.executable, str(WORKER), str(alone)], timeout=120)
    _run([*TORCHRUN, "--nproc-per-node", "2", str(WORKER), str(pair), sharding], timeout=180)

    one, two = (json.loads((d / "result.json").read_text()) for d in (alone, pair))
    assert len(one["curve"]) == len(two["curve"]) == 8
    assert one["curve"][-1] < one["curve"][0] / 2  # it learned: a curve worth comparing
    assert two["curve"] == pytest.approx(one["curve"], rel=1e-5)
    assert one["tokens"] == two["tokens"]  # the same examples, counted over both ranks
    assert (one["memory"]["ranks"], two["memory"]["ranks"]) == (1, 2)
    assert (one["memory"]["grad_accum_steps"], two["memory"]["grad_accum_steps"]) == (2, 1)
    assert two["memory"]["sharded"] == (sharding == "fsdp")
    first, second = (load_file(str(d / "lora.safetensors")) for d in (alone, pair))
    assert first.keys() == second.keys() and first
    for name, weight in first.items():
        torch.testing.assert_close(second[name], weight, atol=1e-6, rtol=1e-5)


def _run(command: list[str], timeout: float) -> None:
    done = subprocess.run(command, env=_env(), timeout=timeout, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-5000:]


def _command(tmp_path: Path, base: Path, *args: str) -> tuple[list[str], str, Path]:
    store = f"file://{tmp_path / 'store'}"
    log_tickets(store, 48, tmp_path)
    config = tmp_path / "protege.yaml"
    config.write_text(CURATION)
    out = tmp_path / "run"
    command = [
        sys.executable, "-m", "protege.cli", "train", "--task", "tickets", "--config",
        str(config), "--store", store, "--out", str(out), "--base-model", str(base),
        "--device", "cpu", "--nproc", "2", "--set", "seq_len=256",
        "--set", "max_tokens_per_batch=512", "--set", "eval_max_new_tokens=8", *args,
    ]  # fmt: skip
    return command, store, out


@pytest.mark.timeout(300)
@pytest.mark.parametrize("sharding", ["ddp", "fsdp"])
def test_distributed_protege_train_nproc_writes_one_adapter_from_rank_0(
    sharding: str,
    tmp_path: Path,
    tiny_base: Path,  # noqa: F811
) -> None:
    """``protege train --nproc 2``: both ranks train, rank 0 alone speaks, evaluates and writes
    the adapter and run.json, whose plan says two ranks; a sharded run's adapter is whole and
    loads on the base like any other."""
    command, _, out = _command(tmp_path, tiny_base, "--no-publish", "--set", "max_steps=3",
                               "--set", f"sharding={sharding}")  # fmt: skip
    done = subprocess.run(command, env=_env(), timeout=240, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]

    assert done.stdout.count("[memory] rows of") == 1  # one plan printed, by rank 0
    assert "on each of 2 ranks" in done.stdout
    assert done.stdout.count("[eval] test-indist") == 1
    manifest = json.loads((out / "run.json").read_text())
    assert manifest["training"]["memory"]["ranks"] == 2
    assert manifest["training"]["memory"]["sharded"] == (sharding == "fsdp")
    assert manifest["training"]["steps"] == 3
    base, _ = load_base(resolve_base(str(tiny_base)), dtype=torch.float32)
    student = load_adapter(base, out / "adapter")
    saved = load_file(str(out / "adapter" / "adapter_model.safetensors"))
    assert len(saved) == 2 * 7 * base.config.num_hidden_layers  # A and B of every linear layer
    assert all(t.dtype == torch.float32 and t.abs().sum() > 0 for t in saved.values())
    assert student.peft_config["default"].target_modules


@pytest.mark.timeout(300)
def test_distributed_a_rank_that_dies_fails_the_run_cleanly(
    tmp_path: Path,
    tiny_base: Path,  # noqa: F811
) -> None:
    """Rank 1 killed mid-training: the run exits non-zero within seconds, no rank is left
    running, and neither an adapter nor a run.json is written, nor anything published."""
    command, store, out = _command(tmp_path, tiny_base, "--set", "max_steps=100000")
    launcher = subprocess.Popen(command, env=_env(), stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True)  # fmt: skip
    lines, pump = _lines(launcher)
    try:
        _wait_for(lines, "[memory] rows of", timeout=180)  # rank 0 planned: training begins
        ranks = _ranks(launcher.pid)
        time.sleep(1.0)  # a few steps in
        os.kill(ranks["1"].pid, signal.SIGKILL)
        code = launcher.wait(timeout=60)
    finally:
        if launcher.poll() is None:
            for child in psutil.Process(launcher.pid).children(recursive=True):
                child.kill()
            launcher.kill()
        launcher.wait(timeout=30)
        pump.join(timeout=30)  # the output read to its end
        assert launcher.stdout is not None
        launcher.stdout.close()

    assert code != 0
    assert not any(p.is_running() and p.status() != psutil.STATUS_ZOMBIE for p in ranks.values())
    assert not (out / "adapter").exists() and not (out / "run.json").exists()
    assert asyncio.run(list_versions(store, "tickets")) == []


def _lines(process: subprocess.Popen[str]) -> tuple[queue.Queue[str], threading.Thread]:
    """The process's output lines, read on a thread so waiting for one can time out."""
    lines: queue.Queue[str] = queue.Queue()

    def pump() -> None:
        assert process.stdout is not None
        for line in process.stdout:
            lines.put(line)

    thread = threading.Thread(target=pump, daemon=True)
    thread.start()
    return lines, thread


def _wait_for(lines: queue.Queue[str], text: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    seen: list[str] = []
    while time.monotonic() < deadline:
        try:
            line = lines.get(timeout=max(0.1, deadline - time.monotonic()))
        except queue.Empty:
            break
        seen.append(line)
        if text in line:
            return
    raise AssertionError(f"{text!r} never came; output: {''.join(seen)[-2000:]}")


def _ranks(pid: int) -> dict[str, psutil.Process]:
    """The launched rank processes by their RANK."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        found = {}
        for child in psutil.Process(pid).children(recursive=True):
            try:
                rank = child.environ().get("RANK")
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                continue
            if rank is not None:
                found[rank] = child
        if {"0", "1"} <= found.keys():
            return found
        time.sleep(0.1)
    raise AssertionError("the two ranks never appeared")
