"""Runs as Kubernetes Jobs: the chart's rendered Job template, made into one Job per run by the
autopilot, created through the API with the ServiceAccount's token, waited for, and its
outcome read from the store. The API server is a stand-in (``tests.fake_kubernetes``) that
validates every Job against the Kubernetes schema; the test plays the kubelet.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import helm_python
import orjson
import pytest
import yaml

from core.events import timeline
from core.ids import new_id
from core.keys import manifest_key
from core.runs import RunRecord, write_run
from core.store import Store, open_store
from tests.conftest import RunningGateway
from tests.fake_kubernetes import FakeKubernetes
from tests.fake_lorax import FakeLorax
from tests.test_autopilot_service import TOKEN, exchanges, route
from tests.test_helm import CHART, ci_values, render
from trainer.autopilot.config import (
    AutopilotConfig,
    AutopilotSettings,
    KubernetesConfig,
    TaskRules,
)
from trainer.autopilot.gateway import GatewayAdmin
from trainer.autopilot.kube import KubernetesRunner
from trainer.autopilot.metrics import AutopilotMetrics
from trainer.autopilot.service import Autopilot
from trainer.examples import snapshot_id

RULES = TaskRules(min_new_exchanges=5, min_interval_s=0, base_model="/models/base")


@pytest.fixture(scope="module")
def job_yaml(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The Job template as the chart renders it into the autopilot's ConfigMap."""
    with helm_python.Chart.load(CHART) as chart:
        objects = render(chart, ci_values("autopilot-values.yaml"))
    cm = next(
        o for o in objects if o["kind"] == "ConfigMap" and "autopilot" in o["metadata"]["name"]
    )
    path = tmp_path_factory.mktemp("chart") / "job.yaml"
    path.write_text(cm["data"]["job.yaml"])
    return path


@pytest.fixture
def kube() -> Iterator[FakeKubernetes]:
    with FakeKubernetes() as fake:
        yield fake


@pytest.fixture
def gateway(make_gateway: Any, lorax: FakeLorax) -> RunningGateway:
    return make_gateway(
        student={"base_url": lorax.base_url}, routes=[{"alias": "t", "task": "t"}],
        rollouts={"admin_token": TOKEN},
    )  # fmt: skip


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    async with open_store(f"file://{tmp_path / 'store'}") as opened:
        yield opened


@contextlib.asynccontextmanager
async def pilot(
    store: Store, kube: FakeKubernetes, gw: RunningGateway, job_yaml: Path, tmp_path: Path
) -> AsyncIterator[Autopilot]:
    token = tmp_path / "token"
    token.write_text(kube.token + "\n")
    cfg = KubernetesConfig(
        job_template=job_yaml, namespace="protege", api_url=kube.api_url, token_file=token,
        ca_file=tmp_path / "no-ca.crt", poll_s=0.05,
    )  # fmt: skip
    settings = AutopilotSettings(
        store=store.uri,
        autopilot=AutopilotConfig(
            tasks={"t": RULES}, runner="kubernetes", kubernetes=cfg, poll_s=0.05, lease_ttl_s=3,
            gateway_url=gw.url,
        ),
    )  # fmt: skip
    runner = KubernetesRunner.from_config(cfg)
    admin = GatewayAdmin(gw.url, TOKEN)
    try:
        yield Autopilot(settings, store, runner, admin, AutopilotMetrics())
    finally:
        await runner.aclose()
        await admin.aclose()


