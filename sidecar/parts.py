"""Spool segment -> Parquet parts, one per partition the segment touches.

A ``Layout`` says which table a spool holds: exchanges (``EXCHANGES``: one part per task, date
and hour) or feedback (``FEEDBACK``: one part per task and date, ``core.feedback``).

Streams the segment record by record and writes each partition's rows in row groups as they
fill, so memory stays flat however large the segment or the backlog: at most one batch of rows
per open partition is held at a time. Blocking work (file I/O, JSON decoding, Parquet encoding):
run it on a worker thread.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, NamedTuple

import orjson
import pyarrow as pa
import pyarrow.parquet as pq

from core.errors import CorruptSegment
from core.feedback import FEEDBACK_SCHEMA, feedback_to_table
from core.keys import feedback_part_key, feedback_partition_of, part_key, partition_of
from core.record import SCHEMA, records_to_table
from core.segment import iter_records

COMPRESSION: Final = "zstd"
ROWS_PER_BATCH: Final = 2048  # rows buffered per partition before they become a row group


def parquet_writer(path: Path, schema: pa.Schema = SCHEMA) -> pq.ParquetWriter:
    """A writer of the exchange schema (or ``schema``) with the store's encoding settings."""
    return pq.ParquetWriter(path, schema, compression=COMPRESSION, write_statistics=True)


class Layout(NamedTuple):
    """How one kind of record becomes parts: its schema, and the partition of a record."""

    schema: pa.Schema
    to_table: Callable[[Iterable[Mapping[str, Any]]], pa.Table]
    partition: Callable[[str, int], Hashable]  # (task, ts in µs) -> partition
    key: Callable[[Any, str], str]  # (partition, segment id) -> the part's key


EXCHANGES: Final = Layout(SCHEMA, records_to_table, partition_of, part_key)
FEEDBACK: Final = Layout(
    FEEDBACK_SCHEMA, feedback_to_table, feedback_partition_of, feedback_part_key
)


@dataclass
class Part:
    """One Parquet file made from a segment, ready to upload under ``key``."""

    partition: Hashable
    key: str
    path: Path
    records: int = 0


@dataclass
class _Open:
    part: Part
    writer: pq.ParquetWriter
    layout: Layout
    rows: list[dict[str, Any]] = field(default_factory=list)

    def flush(self, segment: Path) -> None:
        if not self.rows:
            return
        try:
            table = self.layout.to_table(self.rows)
        except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
            raise CorruptSegment(segment, -1, f"a record does not fit the schema: {exc}") from exc
        self.writer.write_table(table)
        self.part.records += len(self.rows)
        self.rows = []


def segment_to_parts(
    segment: Path,
    workdir: Path,
    *,
    on_record: Callable[[int], None] | None = None,
    rows_per_batch: int = ROWS_PER_BATCH,
    layout: Layout = EXCHANGES,
) -> list[Part]:
    """Parquet parts of ``segment``, written under ``workdir``, keyed by the segment's id.

    Raises ``CorruptSegment`` when the segment is damaged or a record is not a JSON object with
    a task and a timestamp; the parts written before the damage was found are removed.
    """
    segment_id = segment.stem
    open_parts: dict[Hashable, _Open] = {}
    whole = False
    try:
        for payload in iter_records(segment):
            record = _decode(segment, payload)
            partition = layout.partition(record["task"], record["ts"])
            current = open_parts.get(partition)
            if current is None:
                path = workdir / f"{segment_id}.{len(open_parts)}.parquet"
                part = Part(partition, layout.key(partition, segment_id), path)
                writer = parquet_writer(path, layout.schema)
                current = open_parts[partition] = _Open(part, writer, layout)
            current.rows.append(record)
            if len(current.rows) >= rows_per_batch:
                current.flush(segment)
            if on_record is not None:
                on_record(len(payload))
        for current in open_parts.values():
            current.flush(segment)
        whole = True
    finally:
        for current in open_parts.values():
            current.writer.close()
            if not whole:
                current.part.path.unlink(missing_ok=True)
    return [o.part for o in open_parts.values()]


def _decode(segment: Path, payload: bytes) -> dict[str, Any]:
    try:
        record = orjson.loads(payload)
    except orjson.JSONDecodeError as exc:
        raise CorruptSegment(segment, -1, f"a record is not JSON: {exc}") from exc
    if not isinstance(record, dict) or not isinstance(record.get("task"), str):
        raise CorruptSegment(segment, -1, "a record has no task")
    if not isinstance(record.get("ts"), int):
        raise CorruptSegment(segment, -1, "a record has no integer ts")
    return record
