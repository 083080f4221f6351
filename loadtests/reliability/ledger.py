"""What reached the store, set against what the clients were answered.

The store is read raw (every row of every part, no de-duplication), so a request id stored
twice shows up as a duplicate; "stored" counts distinct request ids, as ``core.read`` returns
them. A request the clients got a whole answer for (``Outcome.whole``) must be stored: if not,
it is lost. Each stored record of such a request must also agree with the answer: same status,
``complete`` true for a stream that ended with ``[DONE]`` and false for one that ended with an
error event.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import pyarrow.dataset as ds
import pyarrow.fs as pafs
from traffic import Outcome

from core.keys import EXCHANGES
from core.read import PARTITIONING, filesystem_for
from core.segment import HEADER, MAGIC

COLUMNS = ("request_id", "status", "complete", "shadow_of", "route", "backend", "error", "request")


@dataclass
class StoreView:
    """Every row in the store's exchanges (the columns in ``COLUMNS``), duplicates kept."""

    rows: list[dict[str, Any]]

    @property
    def ids(self) -> Counter[str]:
        return Counter(r["request_id"] for r in self.rows)

    def first(self) -> dict[str, dict[str, Any]]:
        out: dict[str, dict[str, Any]] = {}
        for r in self.rows:
            out.setdefault(r["request_id"], r)
        return out

    def with_text(self, needle: str) -> list[dict[str, Any]]:
        return [r for r in self.rows if needle in (r["request"] or "")]


def read_store(
    store_uri: str, env: Mapping[str, str] | None = None, columns: Iterable[str] = COLUMNS
) -> StoreView:
    """Every exchange row of the store (``env``: the AWS settings for an S3 store)."""
    fs, root = filesystem_for(store_uri, env)
    path = f"{root}/{EXCHANGES}"
    if fs.get_file_info(path).type == pafs.FileType.NotFound:
        return StoreView([])
    dataset = ds.dataset(
        path,
        filesystem=fs,
        format="parquet",
        partitioning=ds.HivePartitioning(PARTITIONING, segment_encoding="none"),
        ignore_prefixes=[".", "_"],
    )
    return StoreView(dataset.to_table(columns=list(columns)).to_pylist())


@dataclass(frozen=True)
class Tally:
    rows: int  # rows in the store
    distinct: int  # distinct request ids among them
    duplicates: int  # rows beyond the first of their request id
    shadow: int  # distinct shadow records (shadow_of set)
    expected: int  # whole answers the clients received
    lost: int  # of which no record is stored (nor set aside, see ``elsewhere``)
    set_aside: int  # of which the record is not in the store but accounted for elsewhere
    disagree: int  # of which the stored record contradicts the answer
    lost_ids: tuple[str, ...] = field(default=(), repr=False)
    disagreeing: tuple[str, ...] = field(default=(), repr=False)


def _agrees(outcome: Outcome, record: dict[str, Any]) -> bool:
    if record["status"] != outcome.status:
        return False
    if outcome.ended == "done":
        return bool(record["complete"])
    if outcome.ended == "error_event":
        return not record["complete"]
    return True


def tally(outcomes: Iterable[Outcome], view: StoreView, elsewhere: Iterable[str] = ()) -> Tally:
    """Losses, duplicates and disagreements; ids in ``elsewhere`` (e.g. a quarantined
    segment) are set aside, not lost."""
    counts = view.ids
    stored = view.first()
    aside = set(elsewhere)
    expected = {o.request_id: o for o in outcomes if o.recorded and o.request_id is not None}
    lost = [rid for rid in expected if rid not in stored and rid not in aside]
    set_aside = sum(1 for rid in expected if rid not in stored and rid in aside)
    disagree = [rid for rid, o in expected.items() if rid in stored and not _agrees(o, stored[rid])]
    shadow = sum(1 for r in stored.values() if r["shadow_of"])
    return Tally(
        rows=len(view.rows),
        distinct=len(counts),
        duplicates=len(view.rows) - len(counts),
        shadow=shadow,
        expected=len(expected),
        lost=len(lost),
        set_aside=set_aside,
        disagree=len(disagree),
        lost_ids=tuple(lost[:20]),
        disagreeing=tuple(disagree[:20]),
    )


def segment_ids(path: Path) -> list[str]:
    """Request ids of every frame in a segment, checksums ignored (a damaged segment read as
    far as its framing allows): what a person inspecting the quarantine could recover."""
    data = path.read_bytes()
    ids: list[str] = []
    if not data.startswith(MAGIC):
        return ids
    offset = len(MAGIC)
    while offset + HEADER.size <= len(data):
        length, _ = HEADER.unpack_from(data, offset)
        payload = data[offset + HEADER.size : offset + HEADER.size + length]
        offset += HEADER.size + length
        try:
            ids.append(orjson.loads(payload)["request_id"])
        except (orjson.JSONDecodeError, KeyError, TypeError):
            continue
    return ids


def frame_offsets(path: Path) -> list[int]:
    """Offsets of each record header in a segment."""
    data = path.read_bytes()
    offsets, offset = [], len(MAGIC)
    while offset + HEADER.size <= len(data):
        offsets.append(offset)
        length, _ = HEADER.unpack_from(data, offset)
        offset += HEADER.size + length
    return offsets
