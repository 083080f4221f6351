"""The autopilot's loop against a real gateway (admin API) and a real store; the training run
itself is a stand-in that publishes (or not) and writes its outcome as ``protege train`` does.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from core.control import set_hold
from core.errors import StoreError
from core.events import timeline
from core.ids import new_id
from core.keys import lease_key, manifest_key
from core.lease import Held
from core.live import LiveView, write_view
from core.runs import RunRecord, write_run
from core.store import Store, open_store
from tests.conftest import RunningGateway
from tests.fake_lorax import FakeLorax
from tests.stored import put_part, record
from trainer.autopilot.config import AutopilotConfig, AutopilotSettings, TaskRules
from trainer.autopilot.gateway import GatewayAdmin
from trainer.autopilot.metrics import AutopilotMetrics
from trainer.autopilot.runners import GONE
from trainer.autopilot.service import Autopilot
from trainer.autopilot.status import Run, Status, read_status, write_status
from trainer.examples import snapshot_id

TOKEN = "admin-secret"
RULES = TaskRules(min_new_exchanges=5, min_interval_s=0, min_drift_exchanges=2)


class FakeRun:
    """A training run: after ``delay_s`` it publishes (or not) and writes its outcome."""

    name = "fake"

    def __init__(self, store: Store, outcomes: list[str], delay_s: float = 0.2) -> None:
        self.store = store
        self.outcomes = outcomes
        self.delay_s = delay_s
        self.launched: list[tuple[str, str, str | None]] = []
        self._runs: dict[str, asyncio.Task[None]] = {}

    async def launch(self, task: str, run_id: str, champion: str | None, rules: Any) -> None:
        self.launched.append((task, run_id, champion))
        self._runs[run_id] = asyncio.create_task(self._train(task, run_id, champion))

    async def _train(self, task: str, run_id: str, champion: str | None) -> None:
        await asyncio.sleep(self.delay_s)
        outcome = self.outcomes.pop(0)
        if outcome == "crash":
            raise RuntimeError("out of memory")
        snapshot, published = snapshot_id(datetime.now(UTC)), None
        if outcome == "published":
            version = new_id()
            published = f"{task}/{version}"
            manifest = {"task": task, "version": version, "run_id": run_id,
                        "dataset_snapshot": snapshot}  # fmt: skip
            body = orjson.dumps(manifest)
            await _until_stored(lambda: self.store.put(manifest_key(published), body))
        rec = RunRecord(
            task, run_id, outcome, time.time(), snapshot=snapshot, published=published,  # type: ignore[arg-type]
            champion=f"{task}/{champion}" if champion else None,
            reason=None if outcome == "published" else "lost to the champion",
            figures={"data": {"train": 40, "test-indist": 5}, "training": {"steps": 3},
                     "evaluation": {"student": {"test-indist": 0.9}, "base": {"test-indist": 0.2}}},
        )  # fmt: skip
        await _until_stored(lambda: write_run(self.store, rec))

    async def ended(self, task: str, run_id: str) -> str | None:
        run = self._runs.get(run_id)
        if run is None:
            return GONE
        if not run.done():
            return None
        return "exited with 0" if run.exception() is None else f"exited with 1: {run.exception()}"

    async def stop(self, task: str, run_id: str) -> None:
        if run_id in self._runs:
            self._runs[run_id].cancel()

    async def aclose(self) -> None:
        for run in self._runs.values():
            run.cancel()


async def _until_stored(write: Callable[[], Any]) -> None:
    while True:
        try:
            await write()
            return
        except StoreError:
            await asyncio.sleep(0.2)


@pytest.fixture
def gateway(make_gateway: Any, lorax: FakeLorax) -> RunningGateway:
    return make_gateway(
        student={"base_url": lorax.base_url},
        routes=[{"alias": "t", "task": "t"}],
        rollouts={"admin_token": TOKEN, "sync_interval_s": 0.2},
    )


_OPEN: list[GatewayAdmin] = []


@pytest.fixture(autouse=True)
async def _close_clients() -> Any:
    yield
    while _OPEN:
        await _OPEN.pop().aclose()


def pilot(
    store: Store, runner: Any, gw: RunningGateway, holder: str = "pilot-a", **config: Any
) -> Autopilot:
    admin = GatewayAdmin(gw.url, TOKEN)
    _OPEN.append(admin)
    settings = AutopilotSettings(
        store=store.uri,
        autopilot=AutopilotConfig(
            **{"tasks": {"t": config.pop("rules", RULES)}, "poll_s": 0.05, "lease_ttl_s": 3,
               "gateway_url": gw.url, **config},
        ),
    )  # fmt: skip
    return Autopilot(settings, store, runner, admin, AutopilotMetrics(), holder)


async def exchanges(store: Store, tmp: Path, n: int, age_s: float = 0.0) -> None:
    """``n`` usable exchanges of task t stamped ``age_s`` ago (snapshots are named to the
    second: data a few seconds old is surely older than a snapshot built now)."""
    when = datetime.now(UTC) - timedelta(seconds=age_s)
    await put_part(store, new_id(), [record(new_id(), when, "t") for _ in range(n)], tmp)


def route(gw: RunningGateway, task: str = "t") -> dict[str, Any]:
    """The task's rollout, as the admin API shows it."""
    auth = {"authorization": f"Bearer {TOKEN}"}
    resp = httpx.get(f"{gw.url}/admin/routes/{task}", headers=auth)
    return dict(resp.json())


