"""The spool: segment format, the writer thread, crash recovery, the cap and kill -9 durability."""

from __future__ import annotations

import asyncio
import os
import select
import subprocess
import sys
import threading
import time
import zlib
from collections.abc import Callable
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from core.errors import CorruptSegment
from core.segment import (
    HEADER,
    MAGIC,
    OPEN_SUFFIX,
    iter_records,
    iter_segment,
    recover_orphans,
    scan_segment,
    sealed_segments,
)
from core.settings import SpoolConfig
from gateway.metrics import Metrics
from gateway.spool import SpoolWriter

ROOT = Path(__file__).resolve().parents[1]
DEADLINE_S = 5.0


def frame(payload: bytes) -> bytes:
    return HEADER.pack(len(payload), zlib.crc32(payload)) + payload


def records_in(directory: Path) -> list[bytes]:
    return [payload for seg in sealed_segments(directory) for payload in iter_records(seg)]


def open_files(directory: Path) -> list[Path]:
    return sorted(directory.glob("*" + OPEN_SUFFIX))


def sample(metrics: Metrics, name: str, **labels: str) -> float:
    return metrics.registry.get_sample_value(name, labels) or 0.0


def started(tmp_path: Path, metrics: Metrics | None = None, **spool: object) -> SpoolWriter[bytes]:
    config = SpoolConfig.model_validate({"dir": tmp_path, **spool})
    writer = SpoolWriter(config, lambda item: item, metrics or Metrics())
    writer.start()
    return writer


async def write(writer: SpoolWriter[bytes], items: list[bytes]) -> None:
    futures = [writer.submit(item) for item in items]
    assert all(future is not None for future in futures)
    await asyncio.gather(*(f for f in futures if f is not None))


async def until(condition: Callable[[], object]) -> None:
    """Waits, at most DEADLINE_S, for ``condition()`` to hold."""
    deadline = time.monotonic() + DEADLINE_S
    while not condition():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.02)


async def test_round_trip_keeps_bytes_and_order(tmp_path: Path) -> None:
    """Records submitted and acknowledged read back from sealed segments, identical, in order."""
    metrics = Metrics()
    writer = started(tmp_path, metrics)
    items = [b'{"n": %d, "pad": "%s"}' % (i, b"x" * (i % 97)) for i in range(500)]
    await write(writer, items)
    await writer.aclose()
    assert records_in(tmp_path) == items
    assert open_files(tmp_path) == []
    assert sample(metrics, "protege_spool_records_total") == 500


async def test_seals_when_segment_reaches_max_bytes(tmp_path: Path) -> None:
    """A segment that reaches segment_max_bytes is sealed and the next record opens another."""
    writer = started(tmp_path, segment_max_bytes=4096)
    items = [b"%04d" % i + b"." * 200 for i in range(100)]
    for item in items:
        await write(writer, [item])
    await writer.aclose()
    segments = sealed_segments(tmp_path)
    assert len(segments) > 1
    assert all(seg.stat().st_size >= 4096 for seg in segments[:-1])
    assert records_in(tmp_path) == items


async def test_seals_when_first_record_is_old(tmp_path: Path) -> None:
    """With no more traffic, a segment is sealed once its first record is segment_max_age_s old."""
    metrics = Metrics()
    writer = started(tmp_path, metrics, segment_max_age_s=0.2)
    await write(writer, [b"lonely"])
    await until(lambda: sealed_segments(tmp_path))
    assert records_in(tmp_path) == [b"lonely"]
    assert open_files(tmp_path) == []
    assert sample(metrics, "protege_spool_segments_sealed_total") == 1
    await writer.aclose()


@pytest.mark.parametrize(
    "tail",
    [
        pytest.param(frame(b"y" * 100)[:50], id="partial-record"),
        pytest.param(HEADER.pack(5, zlib.crc32(b"hello") ^ 1) + b"hello", id="bad-checksum"),
        pytest.param(b"\x07", id="partial-header"),
    ],
)
def test_recovery_cuts_torn_tail_and_seals(tmp_path: Path, tail: bytes) -> None:
    """An orphaned .open segment keeps its good records, loses its torn tail, and is sealed."""
    good = MAGIC + frame(b"first") + frame(b"second")
    (tmp_path / f"01ORPHAN{OPEN_SUFFIX}").write_bytes(good + tail)
    metrics = Metrics()
    assert recover_orphans(tmp_path, metrics) == 1
    assert open_files(tmp_path) == []
    [segment] = sealed_segments(tmp_path)
    assert segment.stat().st_size == len(good)
    assert list(iter_records(segment)) == [b"first", b"second"]
    assert sample(metrics, "protege_spool_torn_records_total") == 1
    assert sample(metrics, "protege_spool_segments_sealed_total") == 1


