"""The feedback record: what an application says about an answer it got, as stored.

One record per ``POST /v1/feedback`` the gateway accepted. This module owns its Arrow schema
and version (beside the exchange record's, ``core.record``); the gateway writes it, the sidecar
ships it, the trainer reads it (``core.read.read_feedback``).

In the spool a record is a JSON object whose keys are the schema's column names and whose
``ts`` is an integer count of microseconds since the Unix epoch (UTC): when the feedback
arrived. Feedback has its own spool, ``<spool dir>/feedback/`` (same segment format), and its
own table in the store, ``feedback/task=<task>/date=<YYYY-MM-DD>/<segment-id>.parquet``
(``core.keys``).

Columns: ``feedback_id`` (the client's own id, so its retries are idempotent, else a ULID the
gateway gave), ``request_id`` (the exchange judged), ``task`` (``UNRESOLVED`` when the gateway
could not tell yet: readers join such rows to exchanges by ``request_id``), ``score``,
``label``, ``correction`` (text; a JSON correction as compact JSON, ``correction_json`` true),
``comment``, ``client`` (hashed API key, as in exchanges). ``correction`` and ``comment`` are
redacted like every logged text.

A record may be stored twice (at-least-once shipping, a client's retry with its feedback id):
readers keep one row per ``(request_id, feedback_id)``, the newest (``dedupe``). To change a
verdict, an application sends it again with the same ``feedback_id``.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, Final

import pyarrow as pa
import pyarrow.compute as pc

FEEDBACK_SCHEMA_VERSION: Final = 1
# The task of feedback whose exchange the gateway did not know yet (another replica's request,
# not shipped). Never a task name: those start with a letter or digit (``core.keys.NAME``).
UNRESOLVED: Final = "_unresolved"
# The feedback spool: a sub-directory of the configured spool directory.
SPOOL_SUBDIR: Final = "feedback"
# What a feedback says, for metrics: a score, a label, a correction (one record may say several).
KINDS: Final = ("score", "label", "correction")

FEEDBACK_SCHEMA: Final = pa.schema(
    [
        pa.field("feedback_id", pa.string(), nullable=False),
        pa.field("request_id", pa.string(), nullable=False),
        pa.field("schema_version", pa.int16(), nullable=False),
        pa.field("ts", pa.timestamp("us", tz="UTC"), nullable=False),
        pa.field("task", pa.string(), nullable=False),
        pa.field("score", pa.float64()),
        pa.field("label", pa.string()),
        pa.field("correction", pa.string()),
        pa.field("correction_json", pa.bool_()),
        pa.field("comment", pa.string()),
        pa.field("client", pa.string()),
    ],
    metadata={"protege.schema_version": str(FEEDBACK_SCHEMA_VERSION)},
)

FEEDBACK_COLUMNS: Final = tuple(FEEDBACK_SCHEMA.names)


def feedback_spool(spool_dir: str | os.PathLike[str]) -> Path:
    """The feedback spool inside the spool directory ``spool_dir``."""
    return Path(spool_dir) / SPOOL_SUBDIR


def feedback_to_table(records: Iterable[Mapping[str, Any]]) -> pa.Table:
    """Feedback records (spool JSON objects) as an Arrow table of exactly ``FEEDBACK_SCHEMA``;
    unknown keys are ignored."""
    rows = list(records)
    columns = [
        pa.array([row.get(name) for row in rows], type=FEEDBACK_SCHEMA.field(name).type)
        for name in FEEDBACK_COLUMNS
    ]
    return pa.Table.from_arrays(columns, schema=FEEDBACK_SCHEMA)


def dedupe(table: pa.Table) -> pa.Table:
    """One row per ``(request_id, feedback_id)``: the newest by ``ts`` (the later-listed on a
    tie, as a re-shipped copy is the same record). Rows come out newest first."""
    if table.num_rows == 0:
        return table
    order = pc.sort_indices(
        table.append_column("_row", pa.array(range(table.num_rows), type=pa.int64())),
        sort_keys=[("ts", "descending"), ("_row", "descending")],
    )
    ordered = table.take(order)
    seen: set[tuple[str, str]] = set()
    keep = []
    pairs = zip(
        ordered.column("request_id").to_pylist(),
        ordered.column("feedback_id").to_pylist(),
        strict=True,
    )
    for pair in pairs:
        keep.append(pair not in seen)
        seen.add(pair)
    return ordered.filter(pa.array(keep, type=pa.bool_()))