async def job_created(kube: FakeKubernetes, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    # Polling: the API server runs on its own thread and loop.
    while not kube.jobs and time.monotonic() < deadline:  # noqa: ASYNC110
        await asyncio.sleep(0.02)
    assert kube.jobs, "no Job was created"


async def kubelet(kube: FakeKubernetes, store: Store, how: str) -> str:
    """Wait for the run's Job, then finish it as ``how`` says; the Job's name."""
    await job_created(kube)
    (_, name), job = next(iter(kube.jobs.items()))
    args = job["spec"]["template"]["spec"]["containers"][0]["args"]
    run_id = args[args.index("--run-id") + 1]
    if how == "published":
        version = new_id()
        snapshot = snapshot_id(datetime.now(UTC))
        manifest = {"task": "t", "version": version, "run_id": run_id, "dataset_snapshot": snapshot}
        await store.put(manifest_key(f"t/{version}"), orjson.dumps(manifest))
        await write_run(store, RunRecord("t", run_id, "published", time.time(),
                                         published=f"t/{version}"))  # fmt: skip
        kube.finish(name, "Complete")
    else:
        kube.finish(name, "Failed", "BackoffLimitExceeded")
    return name


async def test_autopilot_trains_in_a_kubernetes_job(
    store: Store, kube: FakeKubernetes, gateway: RunningGateway, job_yaml: Path, tmp_path: Path
) -> None:
    await exchanges(store, tmp_path, 6, age_s=10)
    async with pilot(store, kube, gateway, job_yaml, tmp_path) as ap:
        step = asyncio.create_task(ap.step("t", RULES))
        name = await kubelet(kube, store, "published")
        assert await asyncio.wait_for(step, 20) == "new_data"
    assert len(kube.jobs) == 1 and name.endswith(name[-10:])
    created = kube.received[0]
    assert created.path == "/apis/batch/v1/namespaces/protege/jobs"
    assert created.headers["Authorization"] == f"Bearer {kube.token}"
    job = created.json
    args = job["spec"]["template"]["spec"]["containers"][0]["args"]
    assert args[0] == "train" and args[args.index("--task") + 1] == "t"
    assert [args[i + 1] for i, a in enumerate(args) if a == "--base-model"][-1] == "/models/base"
    assert job["metadata"]["labels"]["protege/task"] == "t"
    assert job["spec"]["template"]["metadata"]["labels"]["protege/run"] == args[
        args.index("--run-id") + 1
    ]
    assert route(gateway)["mode"] == "shadow"
    assert [e.kind for e in await timeline(store, "t")][-2:] == ["published", "first_rollout"]


async def test_autopilot_failed_job_without_outcome_is_a_failed_run(
    store: Store, kube: FakeKubernetes, gateway: RunningGateway, job_yaml: Path, tmp_path: Path
) -> None:
    await exchanges(store, tmp_path, 6, age_s=10)
    async with pilot(store, kube, gateway, job_yaml, tmp_path) as ap:
        step = asyncio.create_task(ap.step("t", RULES))
        await kubelet(kube, store, "failed")
        assert await asyncio.wait_for(step, 20) == "new_data"
    failed = [e for e in await timeline(store, "t") if e.kind == "run_failed"]
    assert len(failed) == 1 and "Job failed: BackoffLimitExceeded" in failed[0].summary
    assert route(gateway)["mode"] == "teacher"


async def test_autopilot_restarted_keeps_waiting_for_its_job(
    store: Store, kube: FakeKubernetes, gateway: RunningGateway, job_yaml: Path, tmp_path: Path
) -> None:
    """An autopilot that stops while its Job trains: the next one finds the Job by the run's
    name and waits for it, instead of starting another."""
    await exchanges(store, tmp_path, 6, age_s=10)
    async with pilot(store, kube, gateway, job_yaml, tmp_path) as first:
        step = asyncio.create_task(first.step("t", RULES))
        await job_created(kube)
        step.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await step
    async with pilot(store, kube, gateway, job_yaml, tmp_path) as second:
        resumed = asyncio.create_task(second.step("t", RULES))
        await asyncio.sleep(0.3)
        assert not resumed.done()  # waiting for the Job
        await kubelet(kube, store, "published")
        assert await asyncio.wait_for(resumed, 20) == "not_enough_data"
    assert len([r for r in kube.received if r.path.endswith("/jobs")]) == 1
    assert route(gateway)["mode"] == "shadow"


def test_autopilot_job_template_is_read_from_the_chart(job_yaml: Path) -> None:
    template = yaml.safe_load(job_yaml.read_text())
    assert template["kind"] == "Job" and template["spec"]["backoffLimit"] == 0