async def kinds(store: Store) -> list[str]:
    return [e.kind for e in await timeline(store, "t")]


@pytest.fixture
async def store(tmp_path: Path) -> Any:
    async with open_store(f"file://{tmp_path / 'store'}") as opened:
        yield opened


async def test_autopilot_waits_for_data_then_trains_and_shadows_the_first_student(
    store: Store, gateway: RunningGateway, tmp_path: Path
) -> None:
    runner = FakeRun(store, ["published"])
    ap = pilot(store, runner, gateway)
    await exchanges(store, tmp_path, 3)
    assert await ap.step("t", RULES) == "not_enough_data"
    status = await read_status(store, "t")
    assert status.why == "not_enough_data"
    assert status.detail == "3 new exchanges in the store (min 5)"
    await exchanges(store, tmp_path, 3)
    assert await ap.step("t", RULES) == "new_data"
    assert runner.launched == [("t", runner.launched[0][1], None)]  # no champion yet
    now = route(gateway)
    assert now["mode"] == "shadow" and now["adapter"].startswith("t/")
    assert await kinds(store) == [
        "retrain_decided", "run_started", "snapshot_built", "trained", "evaluated", "published",
        "first_rollout",
    ]  # fmt: skip
    status = await read_status(store, "t")
    assert status.current is None and status.last_outcome is not None
    assert status.last_outcome["outcome"] == "published"
    assert status.last_outcome["handover"] is False
    assert ap.metrics.runs.labels("t", "published")._value.get() == 1


async def test_autopilot_second_student_becomes_the_challenger(
    store: Store, gateway: RunningGateway, tmp_path: Path
) -> None:
    runner = FakeRun(store, ["published", "published"])
    ap = pilot(store, runner, gateway)
    await exchanges(store, tmp_path, 6, age_s=10)
    await ap.step("t", RULES)
    champion = route(gateway)["adapter"]
    assert await ap.step("t", RULES) == "not_enough_data"  # nothing new since its dataset
    await exchanges(store, tmp_path, 5)
    assert await ap.step("t", RULES) == "new_data"
    assert runner.launched[1][2] == champion.split("/")[1]  # measured against the champion
    now = route(gateway)
    assert now["adapter"] == champion and now["mode"] == "shadow"
    assert now["challenger"] is not None and now["challenger"] != champion
    assert (await kinds(store))[-1] == "challenger_started"
    assert await ap.step("t", RULES) == "challenge"  # nothing more while it is proven


async def test_autopilot_rejected_and_failed_runs_are_recorded_not_handed_over(
    store: Store, gateway: RunningGateway, tmp_path: Path
) -> None:
    runner = FakeRun(store, ["rejected", "crash"])
    ap = pilot(store, runner, gateway)
    await exchanges(store, tmp_path, 6)
    await ap.step("t", RULES)
    await ap.step("t", RULES)
    assert route(gateway)["mode"] == "teacher"
    events = await timeline(store, "t")
    assert [e.kind for e in events].count("rejected") == 1
    failed = [e for e in events if e.kind == "run_failed"]
    assert len(failed) == 1 and "out of memory" in failed[0].summary
    assert ap.metrics.runs.labels("t", "failed")._value.get() == 1


