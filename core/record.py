"""The exchange record: the data contract between gateway, sidecar and trainer.

One record per request the gateway answered (and one per shadow call). This module owns the
Arrow schema and its version; everything that reads or writes records imports it from here.

In the spool a record is a JSON object whose keys are the schema's column names and whose
``ts`` is an integer count of microseconds since the Unix epoch (UTC).

Versions: 1 is the contract's required columns; 2 adds ``detail`` (JSON text, null in teacher
mode): why this backend answered (``why``), the output checks a student answer failed
(``checks``) and, in shadow records, its agreement with the teacher's answer (``agreement``).
Readers of version 1 files see ``detail`` as null.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, Final

import pyarrow as pa

SCHEMA_VERSION: Final = 2

ENDPOINTS: Final = ("chat.completions", "completions", "embeddings")
BACKENDS: Final = ("teacher", "student")
ROUTES: Final = ("teacher", "shadow", "canary", "hybrid", "student", "fallback")

SCHEMA: Final = pa.schema(
    [
        pa.field("request_id", pa.string(), nullable=False),
        pa.field("schema_version", pa.int16(), nullable=False),
        pa.field("ts", pa.timestamp("us", tz="UTC"), nullable=False),
        pa.field("task", pa.string(), nullable=False),
        pa.field("endpoint", pa.string(), nullable=False),
        pa.field("backend", pa.string(), nullable=False),
        pa.field("adapter", pa.string()),
        pa.field("route", pa.string(), nullable=False),
        pa.field("shadow_of", pa.string()),
        pa.field("stream", pa.bool_(), nullable=False),
        pa.field("complete", pa.bool_(), nullable=False),
        pa.field("status", pa.int32(), nullable=False),
        pa.field("error", pa.string()),
        pa.field("request", pa.string(), nullable=False),
        pa.field("response", pa.string()),
        pa.field("prompt_tokens", pa.int64()),
        pa.field("completion_tokens", pa.int64()),
        pa.field("latency_ms", pa.float64(), nullable=False),
        pa.field("ttft_ms", pa.float64()),
        pa.field("client", pa.string()),
        pa.field("user", pa.string()),
        pa.field("detail", pa.string()),
    ],
    metadata={"protege.schema_version": str(SCHEMA_VERSION)},
)

COLUMNS: Final = tuple(SCHEMA.names)


def missing_columns(record: Mapping[str, Any]) -> list[str]:
    """Columns the schema requires (non-nullable) that the record lacks or sets to null."""
    return [f.name for f in SCHEMA if not f.nullable and record.get(f.name) is None]


def records_to_table(records: Iterable[Mapping[str, Any]]) -> pa.Table:
    """Records (spool JSON objects) as an Arrow table of exactly ``SCHEMA``.

    Unknown keys are ignored, so a newer writer's extra columns never break an older reader.
    """
    rows = list(records)
    columns = [
        pa.array([row.get(name) for row in rows], type=SCHEMA.field(name).type) for name in COLUMNS
    ]
    return pa.Table.from_arrays(columns, schema=SCHEMA)
