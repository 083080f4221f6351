"""Spool segments on disk: the format, lenient and strict readers, and crash recovery.

A segment is one file in the spool directory::

    <segment_id>.open   being written; its writer holds an exclusive flock on it
    <segment_id>.seg    sealed: fsynced, renamed atomically, never written again

``segment_id`` is a ULID, so sorted names are creation order. A segment starts with the 8-byte
magic ``PRTGSPL1``; then each record is ``<u32 length><u32 crc32>`` (little-endian) followed
by ``length`` bytes of payload (a JSON object). Nothing else is ever in the file.

A crash can leave a ``.open`` segment with a torn last record; ``recover_orphans`` cuts that
tail and seals the segment. Writers run it at start and the sidecar may run it any time: it
only touches ``.open`` files whose flock it can take, so several writers can share one
directory. A sealed segment must read back whole: any bad record or trailing byte is
``CorruptSegment``.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import struct
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Final, Protocol

import structlog
from prometheus_client import CollectorRegistry, Counter

from core.errors import CorruptSegment

MAGIC: Final = b"PRTGSPL1"
HEADER: Final = struct.Struct("<II")  # payload length, zlib.crc32 of the payload
OPEN_SUFFIX: Final = ".open"
SEALED_SUFFIX: Final = ".seg"
BAD_MAGIC: Final = "bad magic"

_READ_BUFFER: Final = 256 * 1024

log = structlog.get_logger()
StrPath = str | os.PathLike[str]


@dataclass(frozen=True)
class SegmentScan:
    """What a lenient read of a segment found."""

    records: int  # good records, counted from the start
    valid_bytes: int  # offset just past the last good record (0 when the magic is bad)
    size: int  # the file's size when it was read
    problem: str | None  # why reading stopped before the end; None when the file is whole


class _Frames:
    """Iterates a segment's payloads, stopping at the first bad record (``problem`` says why)."""

    def __init__(self, file: IO[bytes]) -> None:
        self._file = file
        self.size = os.fstat(file.fileno()).st_size
        self.records = self.valid_bytes = 0
        self.problem: str | None = None

    def __iter__(self) -> Iterator[bytes]:
        read, size = self._file.read, self.size
        magic = read(len(MAGIC))
        if magic != MAGIC:
            torn = size < len(MAGIC) and MAGIC.startswith(magic)
            self.problem = "file shorter than the magic" if torn else BAD_MAGIC
            return
        offset = self.valid_bytes = len(MAGIC)
        while offset < size:
            head = read(HEADER.size)
            if len(head) < HEADER.size:
                self.problem = "truncated record header"
                return
            length, crc = HEADER.unpack(head)
            end = offset + HEADER.size + length
            payload = read(length) if end <= size else b""  # never allocate a bogus length
            if len(payload) != length:
                self.problem = "record runs past the end of the file"
                return
            if zlib.crc32(payload) != crc:
                self.problem = "checksum mismatch"
                return
            offset = self.valid_bytes = end
            self.records += 1
            yield payload


def _scan(file: IO[bytes]) -> SegmentScan:
    frames = _Frames(file)
    for _ in frames:
        pass
    return SegmentScan(frames.records, frames.valid_bytes, frames.size, frames.problem)


def scan_segment(path: StrPath) -> SegmentScan:
    """Reads a segment up to its first bad record, keeping no payload."""
    with open(path, "rb", buffering=_READ_BUFFER) as file:
        return _scan(file)


def iter_records(path: StrPath) -> Iterator[bytes]:
    """The payloads of a sealed segment in order, one record in memory at a time.

    Raises ``CorruptSegment`` on reaching a bad record, after yielding the good ones before
    it: a consumer must finish the iteration before treating the segment as shipped.
    """
    with open(path, "rb", buffering=_READ_BUFFER) as file:
        frames = _Frames(file)
        yield from frames
        if frames.problem is not None:
            raise CorruptSegment(path, frames.valid_bytes, frames.problem)


