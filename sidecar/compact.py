"""Compaction: the many small parts of a closed partition become one.

Every shipped spool segment adds a part to each hour it touches, so a busy task collects many
small files per hour; readers pay per file. Once an hour is closed (it ended ``grace`` ago, so
late segments have had time to arrive) its parts are merged, streaming, into one Parquet file:

    download parts -> merge (drop repeated request_ids) -> upload merged -> delete inputs

The merged part is uploaded before any input is deleted, so no record is ever missing from the
store; between the two steps records are visible twice, which readers drop by request_id. Its
name hashes the input keys, so the same inputs always make the same object (a retry, or a second
compactor on the same store, overwrites instead of adding). After a crash between upload and
delete, the next run merges the merged part and the leftover inputs into one.
"""

from __future__ import annotations

import asyncio
import hashlib
import shutil
import tempfile
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Final

import pyarrow as pa
import pyarrow.parquet as pq
import structlog

from core.errors import StoreNotFound
from core.keys import EXCHANGES, Partition, parse_part_key, part_key
from core.read import drop_seen
from core.record import SCHEMA
from core.store import Store, StoredObject
from sidecar.parts import ROWS_PER_BATCH, parquet_writer

log = structlog.get_logger("sidecar")

_HOUR: Final = timedelta(hours=1)
_FLUSH_ROWS: Final = 65_536  # rows buffered before they become one row group …
_FLUSH_BYTES: Final = 64 * 1024 * 1024  # … or this many bytes, whichever comes first


@dataclass
class CompactionReport:
    partitions: int = 0  # partitions that had parts merged
    parts_merged: int = 0  # input parts replaced (and deleted)
    records_written: int = 0  # records in the merged parts, after dropping repeats


async def compact(
    store: Store,
    workdir: Path,
    *,
    now: datetime,
    grace: timedelta = _HOUR,
    min_parts: int = 2,
    max_bytes: int = 512 * 1024 * 1024,
) -> CompactionReport:
    """Merge the parts of every closed partition holding at least ``min_parts`` of them.

    Inputs larger than ``max_bytes`` in total are merged in several groups. ``workdir`` holds
    the downloads and the merged file while they are needed; nothing is left behind. A group
    with an unreadable or vanished part is left as it is (and logged); other store failures
    raise ``StoreError``.
    """
    partitions = parts_by_partition(await store.list_objects(f"{EXCHANGES}/"))
    report = CompactionReport()
    for partition, parts in sorted(partitions.items()):
        if not is_closed(partition, now, grace) or len(parts) < min_parts:
            continue
        done = False
        for group in plan_groups(parts, max_bytes):
            try:
                report.records_written += await _merge_group(store, workdir, partition, group)
            except (pa.ArrowException, StoreNotFound) as exc:
                # A part that is not Parquet of the schema, or one another compactor merged and
                # deleted first: the group stays as it is, nothing was deleted.
                log.warning("compaction_skipped", partition=partition.prefix, error=str(exc))
                continue
            report.parts_merged += len(group)
            done = True
        report.partitions += done
    return report


def parts_by_partition(objects: Sequence[StoredObject]) -> dict[Partition, list[StoredObject]]:
    """Part objects grouped by partition, each list sorted by key; other keys are ignored."""
    out: dict[Partition, list[StoredObject]] = defaultdict(list)
    for obj in sorted(objects, key=lambda o: o.key):
        parsed = parse_part_key(obj.key)
        if parsed is not None:
            out[parsed[0]].append(obj)
    return dict(out)


def is_closed(partition: Partition, now: datetime, grace: timedelta) -> bool:
    """True once the partition's hour ended at least ``grace`` before ``now``."""
    return partition.start + _HOUR + grace <= now


