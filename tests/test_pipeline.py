"""Gateway and sidecar together: crash safety end to end, the spool cap, reconcile, `protege up`."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest

from core.read import count_exchanges, read_exchanges
from protege.cli import main
from sidecar.service import run
from tests.fake_teacher import FakeTeacher, wait_for
from tests.s3_server import free_port
from tests.test_gateway_crash import kill_under_load
from tests.test_sidecar import settings_for, traffic

CHAT = {"model": "m", "messages": [{"role": "user", "content": "hello"}]}


def test_gateway_sigkill_under_load_every_answer_reaches_the_store(
    tmp_path: Path, teacher: FakeTeacher
) -> None:
    """kill -9 of a loaded gateway, then the sidecar: every exchange answered 2xx is stored."""
    spool, store = tmp_path / "spool", f"file://{tmp_path / 'store'}"
    answered = kill_under_load(teacher, spool, 150)
    assert asyncio.run(run(settings_for(spool, store), once=True)) == 0
    stored = set(read_exchanges(store, columns=["request_id"]).column("request_id").to_pylist())
    assert set(answered) <= stored, f"{len(set(answered) - stored)} answered exchanges lost"


def test_spool_cap_drop_keeps_serving_and_counts(make_gateway: Any) -> None:
    """At the cap with the drop policy, clients still get answers; dropped records are counted."""
    gw = make_gateway(spool={"max_bytes": 65536, "segment_max_bytes": 8192})
    filler = {"model": "m", "messages": [{"role": "user", "content": "x" * 4000}]}
    with httpx.Client(base_url=gw.url, timeout=10) as client:
        for _ in range(40):
            assert client.post("/v1/chat/completions", json=filler).status_code == 200
    assert gw.metric("protege_spool_dropped_total", reason="spool_full") > 0
    assert gw.metric("protege_spool_full") == 1


def test_spool_cap_reject_answers_503(make_gateway: Any, teacher: FakeTeacher) -> None:
    """At the cap with the reject policy, new requests get 503 and /readyz says not ready."""
    gw = make_gateway(spool={"max_bytes": 65536, "segment_max_bytes": 8192, "on_full": "reject"})
    filler = {"model": "m", "messages": [{"role": "user", "content": "x" * 4000}]}
    statuses = []
    with httpx.Client(base_url=gw.url, timeout=10) as client:
        for _ in range(40):
            statuses.append(client.post("/v1/chat/completions", json=filler).status_code)
        assert client.get("/readyz").status_code == 503
    assert 503 in statuses and statuses[0] == 200
    assert len(teacher.received) == statuses.count(200)


def test_reconcile_reports_stored_and_missing(
    make_gateway: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`protege logs reconcile` matches answered with stored, and flags a lost record."""
    gw = make_gateway(spool={"segment_max_age_s": 0.1})
    store_dir = tmp_path / "store"
    spool = gw.settings.spool.dir
    traffic(gw, 12)
    assert wait_for(lambda: not list(Path(spool).glob("*.open")), 5)
    assert asyncio.run(run(settings_for(spool, f"file://{store_dir}"), once=True)) == 0
    args = ["logs", "reconcile", "--gateway", gw.url, "--store", f"file://{store_dir}"]
    os.environ["PROTEGE_SPOOL_DIR"] = str(spool)
    try:
        assert main(args) == 0
        first = capsys.readouterr().out
        next(store_dir.rglob("*.parquet")).unlink()
        assert main(args) == 1
        second = capsys.readouterr().out
    finally:
        del os.environ["PROTEGE_SPOOL_DIR"]
    assert "answered by the gateway             12" in first
    assert "distinct in the store               12" in first
    assert "missing                              0" in first
    assert "missing                              0" not in second


def test_protege_up_serves_captures_and_ships_on_shutdown(
    tmp_path: Path, teacher: FakeTeacher
) -> None:
    """`protege up` runs gateway + sidecar; on SIGTERM the last segment still reaches the store."""
    port, store = free_port(), tmp_path / "store"
    config = tmp_path / "protege.yaml"
    config.write_text(f"sidecar: {{metrics_port: {free_port()}, poll_interval_s: 0.1}}\n")
    env = {
        **os.environ,
        "PROTEGE_TEACHER_BASE_URL": teacher.base_url,
        "PROTEGE_SPOOL_DIR": str(tmp_path / "spool"),
        "PROTEGE_STORE": f"file://{store}",
    }
    cmd = [sys.executable, "-m", "protege.cli", "up", "--port", str(port), "--config", str(config)]
    log = tmp_path / "up.log"
    with log.open("wb") as err:
        proc = subprocess.Popen(cmd, env=env, stderr=err)
    try:
        url = f"http://127.0.0.1:{port}"

        def up() -> bool:
            try:
                return httpx.get(url + "/healthz", timeout=1).status_code == 200
            except httpx.HTTPError:
                return False

        assert wait_for(up, 30)
        for _ in range(7):
            assert httpx.post(url + "/v1/chat/completions", json=CHAT).status_code == 200
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0, log.read_text()[-3000:]
    finally:
        if proc.poll() is None:
            proc.kill()
    assert count_exchanges(f"file://{store}") == 7, log.read_text()[-3000:]
