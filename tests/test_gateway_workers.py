"""``protege gateway --workers N``: N processes on one port, each its own spool, one set of
metrics, one rollout state, supervised (gateway.workers)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import psutil
import pyarrow.parquet as pq
import pytest
import yaml

from core.settings import writer_spools
from gateway.config import load_settings
from gateway.workers import replica_name, restart_delay, worker_settings
from sidecar.reconcile import fetch_gateway_counts, spooled_records
from sidecar.ship import Backlog
from tests.fake_lorax import FakeLorax
from tests.fake_teacher import FakeTeacher, wait_for
from tests.spooled import spooled_records as records_in
from tests.test_gateway_crash import free_port
from tests.test_rollout_modes import ADAPTER, publish

BODY = {"model": "tickets", "messages": [{"role": "user", "content": "hi"}]}
TOKEN = "admin-secret"


class Workers:
    """``protege gateway --workers N`` as a child process, on a free port."""

    def __init__(self, tmp: Path, teacher: FakeTeacher, count: int = 2, **sections: Any):
        self.spool, self.store = tmp / "spool", tmp / "store"
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = tmp / "protege.yaml"
        base = {
            "teacher": {"base_url": teacher.base_url},
            "spool": {"dir": str(self.spool), "segment_max_age_s": 0.5},
            "store": f"file://{self.store}",
            "sidecar": {"poll_interval_s": 0.2, "metrics_port": free_port(),
                        "shutdown_wait_s": 5.0, "compaction": {"enabled": False}},
            **sections,
        }  # fmt: skip
        config.write_text(yaml.safe_dump(base))
        self.config = config
        env = {k: v for k, v in os.environ.items() if not k.startswith("PROTEGE_")}
        cmd = [sys.executable, "-m", "protege.cli", "gateway", "--config", str(config)]
        cmd += ["--port", str(self.port), "--workers", str(count)]
        self.proc = subprocess.Popen(cmd, env=env, stderr=subprocess.DEVNULL)
        if count == 1:
            assert wait_for(self.healthy, 60), "the gateway did not come up"
        else:
            assert wait_for(lambda: len(self.serving()) == count, 60), "workers did not come up"

    def healthy(self) -> bool:
        try:
            return httpx.get(self.url + "/healthz", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    def ask(self, client: httpx.Client | None = None) -> httpx.Response:
        """One chat request, on ``client`` or on a connection of its own."""
        if client is not None:
            return client.post(self.url + "/v1/chat/completions", json=BODY)
        with httpx.Client(timeout=10) as fresh:
            return fresh.post(self.url + "/v1/chat/completions", json=BODY)

    def serving(self, tries: int = 20) -> dict[int, int]:
        """worker index -> pid, as seen over ``tries`` fresh connections."""
        seen: dict[int, int] = {}
        for _ in range(tries):
            try:
                with httpx.Client(timeout=5) as c:
                    head = c.get(self.url + "/healthz").headers.get("x-protege-worker", "")
            except httpx.HTTPError:
                continue
            index, pid = head.split(":")
            seen[int(index)] = int(pid)
        return seen

    def metric(self, name: str) -> float:
        text = httpx.get(self.url + "/metrics", timeout=10).text
        return sum(
            float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
            if line.startswith(name) and line[len(name)] in "{ "
        )  # fmt: skip

    def stop(self) -> int:
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(90)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


@pytest.fixture
def workers(tmp_path: Path, teacher: FakeTeacher) -> Iterator[Any]:
    started: list[Workers] = []

    def start(count: int = 2, **sections: Any) -> Workers:
        started.append(Workers(tmp_path, teacher, count, **sections))
        return started[-1]

    yield start
    for w in started:
        w.close()


@pytest.mark.parametrize(
    ("failures", "delay"), [(0, 0.5), (1, 1.0), (3, 4.0), (6, 30.0), (100, 30.0)]
)
def test_workers_restart_backoff(failures: int, delay: float) -> None:
    """A worker that keeps dying young is restarted after a doubling delay, at most 30 s."""
    assert restart_delay(failures) == delay


def test_workers_settings_each_their_own_spool_and_name(tmp_path: Path) -> None:
    """Worker i writes <spool>/worker-<i>/ with its share of the cap, named <pod>-w<i>."""
    settings = load_settings(env={"PROTEGE_SPOOL_DIR": str(tmp_path)}, spool={"max_bytes": 10**6})
    mine = worker_settings(settings, 1, 4)
    assert mine.spool.dir == tmp_path / "worker-1" and mine.spool.max_bytes == 250_000
    assert replica_name(1, {"PROTEGE_POD_NAME": "gw-abc"}) == "gw-abc-w1"
    (tmp_path / "worker-1").mkdir()
    (tmp_path / "worker-0").mkdir()
    (tmp_path / "feedback").mkdir()
    assert writer_spools(tmp_path) == [tmp_path, tmp_path / "worker-0", tmp_path / "worker-1"]
    total = Backlog(10, 1, 5) + Backlog(3, 2, None) + Backlog(0, 0, 2)
    assert total == Backlog(13, 3, 2)


def test_workers_answer_on_one_port_and_stop_with_their_spools_sealed(workers: Any) -> None:
    """Connections land on both workers; each spools what it answered in its own directory;
    SIGTERM stops them all, every segment sealed."""
    gw = workers(2)
    answered: dict[int, set[str]] = {0: set(), 1: set()}
    for _ in range(40):
        resp = gw.ask()
        assert resp.status_code == 200
        index = int(resp.headers["x-protege-worker"].split(":")[0])
        answered[index].add(resp.headers["x-protege-request-id"])
    assert answered[0] and answered[1], "every connection went to one worker"
    assert gw.stop() == 0
    assert not list(gw.spool.rglob("*.open")), "a segment was left open"
    assert not records_in(gw.spool), "a worker wrote the spool directory itself"
    for index, ids in answered.items():
        assert {r["request_id"] for r in records_in(gw.spool / f"worker-{index}")} == ids


def test_workers_metrics_aggregate_exactly_across_a_restart(workers: Any) -> None:
    """/metrics on any worker counts every worker's requests, and keeps counting a killed
    worker's after it is restarted."""
    gw = workers(2)
    for _ in range(20):
        assert gw.ask().status_code == 200
    for _ in range(4):  # each scrape on a fresh connection: both workers answer some
        assert gw.metric("protege_requests_total") == 20
    before = gw.serving()
    os.kill(before[1], signal.SIGKILL)
    assert wait_for(lambda: gw.serving().get(1) not in (None, before[1]), 30), "no restart"
    for _ in range(10):
        assert gw.ask().status_code == 200
    assert gw.metric("protege_requests_total") == 30
    assert gw.metric("protege_spool_records_total") == 30
    assert gw.metric("protege_gateway_worker_restarts_total") == 1
    assert gw.stop() == 0