def plan_groups(parts: Sequence[StoredObject], max_bytes: int) -> list[list[StoredObject]]:
    """Consecutive runs of ``parts`` of at most ``max_bytes`` each; runs of one part (nothing
    to merge it with) are left out."""
    groups: list[list[StoredObject]] = [[]]
    size = 0
    for part in parts:
        if groups[-1] and size + part.size > max_bytes:
            groups.append([])
            size = 0
        groups[-1].append(part)
        size += part.size
    return [group for group in groups if len(group) > 1]


def merged_name(keys: Sequence[str]) -> str:
    """The merged part's name: the same inputs always give the same name."""
    digest = hashlib.sha256("\n".join(sorted(keys)).encode()).hexdigest()
    return f"compacted-{digest[:16]}"


async def _merge_group(
    store: Store, workdir: Path, partition: Partition, group: Sequence[StoredObject]
) -> int:
    """Replace ``group`` by one merged part; returns the records it holds."""
    keys = [obj.key for obj in group]
    key = part_key(partition, merged_name(keys))
    records = await _upload_merged(store, workdir, key, keys)
    await store.delete([k for k in keys if k != key])
    log.info("partition_compacted", partition=partition.prefix, parts=len(keys), records=records)
    return records


async def _upload_merged(store: Store, workdir: Path, key: str, inputs: Sequence[str]) -> int:
    """Download ``inputs``, merge them into one file, upload it as ``key``; nothing deleted."""
    await asyncio.to_thread(workdir.mkdir, parents=True, exist_ok=True)
    tmp = Path(await asyncio.to_thread(tempfile.mkdtemp, prefix="compact-", dir=workdir))
    try:
        paths = []
        for i, input_key in enumerate(inputs):
            path = tmp / f"{i}.parquet"
            await store.get_file(input_key, path)
            paths.append(path)
        merged = tmp / "merged.parquet"
        records = await asyncio.to_thread(merge_files, paths, merged)
        await store.put_file(key, merged)
        return records
    finally:
        await asyncio.to_thread(shutil.rmtree, tmp, ignore_errors=True)


def merge_files(inputs: Sequence[Path], output: Path) -> int:
    """Stream ``inputs`` into one Parquet file at ``output``, the first copy of each
    ``request_id`` kept; returns the records written. Blocking: run it on a worker thread."""
    seen: set[str] = set()
    buffered: list[pa.RecordBatch] = []
    written = 0
    with parquet_writer(output) as writer:
        for path in inputs:
            for batch in pq.ParquetFile(path).iter_batches(batch_size=ROWS_PER_BATCH):
                fresh = drop_seen(_conform(batch), seen)
                if fresh.num_rows:
                    buffered.append(fresh)
                if _buffered_enough(buffered):
                    written += _flush(writer, buffered)
        written += _flush(writer, buffered)
    return written


def _conform(batch: pa.RecordBatch) -> pa.RecordBatch:
    """``batch`` as exactly ``SCHEMA``: columns in order and cast, missing ones null, extra
    ones (from a newer writer) dropped."""
    columns = []
    for field in SCHEMA:
        index = batch.schema.get_field_index(field.name)
        if index < 0:
            columns.append(pa.nulls(batch.num_rows, field.type))
        else:
            columns.append(batch.column(index).cast(field.type))
    return pa.RecordBatch.from_arrays(columns, schema=SCHEMA)


def _buffered_enough(buffered: Sequence[pa.RecordBatch]) -> bool:
    rows: int = sum(batch.num_rows for batch in buffered)
    size: int = sum(batch.nbytes for batch in buffered)
    return rows >= _FLUSH_ROWS or size >= _FLUSH_BYTES


def _flush(writer: pq.ParquetWriter, buffered: list[pa.RecordBatch]) -> int:
    """Write the buffered batches as one row group and empty the buffer."""
    if not buffered:
        return 0
    table = pa.Table.from_batches(buffered, schema=SCHEMA)
    writer.write_table(table, row_group_size=table.num_rows)
    buffered.clear()
    rows: int = table.num_rows
    return rows
