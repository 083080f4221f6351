"""The spool writer: exchange records appended to segment files until the sidecar ships them.

The segment format and its readers live in ``core.segment``. A record is written to the OS
before its request is answered, so killing the process loses no acknowledged record; fsync
policy decides what a power loss may take. The gateway keeps two writers: exchanges in the
spool directory, feedback in its ``feedback/`` sub-directory (``core.feedback``).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import os
import queue
import threading
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Generic, Protocol, TypeVar

import structlog
from prometheus_client import Counter, Gauge

from core.errors import SpoolWriteFailed
from core.ids import new_id
from core.segment import (
    HEADER,
    MAGIC,
    OPEN_SUFFIX,
    SEALED_SUFFIX,
    fsync_dir,
    is_at,
    recover_orphans,
    spool_bytes,
)
from core.settings import SpoolConfig

_MAX_BATCH: Final = 1024  # records per write; bounds how far a batch overshoots a segment
_RESCAN_S: Final = 1.0  # the sidecar deletes segments: re-measure the directory this often
_DROP_LOG_S: Final = 10.0

log = structlog.get_logger()
T = TypeVar("T")
_Entry = tuple[T, asyncio.Future[None]]  # an item and the future its submitter awaits


class SpoolMetrics(Protocol):
    """The collectors a writer keeps (``gateway.metrics`` has a set per spool)."""

    @property
    def spool_records(self) -> Counter: ...
    @property
    def spool_written_bytes(self) -> Counter: ...
    @property
    def spool_dropped(self) -> Counter: ...
    @property
    def spool_torn(self) -> Counter: ...
    @property
    def spool_sealed(self) -> Counter: ...
    @property
    def spool_bytes(self) -> Gauge: ...
    @property
    def spool_full(self) -> Gauge: ...


def _resolve(futures: list[asyncio.Future[None]], failed: list[asyncio.Future[None]]) -> None:
    for future in futures:
        if not future.done():  # a client that went away may have cancelled its wait
            future.set_result(None)
    for future in failed:
        if not future.done():
            future.set_exception(SpoolWriteFailed("the record could not be written to the spool"))


@dataclass
class _Segment:
    fd: int
    path: Path
    opened_at: float
    synced_at: float
    size: int = 0
    records: int = 0
    unsynced: bool = False


class SpoolWriter(Generic[T]):
    """Appends records to the spool from one writer thread; ``submit`` never blocks the loop.

    ``encode`` turns a submitted item into the record's bytes, on the writer thread. The thread
    writes whatever is queued with one ``os.write`` (then fsyncs when fsync is ``always``) and
    resolves that batch's futures with one callback into the event loop. A second thread, the
    finisher, does the interval fsyncs and the sealing, so a slow disk never holds up a write.

    A record that cannot be encoded or written is counted and logged. Its future still
    resolves (the exchange was answered anyway), unless the writer is ``strict``: then it
    fails with ``SpoolWriteFailed``, for a submitter whose answer promises the record is kept.
    """

    def __init__(
        self,
        config: SpoolConfig,
        encode: Callable[[T], bytes],
        metrics: SpoolMetrics,
        *,
        clock: Callable[[], float] = time.monotonic,
        strict: bool = False,
    ) -> None:
        self._config = config
        self._dir = Path(config.dir)
        self._encode = encode
        self._metrics = metrics
        self._clock = clock
        self._strict = strict
        self._queue: queue.SimpleQueue[_Entry[T] | None] = queue.SimpleQueue()
        self._lock = threading.RLock()  # re-entrant: close() may interrupt submit() on SIGTERM
        self._thread: threading.Thread | None = None
        self._closed = self._full = False
        self._segment: _Segment | None = None
        self._last_ms = self._bytes = self._unlogged_drops = 0
        self._next_rescan, self._next_drop_log = 0.0, float("-inf")
        self._dropped_full = metrics.spool_dropped.labels(reason="spool_full")
        self._dropped_encode = metrics.spool_dropped.labels(reason="encode_error")
        self._dropped_write = metrics.spool_dropped.labels(reason="write_error")
        self._finisher: queue.SimpleQueue[tuple[str, _Segment] | None] = queue.SimpleQueue()
        self._finisher_thread = threading.Thread(
            target=self._finish, name="protege-spool-finisher", daemon=True
        )

    def start(self) -> None:
        """Recovers orphaned ``.open`` segments, then starts the writer thread."""
        if self._thread is not None or self._closed:
            raise RuntimeError("SpoolWriter.start() may be called once, before close()")
        self._dir.mkdir(parents=True, exist_ok=True)
        recover_orphans(self._dir, self._metrics)
        self._rescan()
        self._thread = threading.Thread(target=self._run, name="protege-spool", daemon=True)
        self._finisher_thread.start()
        self._thread.start()

    @property
    def full(self) -> bool:
        """Whether the spool directory is at its cap, so new records would be dropped."""
        return self._full

    def submit(self, item: T) -> asyncio.Future[None] | None:
        """Queues ``item``; the future resolves once its record is written. None: dropped."""
        with self._lock:
            if self._closed or self._thread is None:
                raise RuntimeError("SpoolWriter.submit() needs a started writer, not yet closed")
            if self._full:
                self._drop_full()
                return None
            future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            self._queue.put((item, future))
        return future

    def close(self, timeout: float = 30) -> None:
        """Writes everything queued, seals the open segment and stops the thread. Idempotent."""
        with self._lock:
            if not self._closed and self._thread is not None:
                self._queue.put(None)
            self._closed = True
        if self._thread is not None:
            deadline = time.monotonic() + timeout
            self._thread.join(timeout)
            self._finisher_thread.join(max(0.0, deadline - time.monotonic()))
            if self._thread.is_alive() or self._finisher_thread.is_alive():
                log.error("spool_close_timed_out", timeout_s=timeout, dir=str(self._dir))

    async def aclose(self) -> None:
        """``close`` on a worker thread, so the event loop keeps running meanwhile."""
        await asyncio.to_thread(self.close)

    def _drop_full(self) -> None:
        self._dropped_full.inc()
        self._unlogged_drops += 1
        if (now := self._clock()) >= self._next_drop_log:
            log.warning("spool_full_dropping", dropped=self._unlogged_drops, bytes=self._bytes)
            self._unlogged_drops, self._next_drop_log = 0, now + _DROP_LOG_S

    # Everything below runs on the writer thread.

    def _run(self) -> None:
        stopping = False
        while not stopping:
            batch, stopping = self._next_batch()
            self._guarded(self._write_batch, batch)
            self._guarded(self._housekeep)
        with self._lock:  # a submit() that close() interrupted may have queued one more
            late, _ = self._drain([])
        self._guarded(self._write_batch, late)
        self._guarded(self._seal)
        self._finisher.put(None)

    def _guarded(self, step: Callable[..., None], *args: object) -> None:
        try:
            step(*args)
        except Exception:
            log.exception("spool_writer_step_failed", step=step.__name__)

    def _next_batch(self) -> tuple[list[_Entry[T]], bool]:
        """Waits for an entry until the next timed duty is due, then takes all queued."""
        try:
            entry = self._queue.get(timeout=self._idle_s())
        except queue.Empty:
            return [], False
        return ([], True) if entry is None else self._drain([entry])

    def _drain(self, batch: list[_Entry[T]]) -> tuple[list[_Entry[T]], bool]:
        while len(batch) < _MAX_BATCH:
            try:
                entry = self._queue.get_nowait()
            except queue.Empty:
                break
            if entry is None:
                return batch, True
            batch.append(entry)
        return batch, False

    def _idle_s(self) -> float:
        """Seconds until the next timed duty: rescan, seal by age or fsync by interval."""
        due, seg = self._next_rescan, self._segment
        if seg is not None:
            due = min(due, seg.opened_at + self._config.segment_max_age_s)
            if self._config.fsync == "interval" and seg.unsynced:
                due = min(due, seg.synced_at + self._config.fsync_interval_s)
        return max(0.0, due - self._clock())

    def _housekeep(self) -> None:
        now, seg, cfg = self._clock(), self._segment, self._config
        if now >= self._next_rescan:
            self._rescan()
        if seg is None:
            return
        if now - seg.opened_at >= cfg.segment_max_age_s:
            self._seal()
        elif (
            seg.unsynced and cfg.fsync == "interval" and now >= seg.synced_at + cfg.fsync_interval_s
        ):
            seg.synced_at, seg.unsynced = now, False
            self._finisher.put(("sync", seg))

    def _write_batch(self, batch: list[_Entry[T]]) -> None:
        if not batch:
            return
        futures = [future for _, future in batch]
        failed: list[asyncio.Future[None]] = futures
        try:
            parts, failed = self._frame(batch)
            if parts and not self._append(parts, len(parts) // 2):
                failed = futures
        finally:
            if not self._strict:
                failed = []
            elif failed:
                futures = [f for f in futures if f not in failed]
            self._notify(futures, failed)
        seg = self._segment
        if seg is not None and seg.size >= self._config.segment_max_bytes:
            self._seal()

    def _frame(
        self, batch: list[_Entry[T]]
    ) -> tuple[list[bytes], list[asyncio.Future[None]]]:
        """Headers and payloads, alternating; an item that fails to encode is dropped (its
        future is in the second list)."""
        parts: list[bytes] = []
        failed: list[asyncio.Future[None]] = []
        pack, crc32 = HEADER.pack, zlib.crc32
        for item, future in batch:
            try:
                payload = self._encode(item)
                head = pack(len(payload), crc32(payload))
            except Exception:
                self._dropped_encode.inc()
                log.exception("spool_encode_failed_record_dropped")
                failed.append(future)
                continue
            parts += (head, payload)
        return parts, failed

    def _append(self, parts: list[bytes], records: int) -> bool:
        """Writes framed records to the open segment; False when the write failed."""
        seg = self._segment
        try:
            if seg is None:
                seg = self._segment = self._open_segment()
            data = b"".join(parts if seg.size else [MAGIC, *parts])
            if os.write(seg.fd, data) != len(data):
                raise OSError(errno.ENOSPC, "short write to a spool segment")
            seg.unsynced = True
            if self._config.fsync == "always":
                self._sync(seg)
        except OSError as exc:
            self._dropped_write.inc(records)
            log.error("spool_write_failed", error=str(exc), records_dropped=records)
            if seg is not None:
                self._abandon(seg)
            return False
        seg.size += len(data)
        seg.records += records
        self._metrics.spool_records.inc(records)
        self._metrics.spool_written_bytes.inc(len(data))
        self._bytes += len(data)
        self._publish()
        return True

    def _notify(
        self, futures: list[asyncio.Future[None]], failed: list[asyncio.Future[None]]
    ) -> None:
        """Settles ``futures`` (written) and ``failed`` with one callback per event loop (one
        loop in practice)."""
        by_loop: dict[asyncio.AbstractEventLoop, tuple[list[Any], list[Any]]] = {}
        for i, group in enumerate((futures, failed)):
            for future in group:
                by_loop.setdefault(future.get_loop(), ([], []))[i].append(future)
        for loop, (written, lost) in by_loop.items():
            with contextlib.suppress(RuntimeError):  # a closed loop: nobody is waiting
                loop.call_soon_threadsafe(_resolve, written, lost)

    def _open_segment(self) -> _Segment:
        while True:
            # Milliseconds kept strictly increasing so this writer's segments sort in order.
            self._last_ms = max(time.time_ns() // 1_000_000, self._last_ms + 1)
            path = self._dir / f"{new_id(self._last_ms)}{OPEN_SUFFIX}"
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
                if is_at(path, fd):
                    now = self._clock()
                    return _Segment(fd=fd, path=path, opened_at=now, synced_at=now)
            except BaseException:
                os.close(fd)
                raise
            os.close(fd)  # a recovery removed it, still empty, before we locked it

    def _sync(self, seg: _Segment) -> None:
        seg.synced_at = self._clock()  # set first: a failing fsync is retried an interval later
        os.fsync(seg.fd)
        seg.unsynced = False

    # Everything below runs on the finisher thread: fsyncs by interval and seals, so that a
    # slow disk delays neither the writer nor the acknowledgements it sends.

    def _finish(self) -> None:
        while (job := self._finisher.get()) is not None:
            kind, seg = job
            if kind == "sync":
                try:
                    os.fsync(seg.fd)
                except OSError:
                    log.exception("spool_fsync_failed", path=str(seg.path))
            else:
                self._seal_now(seg)

    def _seal_now(self, seg: _Segment) -> None:
        """fsync, rename .open to .seg, fsync the directory; an empty segment is removed."""
        try:
            if seg.records == 0:
                os.unlink(seg.path)
            else:
                os.fsync(seg.fd)
                os.rename(seg.path, seg.path.with_suffix(SEALED_SUFFIX))
                self._metrics.spool_sealed.inc()
            fsync_dir(self._dir)
        except OSError:
            log.exception("spool_seal_failed_left_for_recovery", path=str(seg.path))
        finally:
            os.close(seg.fd)  # releases the flock, after the rename

    def _seal(self) -> None:
        """Hands the open segment to the finisher to seal; the next one opens lazily."""
        seg, self._segment = self._segment, None
        if seg is not None:
            self._finisher.put(("seal", seg))

    def _abandon(self, seg: _Segment) -> None:
        """After a failed write: cut the partial batch off, then seal the good records."""
        try:
            os.ftruncate(seg.fd, seg.size)
        except OSError:
            log.exception("spool_truncate_failed_left_for_recovery", path=str(seg.path))
            self._segment = None
            os.close(seg.fd)
            return
        self._seal()

    def _rescan(self) -> None:
        self._next_rescan = self._clock() + _RESCAN_S
        self._bytes = spool_bytes(self._dir)
        self._publish()

    def _publish(self) -> None:
        self._full = self._bytes >= self._config.max_bytes
        self._metrics.spool_bytes.set(self._bytes)
        self._metrics.spool_full.set(1 if self._full else 0)
