"""``protege autopilot`` killed with SIGKILL while its run trains, then started again: the run
dies with it, nothing half-published stays, and the next autopilot gives the dead run up and
trains to the end. Real processes, real training of the tiny base, a real gateway."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import psutil
import pytest
import yaml

from core.events import timeline
from core.keys import MANIFEST, adapters_prefix
from core.store import open_store
from tests.fake_lorax import FakeLorax
from tests.test_autopilot_service import TOKEN, route
from tests.test_demo import tiny_base  # noqa: F401 - the fixture
from tests.ticket_runs import CONFIG, TASK, ticket_store
from trainer.autopilot.status import read_status

SLOW_TRAINING = ("--set", "max_steps=100000", "--set", "seq_len=256")
FAST_TRAINING = ("--set", "max_steps=2", "--set", "seq_len=256", "--set",
                 "max_tokens_per_batch=1024", "--set", "eval_max_new_tokens=8")  # fmt: skip


def write_config(
    path: Path, tmp: Path, base: Path, gateway_url: str, train: tuple[str, ...]
) -> None:
    config = yaml.safe_load(CONFIG)
    config["autopilot"] = {
        "interval_s": 1, "lease_ttl_s": 3, "poll_s": 0.2, "metrics_port": None,
        "gateway_url": gateway_url, "run_dir": str(tmp / "runs"),
        "tasks": {TASK: {"min_new_exchanges": 10, "base_model": str(base),
                         "train_args": ["--device", "cpu", *train]}},
    }  # fmt: skip
    path.write_text(yaml.safe_dump(config))


def autopilot(config: Path, store: str) -> subprocess.Popen[bytes]:
    env = {**os.environ, "PROTEGE_ADMIN_TOKEN": TOKEN, "OMP_NUM_THREADS": "1"}
    argv = [sys.executable, "-m", "protege.cli", "autopilot", "--config", str(config),
            "--store", store, "--once"]  # fmt: skip
    return subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


def training_child(proc: subprocess.Popen[bytes], timeout_s: float) -> psutil.Process:
    """The autopilot's `protege train` child, once it is training."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for child in psutil.Process(proc.pid).children():
            log = Path(child.cmdline()[child.cmdline().index("--out") + 1]).parent / "train.log"
            if "train" in child.cmdline() and log.exists() and "[train]" in log.read_text():
                return child
        assert proc.poll() is None, proc.stdout.read().decode() if proc.stdout else ""
        time.sleep(0.2)
    raise AssertionError("the autopilot's run never started training")


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_autopilot_killed_mid_training_restarts_and_completes_the_run(
    tmp_path: Path, tiny_base: Path, make_gateway: Any  # noqa: F811
) -> None:
    store, _ = ticket_store(tmp_path)
    with FakeLorax() as lorax:
        gw = make_gateway(
            student={"base_url": lorax.base_url}, routes=[{"alias": TASK, "task": TASK}],
            rollouts={"admin_token": TOKEN}, store=store,
        )  # fmt: skip
        config = tmp_path / "autopilot.yaml"
        write_config(config, tmp_path, tiny_base, gw.url, SLOW_TRAINING)

        first = autopilot(config, store)
        child = training_child(first, timeout_s=120)
        first.send_signal(signal.SIGKILL)
        first.communicate(timeout=10)
        child.wait(10)  # the run dies with its autopilot: nobody publishes behind our back

        status = asyncio.run(_status(store))
        assert status.current is not None  # the dead autopilot's run, left under way
        time.sleep(3.5)  # its lease expires
        write_config(config, tmp_path, tiny_base, gw.url, FAST_TRAINING)
        second = autopilot(config, store)
        out, _ = second.communicate(timeout=180)
        assert second.returncode == 0, out.decode()
        assert f"{TASK}: new_data" in out.decode()

        events = asyncio.run(_events(store))
        kinds = [e.kind for e in events]
        assert kinds[:5] == [
            "retrain_decided", "run_started",  # the first autopilot's
            "run_abandoned", "retrain_decided", "run_started",  # the second's
        ]  # fmt: skip
        assert events[1].run_id == events[2].run_id == status.current.run_id
        assert events[4].run_id != status.current.run_id
        assert kinds[-1] in ("published", "rejected", "first_rollout")
        assert asyncio.run(_unfinished(store)) == []
        if "published" in kinds:
            assert route(gw, TASK)["mode"] == "shadow"
        children = psutil.Process().children(recursive=True)
        assert not [c for c in children if "protege.cli" in c.cmdline()]


async def _status(store: str) -> Any:
    async with open_store(store) as s:
        return await read_status(s, TASK)


async def _events(store: str) -> Any:
    async with open_store(store) as s:
        return await timeline(s, TASK)


async def _unfinished(store: str) -> list[str]:
    """Adapter folders without a manifest."""
    async with open_store(store) as s:
        keys = [o.key for o in await s.list_objects(adapters_prefix(TASK))]
    folders = {k.split("/")[2] for k in keys}
    return sorted(f for f in folders if f"{adapters_prefix(TASK)}{f}/{MANIFEST}" not in keys)