def test_workers_shipped_exactly_once_by_the_sidecar(workers: Any, tmp_path: Path) -> None:
    """A sidecar started before the workers finds their spools as they appear and ships
    every answered exchange once; reconcile's counts agree."""
    gw = workers(2)
    sidecar = subprocess.Popen(
        [sys.executable, "-m", "protege.cli", "sidecar", "--config", str(gw.config)],
        env={k: v for k, v in os.environ.items() if not k.startswith("PROTEGE_")},
        stderr=subprocess.DEVNULL,
    )
    try:
        ids = {gw.ask().headers["x-protege-request-id"] for _ in range(60)}
        answered, dropped = fetch_gateway_counts(gw.url)
        assert (answered, dropped) == (60, 0)
        assert gw.stop() == 0
        sidecar.send_signal(signal.SIGTERM)
        assert sidecar.wait(60) == 0
    finally:
        if sidecar.poll() is None:
            sidecar.kill()
    parts = sorted((gw.store / "exchanges").rglob("*.parquet"))
    stored = [i for p in parts for i in pq.read_table(p).column("request_id").to_pylist()]
    assert len(stored) == len(set(stored)) == 60 and set(stored) == ids
    assert spooled_records(gw.spool) == 0


def test_workers_all_apply_an_admin_change_within_the_sync_interval(
    workers: Any, lorax: FakeLorax, tmp_path: Path
) -> None:
    """A rollout PUT answered by one worker is in force in every worker within
    rollouts.sync_interval_s (read through the store)."""
    publish(tmp_path / "store")
    gw = workers(
        2, student={"base_url": lorax.base_url}, routes=[{"alias": "tickets", "task": "tickets"}],
        rollouts={"admin_token": TOKEN, "sync_interval_s": 0.5},
    )  # fmt: skip
    auth = {"authorization": f"Bearer {TOKEN}"}
    change = {"mode": "canary", "percent": 100, "adapter": ADAPTER}
    resp = httpx.put(gw.url + "/admin/routes/tickets", json=change, headers=auth, timeout=10)
    assert resp.status_code == 200, resp.text
    changed_at = time.monotonic()

    def modes() -> dict[int, str]:
        seen: dict[int, str] = {}
        for _ in range(10):
            with httpx.Client(timeout=5, headers=auth) as c:
                r = c.get(gw.url + "/admin/routes/tickets")
            seen[int(r.headers["x-protege-worker"].split(":")[0])] = r.json()["mode"]
        return seen

    assert wait_for(lambda: modes() == {0: "canary", 1: "canary"}, 10)
    assert time.monotonic() - changed_at < 0.5 + 4.0  # the interval, plus polling on 2 cores
    assert gw.stop() == 0


