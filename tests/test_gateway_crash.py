"""A gateway killed with SIGKILL under load loses no exchange whose answer completed."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
from pathlib import Path

import httpx

from core.segment import recover_orphans
from gateway.metrics import Metrics
from tests.fake_teacher import FakeTeacher, wait_for
from tests.spooled import spooled_records


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_gateway(teacher: FakeTeacher, spool: Path, port: int) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "PROTEGE_TEACHER_BASE_URL": teacher.base_url,
        "PROTEGE_SPOOL_DIR": str(spool),
    }
    cmd = [sys.executable, "-m", "protege.cli", "gateway", "--port", str(port)]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def healthy() -> bool:
        try:
            return httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    assert wait_for(healthy, 30), "gateway did not come up"
    return proc


def load(url: str, stop: threading.Event, answered: list[str], stream: bool) -> None:
    body = {"model": "crash", "messages": [{"role": "user", "content": "hi"}], "stream": stream}
    with httpx.Client(timeout=5) as client:
        for _ in range(2000):  # bounded; the kill ends it far sooner
            if stop.is_set():
                return
            try:
                resp = client.post(url + "/v1/chat/completions", json=body)
                if resp.status_code == 200 and (not stream or b"data: [DONE]" in resp.content):
                    answered.append(resp.headers["x-protege-request-id"])
            except httpx.HTTPError:
                return


def kill_under_load(teacher: FakeTeacher, spool: Path, answers: int) -> list[str]:
    """Run a gateway process under mixed load, SIGKILL it after ``answers`` answers; the ids
    of every exchange answered 200 (streams: through [DONE]) before the kill."""
    port = free_port()
    proc = start_gateway(teacher, spool, port)
    stop, answered = threading.Event(), []
    url = f"http://127.0.0.1:{port}"
    workers = [
        threading.Thread(target=load, args=(url, stop, answered, i % 2 == 1)) for i in range(8)
    ]
    try:
        for w in workers:
            w.start()
        assert wait_for(lambda: len(answered) >= answers, 30)
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
    finally:
        stop.set()
        for w in workers:
            w.join(10)
        if proc.poll() is None:
            proc.kill()
    return answered


def test_sigkill_under_load_loses_no_answered_exchange(
    tmp_path: Path, teacher: FakeTeacher
) -> None:
    """Every request answered 200 before the kill is in the spool after recovery."""
    spool = tmp_path / "spool"
    answered = kill_under_load(teacher, spool, 200)
    recover_orphans(spool, Metrics())
    recorded = {r["request_id"] for r in spooled_records(spool)}
    missing = set(answered) - recorded
    assert not missing, f"{len(missing)} of {len(answered)} answered exchanges lost"


def test_sigterm_seals_the_open_segment(tmp_path: Path, teacher: FakeTeacher) -> None:
    """SIGTERM shuts down gracefully and seals the open segment for the sidecar."""
    spool = tmp_path / "spool"
    port = free_port()
    proc = start_gateway(teacher, spool, port)
    try:
        body = {"model": "t", "messages": [{"role": "user", "content": "hi"}]}
        for _ in range(5):
            assert httpx.post(f"http://127.0.0.1:{port}/v1/chat/completions", json=body).is_success
        assert list(spool.glob("*.open")), "records should sit in an open segment"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) in (0, -signal.SIGTERM)  # uvicorn re-raises the signal on exit
    finally:
        if proc.poll() is None:
            proc.kill()
    assert not list(spool.glob("*.open"))
    assert len(spooled_records(spool)) == 5
