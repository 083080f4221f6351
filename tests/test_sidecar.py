"""The sidecar ships the spool to the store: at least once, never losing a record."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import threading
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from core.read import count_exchanges, read_exchanges
from core.record import COLUMNS
from core.segment import HEADER, MAGIC, sealed_segments
from sidecar.config import SidecarSettings, load_sidecar_settings
from sidecar.metrics import SidecarMetrics
from sidecar.service import run
from tests.conftest import RunningGateway
from tests.fake_teacher import wait_for
from tests.s3_server import S3Server, aws_env, free_port
from tests.spooled import spooled_records

BUCKET = "protege-logs"


@pytest.fixture
def s3() -> Iterator[S3Server]:
    server = S3Server().start()
    server.client().create_bucket(Bucket=BUCKET)
    with aws_env(server):
        yield server
    server.stop()


def settings_for(spool: Path, store: str, **sidecar: Any) -> SidecarSettings:
    cfg = {"retry_base_s": 0.05, "retry_max_s": 0.2, "once_max_attempts": 3, **sidecar}
    return load_sidecar_settings(
        env={}, spool={"dir": str(spool)}, store=store, sidecar={"metrics_port": 0, **cfg}
    )


def traffic(gw: RunningGateway, n: int) -> list[str]:
    """n exchanges through the gateway (every third one streamed); their request ids."""
    ids = []
    with httpx.Client(base_url=gw.url, timeout=10) as client:
        for i in range(n):
            body = {"model": "support", "messages": [{"role": "user", "content": f"q{i}"}],
                    "stream": i % 3 == 0}  # fmt: skip
            resp = client.post("/v1/chat/completions", json=body)
            assert resp.status_code == 200
            ids.append(resp.headers["x-protege-request-id"])
    return ids


@pytest.mark.parametrize("kind", ["file", "s3"])
def test_round_trip_every_record_intact(
    kind: str, request: pytest.FixtureRequest, gateway: RunningGateway, tmp_path: Path
) -> None:
    """N exchanges through gateway + sidecar: exactly N distinct ids, every column intact."""
    store = f"s3://{BUCKET}/prod" if kind == "s3" else f"file://{tmp_path / 'store'}"
    if kind == "s3":
        request.getfixturevalue("s3")
    ids = traffic(gateway, 30)
    gateway.stop()
    spool = gateway.settings.spool.dir
    expected = {r["request_id"]: r for r in spooled_records(spool)}
    metrics = SidecarMetrics()
    assert asyncio.run(run(settings_for(spool, store), once=True, metrics=metrics)) == 0
    assert sealed_segments(spool) == []
    table = read_exchanges(store)
    assert sorted(table.column("request_id").to_pylist()) == sorted(ids)
    for row in table.to_pylist():
        want = expected[row["request_id"]]
        for column in COLUMNS:
            got = row[column]
            if column == "ts":
                got = int(got.timestamp() * 1_000_000)
            assert got == want[column], column
    assert metrics.registry.get_sample_value("protege_shipped_records_total") == 30


def make_segments(spool: Path, count: int, per_segment: int) -> set[str]:
    """Sealed segments full of valid records, written the way the gateway writes them."""
    from core.settings import SpoolConfig
    from gateway.metrics import Metrics
    from gateway.spool import SpoolWriter

    async def write() -> set[str]:
        config = SpoolConfig(dir=spool, segment_max_bytes=per_segment * 2300, fsync="never")
        writer: SpoolWriter[bytes] = SpoolWriter(config, lambda b: b, Metrics())
        writer.start()
        ids = set()
        for i in range(count * per_segment):
            record = synthetic_record(i)
            ids.add(record["request_id"])
            written = writer.submit(orjson.dumps(record))
            assert written is not None
            await written
        await writer.aclose()
        return ids

    return asyncio.run(write())


def synthetic_record(i: int) -> dict[str, Any]:
    from core.ids import new_id

    return {
        "request_id": new_id(), "schema_version": 1, "ts": 1_790_000_000_000_000 + i * 1000,
        "task": f"t{i % 3}", "endpoint": "chat.completions", "backend": "teacher",
        "adapter": None, "route": "teacher", "shadow_of": None, "stream": False,
        "complete": True, "status": 200, "error": None,
        "request": orjson.dumps({"model": "m", "messages": [{"role": "user",
                                "content": "x" * 900}]}).decode(),
        "response": orjson.dumps({"choices": [{"message": {"content": "y" * 900}}]}).decode(),
        "prompt_tokens": 10, "completion_tokens": 20, "latency_ms": 1.5, "ttft_ms": None,
        "client": None, "user": None,
    }  # fmt: skip


def sidecar_cmd(config: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "protege.cli", "sidecar", "--config", str(config), *extra]


def write_config(tmp_path: Path, spool: Path, store: str) -> Path:
    config = tmp_path / "protege.yaml"
    config.write_text(
        f"spool: {{dir: '{spool}'}}\nstore: '{store}'\n"
        f"sidecar: {{metrics_port: {free_port()}, retry_base_s: 0.05, retry_max_s: 0.5,"
        " poll_interval_s: 0.1, shutdown_wait_s: 0}\n"
    )
    return config


def test_sigkill_mid_upload_loses_and_duplicates_nothing(tmp_path: Path, s3: S3Server) -> None:
    """kill -9 of the sidecar while shipping, then a restart: every record once after dedup."""
    spool, store = tmp_path / "spool", f"s3://{BUCKET}/kill"
    ids = make_segments(spool, count=20, per_segment=200)
    config = write_config(tmp_path, spool, store)
    env = {**os.environ, **s3.env()}
    proc = subprocess.Popen(sidecar_cmd(config), env=env, stderr=subprocess.DEVNULL)
    try:
        assert wait_for(lambda: len(sealed_segments(spool)) <= 15, 30), "shipping never started"
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert sealed_segments(spool), "the kill should leave segments to ship"
    done = subprocess.run(sidecar_cmd(config, "--once"), env=env, timeout=120, capture_output=True)
    assert done.returncode == 0, done.stderr.decode()[-2000:]
    assert sealed_segments(spool) == []
    table = read_exchanges(store, columns=["request_id"])
    assert set(table.column("request_id").to_pylist()) == ids
    assert table.num_rows == len(ids)


class BackgroundSidecar:
    """The sidecar's continuous loop on its own thread and event loop."""

    def __init__(self, settings: SidecarSettings) -> None:
        self.metrics = SidecarMetrics()
        self.settings = settings
        self._ready = threading.Event()
        self._thread = threading.Thread(target=asyncio.run, args=(self._main(),))

    async def _main(self) -> None:
        self._loop, self._stop = asyncio.get_running_loop(), asyncio.Event()
        self._ready.set()
        self.code = await run(self.settings, once=False, metrics=self.metrics, stop=self._stop)

    def start(self) -> BackgroundSidecar:
        self._thread.start()
        self._ready.wait(10)
        return self

    def stop(self) -> int:
        self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(30)
        return self.code

    def metric(self, name: str) -> float:
        return self.metrics.registry.get_sample_value(name) or 0.0