def _load(gw: Workers, stop: threading.Event, answered: list[tuple[str, int]]) -> None:
    with httpx.Client(timeout=5) as client:
        for _ in range(5000):  # bounded; the test stops it far sooner
            if stop.is_set():
                return
            try:
                resp = gw.ask(client)
            except httpx.HTTPError:
                continue  # the killed worker's connection: the next request opens another
            if resp.status_code == 200:
                worker = int(resp.headers["x-protege-worker"].split(":")[1])
                answered.append((resp.headers["x-protege-request-id"], worker))


@pytest.mark.slow
def test_workers_kill_9_of_one_under_load_loses_no_answered_exchange(workers: Any) -> None:
    """kill -9 of one worker under load: every answered exchange is spooled, the other
    worker keeps serving, and the killed one comes back."""
    gw = workers(2)
    pids = gw.serving()
    stop, answered = threading.Event(), []
    load = [threading.Thread(target=_load, args=(gw, stop, answered)) for _ in range(6)]
    try:
        for t in load:
            t.start()
        assert wait_for(lambda: len(answered) >= 150, 30)
        os.kill(pids[1], signal.SIGKILL)
        killed_at = len(answered)
        assert wait_for(lambda: gw.serving().get(1) not in (None, pids[1]), 30), "no restart"
        assert wait_for(lambda: len(answered) >= killed_at + 150, 30)
    finally:
        stop.set()
        for t in load:
            t.join(10)
    after = {pid for _, pid in answered[killed_at:]}
    assert pids[0] in after, "the other worker stopped serving"
    assert gw.stop() == 0
    stored = {r["request_id"] for d in writer_spools(gw.spool) for r in records_in(d)}
    missing = {rid for rid, _ in answered} - stored
    assert not missing, f"{len(missing)} of {len(answered)} answered exchanges lost"


def test_workers_one_is_the_single_process_of_old(workers: Any) -> None:
    """--workers 1: one process, no worker header, the spool directory itself, in-process
    metrics."""
    gw = workers(1)
    resp = gw.ask()
    assert resp.status_code == 200 and "x-protege-worker" not in resp.headers
    assert not psutil.Process(gw.proc.pid).children()
    assert gw.metric("protege_requests_total") == 1
    assert gw.stop() in (0, -signal.SIGTERM)
    ids = [r["request_id"] for r in records_in(gw.spool)]
    assert ids == [resp.headers["x-protege-request-id"]]
    assert not (gw.spool / ".metrics").exists() and not (gw.spool / "worker-0").exists()