@pytest.mark.parametrize(
    "content",
    [b"", MAGIC[:3], MAGIC, MAGIC + frame(b"z")[:6]],
    ids=["empty", "torn-magic", "magic", "torn-first"],
)
def test_recovery_removes_orphan_without_records(tmp_path: Path, content: bytes) -> None:
    """An orphaned .open segment that holds no whole record is removed, not sealed."""
    (tmp_path / f"01ORPHAN{OPEN_SUFFIX}").write_bytes(content)
    assert recover_orphans(tmp_path, Metrics()) == 1
    assert list(tmp_path.iterdir()) == []


def test_recovery_leaves_unknown_open_file(tmp_path: Path) -> None:
    """A .open file without the segment magic is not ours to cut: it is left as it is."""
    stranger = tmp_path / f"01STRANGER{OPEN_SUFFIX}"
    stranger.write_bytes(b"something else entirely")
    with capture_logs() as logs:
        assert recover_orphans(tmp_path, Metrics()) == 0
    assert stranger.read_bytes() == b"something else entirely"
    assert [e["log_level"] for e in logs] == ["error"]


@pytest.mark.parametrize(
    ("content", "offset"),
    [
        pytest.param(MAGIC + frame(b"a") + b"garbage!" + frame(b"b"), 8 + 9, id="garbage-middle"),
        pytest.param(MAGIC + frame(b"a") + b"\x01\x02", 8 + 9, id="trailing-bytes"),
        pytest.param(b"NOTMAGIC" + frame(b"a"), 0, id="bad-magic"),
        pytest.param(MAGIC[:4], 0, id="short-magic"),
    ],
)
def test_sealed_segment_damage_is_corrupt(tmp_path: Path, content: bytes, offset: int) -> None:
    """Any damage in a sealed segment raises CorruptSegment at the offset where it starts."""
    path = tmp_path / "01DAMAGED.seg"
    path.write_bytes(content)
    with pytest.raises(CorruptSegment) as caught:
        list(iter_records(path))
    assert caught.value.offset == offset
    assert caught.value.path == path
    assert scan_segment(path).valid_bytes == offset


def test_iter_segment_batches_by_bytes(tmp_path: Path) -> None:
    """iter_segment yields every record once, in lists of about batch_bytes of payload."""
    payloads = [bytes([i]) * 100 for i in range(10)]
    path = tmp_path / "01BATCHES.seg"
    path.write_bytes(MAGIC + b"".join(frame(p) for p in payloads))
    batches = list(iter_segment(path, batch_bytes=250))
    assert [len(b) for b in batches] == [3, 3, 3, 1]
    assert [p for batch in batches for p in batch] == payloads


async def test_live_writer_open_segment_is_not_recovered(tmp_path: Path) -> None:
    """A second writer starting on the same directory leaves the first one's locked segment be."""
    first = started(tmp_path)
    await write(first, [b"mine"])
    [open_segment] = open_files(tmp_path)
    before = open_segment.read_bytes()
    second = started(tmp_path)
    assert open_files(tmp_path) == [open_segment]
    assert open_segment.read_bytes() == before
    await write(first, [b"still mine"])
    await first.aclose()
    await second.aclose()
    assert records_in(tmp_path) == [b"mine", b"still mine"]


async def test_full_spool_drops_until_sidecar_drains(tmp_path: Path) -> None:
    """At max_bytes submit drops and counts; once sealed segments are deleted it accepts again."""
    metrics = Metrics()
    # 1,008-byte frames: the cap is crossed inside the fourth segment, not by a seal.
    writer = started(tmp_path, metrics, max_bytes=64 * 1024, segment_max_bytes=16 * 1024)
    dropped = 0
    with capture_logs() as logs:
        for i in range(200):
            future = writer.submit(b"%04d" % i + b"." * 996)
            if future is None:
                dropped += 1
            else:
                await future
    assert writer.full
    assert dropped > 0
    assert sample(metrics, "protege_spool_dropped_total", reason="spool_full") == dropped
    assert sample(metrics, "protege_spool_full") == 1
    assert [e["event"] for e in logs if e["log_level"] == "warning"] == ["spool_full_dropping"]
    for segment in sealed_segments(tmp_path):
        segment.unlink()
    await until(lambda: not writer.full)
    await write(writer, [b"after the drain"])
    await writer.aclose()
    assert records_in(tmp_path)[-1] == b"after the drain"


