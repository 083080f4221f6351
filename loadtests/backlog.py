"""The sidecar benchmark's backlog: sealed spool segments written by the gateway's own writer.

``write_backlog`` feeds ``exchange_records`` through ``gateway.spool.SpoolWriter`` (fsync
``never``, default segment size), so the files are byte for byte what the gateway leaves for
the sidecar. ``read_spool`` is the baseline: the same segments read with
``core.segment.iter_records`` and nothing else. ``link_spool`` gives each sidecar run its own
spool directory of hard links, since shipping deletes the segments it shipped.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from exchange_records import records

from core.segment import iter_records, sealed_segments
from core.settings import SpoolConfig
from gateway.metrics import Metrics
from gateway.spool import SpoolWriter

_WINDOW: Final = 4096  # records submitted before waiting for the writer to catch up


@dataclass(frozen=True)
class Segment:
    path: Path
    size: int
    records: int


@dataclass(frozen=True)
class Backlog:
    directory: Path
    segments: tuple[Segment, ...]

    @property
    def records(self) -> int:
        return sum(s.records for s in self.segments)

    @property
    def bytes(self) -> int:
        return sum(s.size for s in self.segments)

    def first(self, max_bytes: int) -> Backlog:
        """The oldest segments, as many as fit in ``max_bytes`` (at least one)."""
        taken, size = 0, 0
        for segment in self.segments:
            if taken and size + segment.size > max_bytes:
                break
            taken, size = taken + 1, size + segment.size
        return Backlog(self.directory, self.segments[:taken])


@dataclass(frozen=True)
class ReadResult:
    """One pass over a backlog with the segment reader: the baseline."""

    records: int
    bytes: int  # segment file bytes
    wall_s: float
    cpu_s: float
    per_segment: dict[str, int]  # segment file name -> records


async def _submit_all(writer: SpoolWriter[bytes], stream: Iterator[bytes]) -> None:
    """Submit every record, at most ``_WINDOW`` unwritten at a time; any drop is an error."""
    pending: list[asyncio.Future[None]] = []
    for record in stream:
        future = writer.submit(record)
        if future is None:
            raise SystemExit("the spool writer dropped a record (spool full?)")
        pending.append(future)
        if len(pending) >= _WINDOW:
            await asyncio.gather(*pending)
            pending.clear()
    await asyncio.gather(*pending)


async def _write(directory: Path, total_bytes: int) -> None:
    config = SpoolConfig(
        dir=directory,
        fsync="never",
        segment_max_age_s=3600.0,  # seal by size only, however slow this machine is
        max_bytes=2 * total_bytes + 256 * 1024**2,  # never full: every record must land
    )
    writer: SpoolWriter[bytes] = SpoolWriter(config, bytes, Metrics())
    writer.start()
    try:
        await _submit_all(writer, records(total_bytes, time.time_ns() // 1000))
    finally:
        await writer.aclose()


def write_backlog(directory: Path, total_bytes: int) -> None:
    """Fill ``directory`` with sealed segments holding about ``total_bytes``, flushed to disk."""
    asyncio.run(_write(directory, total_bytes))
    leftovers = [p.name for p in directory.iterdir() if p.suffix != ".seg"]
    if leftovers:
        raise SystemExit(f"the spool writer left unsealed files: {leftovers[:5]}")
    os.sync()  # so the kernel's write-back of the backlog does not run during the measurements


def read_spool(directory: Path) -> ReadResult:
    """Read every sealed segment in ``directory`` with ``iter_records``, counting records."""
    per_segment: dict[str, int] = {}
    size = 0
    cpu0, wall0 = time.process_time(), time.perf_counter()
    for path in sealed_segments(directory):
        count = 0
        for _ in iter_records(path):
            count += 1
        per_segment[path.name] = count
        size += path.stat().st_size
    wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
    return ReadResult(sum(per_segment.values()), size, wall, cpu, per_segment)


def describe(directory: Path, per_segment: dict[str, int]) -> Backlog:
    """The backlog in ``directory``, with the record counts a ``read_spool`` found."""
    segments = [
        Segment(path, path.stat().st_size, per_segment[path.name])
        for path in sealed_segments(directory)
    ]
    return Backlog(directory, tuple(segments))


def link_spool(backlog: Backlog, target: Path) -> Path:
    """A spool directory at ``target`` holding hard links to ``backlog``'s segments."""
    target.mkdir(parents=True)
    for segment in backlog.segments:
        os.link(segment.path, target / segment.path.name)
    return target
