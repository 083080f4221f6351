"""What the gateway captured during the benchmark: files, bytes and records in its spool.

Protégé segments are read with the gateway's own segment reader; a file without the segment
magic (another relay's capture, measured with ``--gateway-cmd``) is counted as JSON lines.
"""

from __future__ import annotations

from pathlib import Path
from typing import BinaryIO

from core.segment import MAGIC, scan_segment


def spool_usage(spool: Path) -> dict[str, int]:
    """Files, bytes and records under the spool directory."""
    files = sorted(p for p in spool.rglob("*") if p.is_file())
    return {
        "files": len(files),
        "bytes": sum(p.stat().st_size for p in files),
        "records": sum(count_records(p) for p in files),
    }


def count_records(path: Path) -> int:
    """Whole records in one spool file; a torn last record is not counted."""
    with path.open("rb") as fh:
        if fh.read(len(MAGIC)) == MAGIC:
            return scan_segment(path).records
        fh.seek(0)
        return _count_lines(fh)


def _count_lines(fh: BinaryIO) -> int:
    count = 0
    while block := fh.read(1 << 20):
        count += block.count(b"\n")
    return count
