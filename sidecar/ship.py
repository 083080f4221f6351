"""Shipping: sealed spool segments become Parquet parts in the store, then leave the spool.

At least once, never losing a record: a segment is deleted only after every part made from it
is confirmed stored. A crash anywhere before that ships the segment again, and since a part's
key derives from its segment, the second upload overwrites the first instead of duplicating
it. A segment that cannot be read is quarantined (moved aside, counted, logged) and shipping
goes on. Store failures are retried with exponential backoff and jitter; meanwhile the spool
grows (up to the gateway's cap) and drains when the store is back.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import random
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import structlog

from core.errors import CorruptSegment, StoreError
from core.ids import id_time_ms
from core.segment import OPEN_SUFFIX, fsync_dir, recover_orphans, sealed_segments
from core.store import Store
from sidecar.metrics import SidecarMetrics
from sidecar.parts import EXCHANGES, Layout, Part, segment_to_parts

log = structlog.get_logger("sidecar")


@dataclass(frozen=True)
class Backlog:
    """What waits in a spool: sealed bytes and segments, the oldest segment's id time (ms)."""

    bytes: int = 0
    segments: int = 0
    oldest_ms: int | None = None

    def __add__(self, other: Backlog) -> Backlog:
        times = [t for t in (self.oldest_ms, other.oldest_ms) if t is not None]
        return Backlog(
            self.bytes + other.bytes, self.segments + other.segments, min(times, default=None)
        )

    def observe(self, metrics: SidecarMetrics, now: float) -> None:
        """Export it: the backlog gauges, the oldest segment's age (0 when empty)."""
        metrics.backlog_bytes.set(self.bytes)
        metrics.backlog_segments.set(self.segments)
        oldest = self.oldest_ms
        metrics.oldest_age.set(0 if oldest is None else max(0.0, now - oldest / 1000))


class GaveUp(Exception):
    """Uploads kept failing past the allowed attempts; the segment stays in the spool."""


class Backoff:
    """Exponential backoff with full jitter: ``base * 2**n`` capped at ``cap`` seconds."""

    def __init__(self, base: float, cap: float, rng: Callable[[], float] = random.random):
        self.base, self.cap, self._rng = base, cap, rng

    def delay(self, attempt: int) -> float:
        grown: float = self.base * 2 ** min(attempt, 30)
        return min(self.cap, grown) * (0.5 + self._rng() / 2)


class Shipper:
    def __init__(
        self,
        spool: Path,
        store: Store,
        workdir: Path,
        quarantine: Path,
        metrics: SidecarMetrics,
        backoff: Backoff,
        layout: Layout = EXCHANGES,
    ) -> None:
        """Ships the segments in ``spool`` holding records of ``layout`` (exchanges, or
        feedback from its own spool)."""
        self.spool, self.store, self.layout = spool, store, layout
        self.workdir, self.quarantine_dir = workdir, quarantine
        self.metrics, self.backoff = metrics, backoff
        self.stopping = asyncio.Event()

    async def ship_all(self, max_attempts: int | None = None) -> int:
        """Ship every segment sealed now, oldest first; returns how many were shipped.

        With ``max_attempts``, a store that keeps failing raises ``GaveUp``; without, uploads
        are retried until they succeed or ``stopping`` is set.
        """
        await asyncio.to_thread(self._recover)
        shipped = 0
        for segment in await asyncio.to_thread(sealed_segments, self.spool):
            if self.stopping.is_set() and max_attempts is None:
                break
            shipped += await self.ship(segment, max_attempts)
        return shipped

    async def ship(self, segment: Path, max_attempts: int | None = None) -> int:
        """Store one sealed segment's parts, then delete it. 1 if shipped, 0 if quarantined."""
        await asyncio.to_thread(self.workdir.mkdir, parents=True, exist_ok=True)
        try:
            parts = await asyncio.to_thread(
                partial(segment_to_parts, segment, self.workdir, layout=self.layout)
            )
        except CorruptSegment as exc:
            await asyncio.to_thread(self._quarantine, segment, exc)
            return 0
        try:
            for part in parts:
                await self._upload(part, max_attempts)
        finally:
            await asyncio.to_thread(_remove, [p.path for p in parts])
        await asyncio.to_thread(_delete_segment, segment)
        self.metrics.segments_shipped.inc()
        self.metrics.records_shipped.inc(sum(p.records for p in parts))
        log.info("segment shipped", segment=segment.name, parts=len(parts),
                 records=sum(p.records for p in parts))  # fmt: skip
        return 1

    async def _upload(self, part: Part, max_attempts: int | None) -> None:
        attempt = 0
        while True:
            try:
                await self.store.put_file(part.key, part.path)
                break
            except StoreError as exc:
                attempt += 1
                self.metrics.upload_errors.inc()
                if max_attempts is not None and attempt >= max_attempts:
                    raise GaveUp(f"{part.key}: {exc}") from exc
                if self.stopping.is_set() and max_attempts is None:
                    raise GaveUp(f"{part.key}: stopping") from exc
                delay = self.backoff.delay(attempt - 1)
                log.warning("upload failed, retrying", key=part.key, error=str(exc),
                            attempt=attempt, retry_in_s=round(delay, 2))  # fmt: skip
                self.metrics.upload_retries.inc()
                await self._sleep(delay)
        size = (await asyncio.to_thread(part.path.stat)).st_size
        self.metrics.bytes_shipped.inc(size)
        self.metrics.last_upload.set(time.time())

    async def _sleep(self, seconds: float) -> None:
        """Sleep, but wake up early when stopping."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.stopping.wait(), seconds)

    def clean_workdir(self) -> None:
        """Remove what a crashed run left in the scratch directory (it is all re-made)."""
        shutil.rmtree(self.workdir, ignore_errors=True)

    def _recover(self) -> None:
        """Seal what crashed writers left open, so it ships too."""
        recover_orphans(self.spool, self.metrics)

    def _quarantine(self, segment: Path, exc: CorruptSegment) -> None:
        self.quarantine_dir.mkdir(parents=True, exist_ok=True)
        target = self.quarantine_dir / segment.name
        os.replace(segment, target)
        fsync_dir(self.spool)
        self.metrics.quarantined.inc()
        log.error("segment quarantined", segment=str(segment), moved_to=str(target),
                  reason=exc.reason, offset=exc.offset)  # fmt: skip

    def backlog(self) -> Backlog:
        """The spool's backlog: sealed bytes and count, and the oldest segment's id time."""
        sealed = sealed_segments(self.spool)
        size = 0
        for path in sealed:
            try:
                size += path.stat().st_size
            except FileNotFoundError:
                continue
        names = [p.name for p in sealed] + [p.name for p in self.spool.glob("*" + OPEN_SUFFIX)]
        oldest = min((id_time_ms(n) for n in names if len(n) > 26), default=None)
        return Backlog(size, len(sealed), oldest)

    def writers_alive(self) -> bool:
        """Whether a live writer still holds an open segment (e.g. a gateway shutting down)."""
        return any(_locked(p) for p in self.spool.glob("*" + OPEN_SUFFIX))


def _locked(path: Path) -> bool:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        return False
    except BlockingIOError:
        return True
    finally:
        os.close(fd)


def _remove(paths: list[Path]) -> None:
    for path in paths:
        path.unlink(missing_ok=True)


def _delete_segment(segment: Path) -> None:
    segment.unlink()
    fsync_dir(segment.parent)
