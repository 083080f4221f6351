"""Reading back what a gateway spooled, for assertions."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson

from core.segment import iter_records, sealed_segments


def spooled_records(spool_dir: Path, *, details: bool = False) -> list[dict[str, Any]]:
    """Every record in the sealed segments of ``spool_dir``, oldest first; with ``details``,
    each record's ``detail`` JSON parsed."""
    out = [orjson.loads(p) for seg in sealed_segments(spool_dir) for p in iter_records(seg)]
    if details:
        for r in out:
            r["detail"] = None if r["detail"] is None else orjson.loads(r["detail"])
    return out