def iter_segment(path: StrPath, *, batch_bytes: int = 8 * 1024 * 1024) -> Iterator[list[bytes]]:
    """``iter_records`` grouped into lists holding about ``batch_bytes`` of payload."""
    batch: list[bytes] = []
    held = 0
    for payload in iter_records(path):
        batch.append(payload)
        held += len(payload)
        if held >= batch_bytes:
            yield batch
            batch, held = [], 0
    if batch:
        yield batch


def _entries(directory: StrPath) -> list[os.DirEntry[str]]:
    try:
        with os.scandir(directory) as it:
            return [e for e in it if e.name.endswith((OPEN_SUFFIX, SEALED_SUFFIX))]
    except FileNotFoundError:
        return []


def sealed_segments(directory: StrPath) -> list[Path]:
    """The sealed segments in ``directory``, oldest first."""
    names = sorted(e.name for e in _entries(directory) if e.name.endswith(SEALED_SUFFIX))
    return [Path(directory, name) for name in names]


def spool_bytes(directory: StrPath) -> int:
    """Bytes held by the open and sealed segments in ``directory``."""
    total = 0
    for entry in _entries(directory):
        with contextlib.suppress(FileNotFoundError):  # shipped and deleted since the listing
            total += entry.stat().st_size
    return total


def fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def is_at(path: Path, fd: int) -> bool:
    """Whether ``path`` still names the file open as ``fd``."""
    try:
        return os.stat(path).st_ino == os.fstat(fd).st_ino
    except FileNotFoundError:
        return False


class SealCounters(Protocol):
    """The two counters recovery keeps (the gateway's and the sidecar's metrics both have)."""

    @property
    def spool_torn(self) -> Counter: ...
    @property
    def spool_sealed(self) -> Counter: ...


def recover_orphans(directory: StrPath, metrics: SealCounters) -> int:
    """Cuts the torn tail of, then seals, every ``.open`` segment whose writer is gone.

    An orphan without a good record is removed. Returns how many were sealed or removed.
    """
    done = 0
    for path in sorted(Path(directory).glob("*" + OPEN_SUFFIX)):
        try:
            fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
        except FileNotFoundError:  # sealed by its writer since the listing
            continue
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:  # its writer is alive
                continue
            if is_at(path, fd):
                done += _recover(path, fd, metrics)
        finally:
            os.close(fd)
    return done


def _recover(path: Path, fd: int, metrics: SealCounters) -> int:
    with open(fd, "rb", buffering=_READ_BUFFER, closefd=False) as file:
        scan = _scan(file)
    if scan.problem == BAD_MAGIC:
        log.error("spool_open_file_not_a_segment", path=str(path), size=scan.size)
        return 0
    if scan.size > scan.valid_bytes:
        os.ftruncate(fd, scan.valid_bytes)
        metrics.spool_torn.inc(1 if scan.valid_bytes else 0)  # a torn magic is no record
        log.warning(
            "spool_torn_tail_cut",
            path=str(path),
            cut_bytes=scan.size - scan.valid_bytes,
            reason=scan.problem,
            records_kept=scan.records,
        )
    if scan.records == 0:
        os.unlink(path)
    else:
        os.fsync(fd)
        os.rename(path, path.with_suffix(SEALED_SUFFIX))
        metrics.spool_sealed.inc()
        log.info("spool_orphan_sealed", path=str(path), records=scan.records)
    fsync_dir(path.parent)
    return 1


def recovery_counters(registry: CollectorRegistry) -> tuple[Counter, Counter]:
    """(torn records, sealed segments): kept by every process that writes or recovers spool."""
    torn = Counter(
        "protege_spool_torn_records",
        "Torn records cut from the tail of a segment left open by a crashed writer.",
        registry=registry,
    )
    sealed = Counter(
        "protege_spool_segments_sealed",
        "Spool segments sealed and handed to the sidecar.",
        registry=registry,
    )
    return torn, sealed
