"""Reading exchanges back from the store: the one reader the trainer and ``protege logs`` use.

The store's ``exchanges/`` prefix is opened as a pyarrow dataset over hive partitions
(``task=…/date=…/hour=…``), on the local disk or on S3. Filters on task and time prune whole
partitions before any file is opened, then the ``ts`` filter drops rows at the edges. Batches are
streamed, never the whole dataset, and a ``request_id`` seen before is dropped: a part may be
visible twice for a while (a re-shipped segment, a compaction between upload and delete).

Feedback (``core.feedback``) has its own reader here, ``read_feedback``, deduplicated by
``(request_id, feedback_id)`` (newest wins); ``find_task`` is the gateway's look-up of the task
of one request id.

A file that vanishes during a scan (compaction deleted it after uploading its merge) restarts the
scan on a fresh listing; ids already returned are skipped, so the caller sees each record once.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Final
from urllib.parse import urlparse

import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.fs as pafs

from core.errors import StoreError
from core.feedback import FEEDBACK_SCHEMA, dedupe
from core.keys import EXCHANGES, FEEDBACK
from core.record import SCHEMA
from core.s3 import S3Settings

PARTITIONING: Final = pa.schema(
    [("task", pa.string()), ("date", pa.string()), ("hour", pa.string())]
)
# What a scan can return: every exchange column, plus the two partition-only fields.
_DATASET_SCHEMA: Final = pa.schema(
    [*SCHEMA, pa.field("date", pa.string()), pa.field("hour", pa.string())]
)
FEEDBACK_PARTITIONING: Final = pa.schema([("task", pa.string()), ("date", pa.string())])
FEEDBACK_DATASET_SCHEMA: Final = pa.schema([*FEEDBACK_SCHEMA, pa.field("date", pa.string())])
_TS: Final = pa.timestamp("us", tz="UTC")
_RESTARTS: Final = 3  # scans restarted after a part vanished under the reader


def filesystem_for(
    store_uri: str, env: Mapping[str, str] | None = None
) -> tuple[pafs.FileSystem, str]:
    """``(filesystem, root path)`` of a ``file://DIR`` or ``s3://bucket/prefix`` store; S3 is
    configured from ``env`` (default: this process's environment) by ``core.s3``."""
    parsed = urlparse(store_uri)
    if parsed.scheme == "file":
        return pafs.LocalFileSystem(), os.path.abspath(parsed.netloc + parsed.path)
    if parsed.scheme == "s3" and parsed.netloc:
        root = f"{parsed.netloc}/{parsed.path.strip('/')}".rstrip("/")
        return pafs.S3FileSystem(**S3Settings.from_env(env).arrow_options()), root
    raise StoreError(f"store must be file://DIR or s3://bucket/prefix, got {store_uri!r}")


def iter_exchanges(
    store_uri: str,
    *,
    task: str | Sequence[str] | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    columns: Sequence[str] | None = None,
    batch_rows: int = 65_536,
) -> Iterator[pa.RecordBatch]:
    """Exchanges of ``task`` with ``since <= ts < until``, as batches of at most ``batch_rows``.

    Each ``request_id`` appears once in the whole stream (the first copy read wins). ``columns``
    picks exchange columns (and ``date``/``hour`` if asked for); default: every exchange column.
    Datetimes must be timezone-aware. A store with no exchanges yet yields nothing. Arguments
    are checked at the call; reading starts with the first batch asked for.
    """
    wanted = _check_columns(columns)
    row_filter = _filter(task, since, until)
    fs, root = filesystem_for(store_uri)
    return _scan(fs, root, store_uri, wanted, row_filter, batch_rows)


def _scan(
    fs: pafs.FileSystem,
    root: str,
    store_uri: str,
    wanted: list[str],
    row_filter: ds.Expression | None,
    batch_rows: int,
) -> Iterator[pa.RecordBatch]:
    """The scan behind ``iter_exchanges``; restarts on a fresh listing if a part vanished."""
    read = wanted if "request_id" in wanted else [*wanted, "request_id"]
    seen: set[str] = set()
    for attempt in range(_RESTARTS + 1):
        try:
            dataset = open_dataset(fs, f"{root}/{EXCHANGES}", store_uri)
            if dataset is None:
                return
            batches = dataset.to_batches(columns=read, filter=row_filter, batch_size=batch_rows)
            for batch in batches:
                fresh = drop_seen(batch, seen)
                if fresh.num_rows:
                    yield fresh.select(wanted)
            return
        except (OSError, pa.ArrowInvalid) as exc:  # unreachable, vanished, or not Parquet
            if isinstance(exc, OSError) and vanished(exc) and attempt < _RESTARTS:
                continue
            raise StoreError(f"{store_uri}: cannot read exchanges: {exc}") from exc


def read_exchanges(
    store_uri: str,
    *,
    task: str | Sequence[str] | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    columns: Sequence[str] | None = None,
    batch_rows: int = 65_536,
) -> pa.Table:
    """All of ``iter_exchanges`` as one table; an empty table of the right schema if none."""
    schema = pa.schema([_DATASET_SCHEMA.field(name) for name in _check_columns(columns)])
    batches = iter_exchanges(
        store_uri, task=task, since=since, until=until, columns=columns, batch_rows=batch_rows
    )
    return pa.Table.from_batches(list(batches), schema=schema)


def count_exchanges(
    store_uri: str,
    *,
    task: str | Sequence[str] | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
) -> int:
    """How many distinct exchanges match; reads only the ``request_id`` column."""
    batches = iter_exchanges(store_uri, task=task, since=since, until=until, columns=["request_id"])
    return sum(batch.num_rows for batch in batches)


def find_task(store_uri: str, request_id: str, *, since: datetime, until: datetime) -> str | None:
    """The task of the exchange ``request_id`` stamped ``since <= ts < until``; None if the
    store holds none. Reads only the partitions of that window and the ``request_id`` and
    ``task`` columns (ids sort by time, so row-group statistics skip most of those). Blocking."""
    row_filter = _filter(None, since, until)
    assert row_filter is not None
    row_filter = row_filter & (ds.field("request_id") == pa.scalar(request_id, pa.string()))
    fs, root = filesystem_for(store_uri)
    for batch in _scan(fs, root, store_uri, ["request_id", "task"], row_filter, 1024):
        if batch.num_rows:
            return str(batch.column("task")[0].as_py())
    return None


def read_feedback(
    store_uri: str,
    *,
    task: str | Sequence[str] | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
) -> pa.Table:
    """Feedback on ``task`` (e.g. ``[task, core.feedback.UNRESOLVED]``) that arrived with
    ``since <= ts < until``: one row per ``(request_id, feedback_id)``, the newest, newest
    first (``core.feedback.dedupe``). Feedback is small next to exchanges: read whole. Blocking."""
    terms = []
    if task is not None:
        tasks = [task] if isinstance(task, str) else list(task)
        terms.append(ds.field("task").isin(pa.array(tasks, type=pa.string())))
    if since is not None:
        terms.append(ds.field("ts") >= pa.scalar(since, type=_TS))
    if until is not None:
        terms.append(ds.field("ts") < pa.scalar(until, type=_TS))
    row_filter = None
    for term in terms:
        row_filter = term if row_filter is None else row_filter & term
    fs, root = filesystem_for(store_uri)
    empty = FEEDBACK_SCHEMA.empty_table()
    for attempt in range(_RESTARTS + 1):
        try:
            dataset = open_dataset(
                fs, f"{root}/{FEEDBACK}", store_uri, FEEDBACK_DATASET_SCHEMA,
                FEEDBACK_PARTITIONING,
            )  # fmt: skip
            if dataset is None:
                return empty
            table = dataset.to_table(columns=list(FEEDBACK_SCHEMA.names), filter=row_filter)
            return dedupe(table.cast(FEEDBACK_SCHEMA))
        except (OSError, pa.ArrowInvalid) as exc:
            if isinstance(exc, OSError) and vanished(exc) and attempt < _RESTARTS:
                continue
            raise StoreError(f"{store_uri}: cannot read feedback: {exc}") from exc
    return empty  # unreachable: the last attempt returns or raises


def _check_columns(columns: Sequence[str] | None) -> list[str]:
    if columns is None:
        return list(SCHEMA.names)
    unknown = [name for name in columns if name not in _DATASET_SCHEMA.names]
    if unknown:
        raise ValueError(f"unknown exchange columns {unknown}; known: {_DATASET_SCHEMA.names}")
    if len(set(columns)) != len(columns):
        raise ValueError(f"columns repeat a name: {list(columns)}")
    return list(columns)


def open_dataset(
    fs: pafs.FileSystem,
    path: str,
    store_uri: str,
    schema: pa.Schema = _DATASET_SCHEMA,
    partitioning: pa.Schema = PARTITIONING,
) -> ds.Dataset | None:
    """The exchanges (or feedback) dataset, or None when the store has none yet (but exists)."""
    if not _exists(fs, path):
        bucket = path.split("/", 1)[0]
        if isinstance(fs, pafs.S3FileSystem) and not _exists(fs, bucket):
            raise StoreError(f"{store_uri}: no bucket {bucket!r}")
        return None
    return ds.dataset(
        path,
        filesystem=fs,
        format="parquet",
        schema=schema,
        partitioning=ds.HivePartitioning(partitioning, segment_encoding="none"),  # keys are raw
        ignore_prefixes=[".", "_"],  # the local store's ".tmp-" files, hidden files
    )


def vanished(exc: OSError) -> bool:
    """Whether ``exc`` says a listed file is gone; pyarrow's S3 reports it only in the text."""
    text = str(exc)
    return isinstance(exc, FileNotFoundError) or "NO_SUCH_KEY" in text or "NOT_FOUND" in text


def _exists(fs: pafs.FileSystem, path: str) -> bool:
    return bool(fs.get_file_info(path).type != pafs.FileType.NotFound)


def _filter(
    task: str | Sequence[str] | None, since: datetime | None, until: datetime | None
) -> ds.Expression | None:
    """Task and time as one expression: partition fields prune files, ``ts`` trims rows."""
    terms: list[ds.Expression] = []
    if task is not None:
        tasks = [task] if isinstance(task, str) else list(task)
        terms.append(ds.field("task").isin(pa.array(tasks, type=pa.string())))
    if since is not None:
        terms.append(_hours_from(*_hour_of(since, "since")))
        terms.append(ds.field("ts") >= pa.scalar(since, type=_TS))
    if until is not None:
        terms.append(_hours_to(*_hour_of(until - timedelta(microseconds=1), "until")))
        terms.append(ds.field("ts") < pa.scalar(until, type=_TS))
    if not terms:
        return None
    expression = terms[0]
    for term in terms[1:]:
        expression = expression & term
    return expression


def _hours_from(date: str, hour: str) -> ds.Expression:
    """Partitions from ``date hour`` on (zero-padded strings sort like the times they name)."""
    return (ds.field("date") > date) | ((ds.field("date") == date) & (ds.field("hour") >= hour))


def _hours_to(date: str, hour: str) -> ds.Expression:
    """Partitions up to and including ``date hour``."""
    return (ds.field("date") < date) | ((ds.field("date") == date) & (ds.field("hour") <= hour))


def _hour_of(moment: datetime, name: str) -> tuple[str, str]:
    """``(date, hour)`` of the partition holding ``moment``."""
    if moment.tzinfo is None:
        raise ValueError(f"{name} must be timezone-aware, got {moment.isoformat()}")
    utc = moment.astimezone(UTC)
    return utc.strftime("%Y-%m-%d"), utc.strftime("%H")


def drop_seen(batch: pa.RecordBatch, seen: set[str]) -> pa.RecordBatch:
    """``batch`` without the rows whose ``request_id`` is in ``seen`` or repeats one earlier in
    the batch; adds the ids it keeps to ``seen``."""
    keep = []
    for request_id in batch.column("request_id").to_pylist():
        keep.append(request_id not in seen)
        seen.add(request_id)
    return batch if all(keep) else batch.filter(pa.array(keep, type=pa.bool_()))
