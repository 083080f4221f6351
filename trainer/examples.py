"""The training example: what a dataset snapshot holds, and where snapshots live in the store.

A snapshot is built from the exchanges of one task (see ``trainer.dataset``)::

    <store>/datasets/<task>/<snapshot>/train.parquet
    <store>/datasets/<task>/<snapshot>/test-indist.parquet
    <store>/datasets/<task>/<snapshot>/test-balanced.parquet
    <store>/datasets/<task>/<snapshot>/card.json      counts, balance, filters applied
    <store>/datasets/<task>/<snapshot>/card.md        the same for a person
    <store>/datasets/<task>/tests/<split>.parquet     the frozen test sets (made once)
    <store>/datasets/<task>/tests/manifest.json       their users, never trained on

Every split file has ``EXAMPLE_SCHEMA``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Final

import orjson
import pyarrow as pa

from core.ids import new_id

SPLITS: Final = ("train", "test-indist", "test-balanced")
TEST_SPLITS: Final = ("test-indist", "test-balanced")

EXAMPLE_SCHEMA: Final = pa.schema(
    [
        pa.field("request_id", pa.string(), nullable=False),
        pa.field("ts", pa.timestamp("us", tz="UTC"), nullable=False),
        # Who asked: hashed user, else hashed client key, else the request id. Splits never
        # put one group in two sets.
        pa.field("group", pa.string(), nullable=False),
        # JSON array of the chat messages the teacher was sent (redacted), system turn included.
        pa.field("messages", pa.string(), nullable=False),
        # The answer to learn: the teacher's assistant text, or a human correction.
        pa.field("completion", pa.string(), nullable=False),
        # The class read from the completion, for classification tasks.
        pa.field("label", pa.string()),
        # "teacher" or "correction".
        pa.field("source", pa.string(), nullable=False),
        # JSON object of request parameters that matter when judging an answer
        # (response_format, tools, tool_choice), or null.
        pa.field("params", pa.string()),
        # JSON object of the sampling settings the request set (temperature, top_p), or null
        # when it set none (the provider's defaults). Absent from snapshots made before it.
        pa.field("decoding", pa.string()),
    ]
)


@dataclass(frozen=True)
class Example:
    request_id: str
    messages: list[dict[str, Any]]
    completion: str
    group: str
    label: str | None = None
    source: str = "teacher"
    params: dict[str, Any] = field(default_factory=dict)
    decoding: dict[str, float] = field(default_factory=dict)
    ts: datetime = field(default_factory=lambda: datetime.now(UTC))


def examples_from_table(table: pa.Table) -> list[Example]:
    """The rows of a split file as ``Example``s."""
    return [
        Example(
            request_id=row["request_id"],
            messages=orjson.loads(row["messages"]),
            completion=row["completion"],
            group=row["group"],
            label=row["label"],
            source=row["source"],
            params=orjson.loads(row["params"]) if row["params"] else {},
            decoding=orjson.loads(row["decoding"]) if row.get("decoding") else {},
            ts=row["ts"],
        )
        for row in table.to_pylist()
    ]


def examples_to_table(examples: list[Example]) -> pa.Table:
    """``Example``s as a table of ``EXAMPLE_SCHEMA``."""
    rows = [
        {
            "request_id": e.request_id,
            "ts": e.ts,
            "group": e.group,
            "messages": orjson.dumps(e.messages).decode(),
            "completion": e.completion,
            "label": e.label,
            "source": e.source,
            "params": orjson.dumps(e.params).decode() if e.params else None,
            "decoding": orjson.dumps(e.decoding).decode() if e.decoding else None,
        }
        for e in examples
    ]
    return pa.Table.from_pylist(rows, schema=EXAMPLE_SCHEMA)


def snapshot_id(now: datetime | None = None) -> str:
    """A new snapshot name: sortable by time, unique, never a prefix of another."""
    moment = now or datetime.now(UTC)
    return f"{moment:%Y%m%dT%H%M%SZ}-{new_id()[-8:].lower()}"