def test_store_outage_keeps_everything_and_drains(s3: S3Server, make_gateway: Any) -> None:
    """Store down: the gateway keeps answering, the spool grows; back up: it drains."""
    gw = make_gateway(spool={"segment_max_bytes": 4096, "segment_max_age_s": 0.2})
    spool, store = gw.settings.spool.dir, f"s3://{BUCKET}/outage"
    sidecar = BackgroundSidecar(settings_for(spool, store, poll_interval_s=0.05)).start()
    try:
        before = traffic(gw, 10)
        s3.stop()
        during = traffic(gw, 40)  # every one answered 200 while the store is down
        assert wait_for(lambda: sidecar.metric("protege_upload_errors_total") > 0, 10)
        assert sealed_segments(spool), "segments wait in the spool while the store is down"
    finally:
        s3.start()
    gw.stop()
    assert wait_for(lambda: sealed_segments(spool) == [], 30)
    assert sidecar.stop() == 0
    assert count_exchanges(store) == len(before) + len(during)
    assert sidecar.metric("protege_upload_retries_total") > 0


def test_corrupt_segment_is_quarantined_and_shipping_goes_on(tmp_path: Path) -> None:
    """A damaged segment is moved aside and counted; the good ones are shipped."""
    spool, store = tmp_path / "spool", f"file://{tmp_path / 'store'}"
    ids = make_segments(spool, count=2, per_segment=50)
    bad = spool / "00000000000000000000000000.seg"
    bad.write_bytes(MAGIC + b"\x10\x00\x00\x00garbage")
    metrics = SidecarMetrics()
    assert asyncio.run(run(settings_for(spool, store), once=True, metrics=metrics)) == 0
    assert (spool / "quarantine" / bad.name).exists()
    assert metrics.registry.get_sample_value("protege_quarantined_segments_total") == 1
    assert set(read_exchanges(store).column("request_id").to_pylist()) == ids


def test_a_segment_damaged_after_good_records_leaves_no_scratch(tmp_path: Path) -> None:
    """Parts written from a segment's good records before its damage is found are removed
    when the segment is quarantined: the scratch directory does not grow."""
    spool, store = tmp_path / "spool", f"file://{tmp_path / 'store'}"
    make_segments(spool, count=1, per_segment=20)
    (segment,) = sealed_segments(spool)
    good = segment.read_bytes()
    segment.write_bytes(good + HEADER.pack(7, zlib.crc32(b"not json")) + b"not jso")
    settings = settings_for(spool, store)
    assert asyncio.run(run(settings, once=True, metrics=SidecarMetrics())) == 0
    assert (spool / "quarantine" / segment.name).exists()
    assert list(settings.workdir.glob("*")) == []


def test_once_gives_up_on_a_dead_store_and_keeps_the_spool(tmp_path: Path, s3: S3Server) -> None:
    """--once against an unreachable store exits 1 and leaves every segment in place."""
    spool = tmp_path / "spool"
    make_segments(spool, count=1, per_segment=10)
    s3.stop()
    try:
        code = asyncio.run(run(settings_for(spool, f"s3://{BUCKET}/x"), once=True))
    finally:
        s3.start()
    assert code == 1
    assert len(sealed_segments(spool)) == 1