async def test_encode_error_drops_only_that_record(tmp_path: Path) -> None:
    """An item whose encode raises is counted and logged; its future still resolves."""

    def encode(item: bytes) -> bytes:
        if item == b"bad":
            raise ValueError("cannot encode")
        return item

    metrics = Metrics()
    writer = SpoolWriter(SpoolConfig(dir=tmp_path), encode, metrics)
    writer.start()
    with capture_logs() as logs:
        await write(writer, [b"a", b"bad", b"c"])
    await writer.aclose()
    assert records_in(tmp_path) == [b"a", b"c"]
    assert sample(metrics, "protege_spool_dropped_total", reason="encode_error") == 1
    assert any(e["log_level"] == "error" and "exc_info" in e for e in logs)


async def test_write_error_drops_batch_and_moves_to_new_segment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A failed write is counted, its futures resolve, and later records go to a new segment."""
    real_write = os.write
    failures = [OSError(28, "No space left on device")]

    def flaky_write(fd: int, data: bytes) -> int:
        if threading.current_thread().name == "protege-spool" and failures:
            raise failures.pop()
        return real_write(fd, data)

    monkeypatch.setattr(os, "write", flaky_write)
    metrics = Metrics()
    writer = started(tmp_path, metrics)
    with capture_logs():
        await write(writer, [b"lost"])
    await write(writer, [b"kept"])
    await writer.aclose()
    assert records_in(tmp_path) == [b"kept"]
    assert sample(metrics, "protege_spool_dropped_total", reason="write_error") == 1
    assert open_files(tmp_path) == []


async def test_fsync_always_writes_before_acknowledging(tmp_path: Path) -> None:
    """With fsync='always', acknowledged records are already in the open segment on disk."""
    writer = started(tmp_path, fsync="always")
    await write(writer, [b"%d" % i for i in range(50)])
    [open_segment] = open_files(tmp_path)
    assert scan_segment(open_segment).records == 50
    await writer.aclose()
    assert records_in(tmp_path) == [b"%d" % i for i in range(50)]


async def test_close_is_idempotent_and_submit_after_close_raises(tmp_path: Path) -> None:
    """close() may be called twice; a submit after it raises RuntimeError."""
    writer = started(tmp_path)
    await write(writer, [b"one"])
    writer.close()
    writer.close()
    with pytest.raises(RuntimeError, match="closed"):
        writer.submit(b"two")
    assert records_in(tmp_path) == [b"one"]


CHILD = """
import asyncio, sys
from gateway.config import SpoolConfig
from gateway.metrics import Metrics
from gateway.spool import SpoolWriter

async def main():
    config = SpoolConfig(dir=sys.argv[1], segment_max_bytes=4096, fsync="never")
    writer = SpoolWriter(config, lambda n: b"%06d" % n + b"." * 300, Metrics())
    writer.start()
    n = 0
    while True:
        futures = [writer.submit(i) for i in range(n, n + 16)]
        for i, future in enumerate(futures, n):
            await future
            print(i, flush=True)
        n += 16

asyncio.run(main())
"""


def read_acks_then_kill(proc: subprocess.Popen[bytes], want: int) -> list[int]:
    """Ids the child printed (so acknowledged) when it was SIGKILLed after ``want`` acks."""
    assert proc.stdout is not None
    fd, out = proc.stdout.fileno(), b""
    deadline = time.monotonic() + 20
    while out.count(b"\n") < want and time.monotonic() < deadline:
        if select.select([fd], [], [], 0.1)[0]:
            chunk = os.read(fd, 65536)
            if not chunk:
                break
            out += chunk
    proc.kill()
    while chunk := os.read(fd, 65536):
        out += chunk
    proc.wait()
    return [int(line) for line in out.split(b"\n")[:-1] if line.isdigit()]


def test_kill_9_loses_no_acknowledged_record(tmp_path: Path) -> None:
    """After SIGKILL mid-stream, recovery finds every record the child saw acknowledged."""
    command = [sys.executable, "-c", CHILD, str(tmp_path)]
    with subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE) as proc:
        acked = read_acks_then_kill(proc, want=200)
    assert len(acked) >= 200, "the child did not acknowledge enough records in time"
    recover_orphans(tmp_path, Metrics())
    assert open_files(tmp_path) == []
    found = [int(payload[:6]) for payload in records_in(tmp_path)]
    assert found == list(range(len(found)))
    assert set(acked) <= set(found)