async def test_autopilot_two_autopilots_on_one_store_one_trains(
    store: Store, gateway: RunningGateway, tmp_path: Path
) -> None:
    runner = FakeRun(store, ["published"], delay_s=1.0)
    a, b = pilot(store, runner, gateway, "pilot-a"), pilot(store, runner, gateway, "pilot-b")
    await exchanges(store, tmp_path, 6)
    first = asyncio.create_task(a.step("t", RULES))
    await asyncio.sleep(0.3)  # a holds the lease and trains
    assert await b.step("t", RULES) == "held"
    assert await first == "new_data"
    assert len(runner.launched) == 1
    assert await b.step("t", RULES) == "not_enough_data"  # b takes its turn, sees the run


async def test_autopilot_restart_abandons_the_dead_run_and_starts_over(
    store: Store, gateway: RunningGateway, tmp_path: Path
) -> None:
    """An autopilot died mid-run: its lease expires, the next one finds the run, gives it up
    (removing what it half-published) and trains again."""
    dead = Run("01JDEADRUN0000000000000000", time.time() - 60, "new_data", None, "local")
    await write_status(store, Status("t").started(dead))
    stale = Held("dead-pilot", time.time() - 60, time.time() - 1, dead.run_id)
    await store.put(lease_key("t"), stale.encode())
    await store.put("adapters/t/HALF/adapter_config.json", b"{}")  # no manifest: cut short
    await exchanges(store, tmp_path, 6)
    runner = FakeRun(store, ["published"])
    ap = pilot(store, runner, gateway)
    assert await ap.step("t", RULES) == "new_data"
    events = await timeline(store, "t")
    assert events[0].kind == "run_abandoned" and events[0].run_id == dead.run_id
    assert events[0].figures["removed_objects"] == 1
    assert not await store.list_objects("adapters/t/HALF/")
    assert len(runner.launched) == 1 and route(gateway)["mode"] == "shadow"
    status = await read_status(store, "t")
    assert len(status.runs) == 2  # the abandoned run still counts against the daily cap


async def test_autopilot_adopts_a_run_that_published_before_its_record(
    store: Store, gateway: RunningGateway, tmp_path: Path
) -> None:
    run = Run("01JPUBLISHEDRUN00000000000", time.time() - 60, "new_data", None, "local")
    await write_status(store, Status("t").started(run))
    manifest = {"task": "t", "version": "V9", "run_id": run.run_id}
    await store.put(manifest_key("t/V9"), orjson.dumps(manifest))
    ap = pilot(store, FakeRun(store, []), gateway)
    assert await ap.step("t", RULES) == "not_enough_data"
    assert route(gateway)["adapter"] == "t/V9"
    assert [k for k in await kinds(store)] == ["published", "first_rollout"]


async def test_autopilot_drift_retrains_before_the_interval(
    store: Store, gateway: RunningGateway, tmp_path: Path
) -> None:
    rules = TaskRules(min_new_exchanges=1000, min_interval_s=3600, drift_threshold=0.2,
                      min_drift_exchanges=2)  # fmt: skip
    runner = FakeRun(store, ["published", "published"])
    ap = pilot(store, runner, gateway, rules=TaskRules(min_new_exchanges=2, min_interval_s=3600))
    await exchanges(store, tmp_path, 3, age_s=10)
    await ap.step("t", TaskRules(min_new_exchanges=2))
    champion = route(gateway)["adapter"]
    await exchanges(store, tmp_path, 3)
    assert await ap.step("t", rules) == "too_soon"
    view = LiveView("t", "replica-1", time.time(), champion, "shadow", 0.45)
    await write_view(store, view)
    assert await ap.step("t", rules) == "drift"
    assert route(gateway)["challenger"] is not None
    decided = [e for e in await timeline(store, "t") if e.kind == "retrain_decided"]
    assert "drift 0.450" in decided[-1].summary


async def test_autopilot_paused_task_is_left_alone(
    store: Store, gateway: RunningGateway, tmp_path: Path
) -> None:
    runner = FakeRun(store, ["published"])
    ap = pilot(store, runner, gateway)
    await exchanges(store, tmp_path, 6)
    await set_hold(store, "t", True, "quarter-end freeze")
    assert await ap.step("t", RULES) == "paused"
    assert ap.metrics.paused.labels("t")._value.get() == 1
    await set_hold(store, "t", False, None)
    assert await ap.step("t", RULES) == "new_data"


async def test_autopilot_hands_over_once_the_gateway_answers_again(
    store: Store, gateway: RunningGateway, tmp_path: Path
) -> None:
    runner = FakeRun(store, ["published"])
    ap = pilot(store, runner, gateway)
    ap.gateway = _Unreachable(ap.gateway)  # type: ignore[assignment]
    await exchanges(store, tmp_path, 6, age_s=10)
    assert await ap.step("t", RULES) == "error"  # published, not yet handed over
    assert route(gateway)["mode"] == "teacher"
    assert (await read_status(store, "t")).last_outcome["handover"] is True  # type: ignore[index]
    ap.gateway = ap.gateway.inner  # type: ignore[attr-defined]
    assert await ap.step("t", RULES) == "not_enough_data"
    assert route(gateway)["mode"] == "shadow"
    assert len(runner.launched) == 1


class _Unreachable:
    """The admin API answers reads, then is gone for the hand-over."""

    def __init__(self, inner: GatewayAdmin) -> None:
        self.inner = inner

    async def route(self, task: str) -> dict[str, Any]:
        return await self.inner.route(task)

    async def change(self, task: str, fields: dict[str, Any]) -> dict[str, Any]:
        from trainer.autopilot.gateway import GatewayUnavailable

        raise GatewayUnavailable("gateway admin API unreachable: connection refused")


async def test_autopilot_store_down_during_a_run_loses_nothing(
    make_gateway: Any, lorax: FakeLorax, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The S3 store goes away while a run trains and comes back: the autopilot keeps watching,
    and the run's outcome, its events and the hand-over all land."""
    from tests.s3_server import S3Server

    server = S3Server().start()
    try:
        for name, value in server.env().items():
            monkeypatch.setenv(name, value)
        server.client().create_bucket(Bucket="autopilot-outage")
        uri = "s3://autopilot-outage/protege"
        gw = make_gateway(
            student={"base_url": lorax.base_url}, routes=[{"alias": "t", "task": "t"}],
            rollouts={"admin_token": TOKEN}, store=uri,
        )  # fmt: skip
        async with open_store(uri) as s3:
            await exchanges(s3, tmp_path, 6)
            runner = FakeRun(s3, ["published"], delay_s=2.0)
            ap = pilot(s3, runner, gw, lease_ttl_s=30)
            step = asyncio.create_task(ap.step("t", RULES))
            await asyncio.sleep(0.8)
            assert runner.launched  # the run trains
            server.stop()
            await asyncio.sleep(2.5)  # the run ends while the store is down
            server.start()
            assert await asyncio.wait_for(step, 60) == "new_data"
            assert await kinds(s3) == [
                "retrain_decided", "run_started", "snapshot_built", "trained", "evaluated",
                "published", "first_rollout",
            ]  # fmt: skip
            assert route(gw)["mode"] == "shadow"
    finally:
        with contextlib.suppress(Exception):
            server.stop()


def test_autopilot_service_serves_metrics_and_stops_on_sigterm(
    gateway: RunningGateway, tmp_path: Path
) -> None:
    """``protege autopilot`` as a service: it decides on every interval, serves its metrics and
    health, and exits cleanly on SIGTERM."""
    import os
    import signal
    import subprocess
    import sys

    import yaml

    from tests.s3_server import free_port

    port = free_port()
    config = tmp_path / "protege.yaml"
    config.write_text(yaml.safe_dump({"autopilot": {
        "interval_s": 0.2, "metrics_host": "127.0.0.1", "metrics_port": port,
        "gateway_url": gateway.url, "tasks": {"t": {"min_new_exchanges": 5}},
    }}))  # fmt: skip
    env = {**os.environ, "PROTEGE_ADMIN_TOKEN": TOKEN}
    argv = [sys.executable, "-m", "protege.cli", "autopilot", "--config", str(config),
            "--store", f"file://{tmp_path / 'store'}"]  # fmt: skip
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 30
        page, decided = "", 'protege_autopilot_decisions_total{decision="wait",task="t"}'
        while time.monotonic() < deadline and decided not in page:
            with contextlib.suppress(httpx.HTTPError):
                page = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=2).text
            time.sleep(0.2)
        assert decided in page
        assert 'protege_autopilot_runs_total{outcome="failed",task="t"} 0.0' in page
        assert httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2).json() == {"status": "ok"}
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=15)
        assert proc.returncode == 0, out.decode()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
