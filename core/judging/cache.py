"""Judgements kept in the store, so a verdict is paid for once.

    judgements/<task>/<criterion>/<version>/<ulid>.parquet     append-only parts of verdicts
    judges/<task>/<criterion>/calibration.json                  the criterion's calibration

(these keys belong to judging and are defined here, beside ``core.keys``'s.) A part's columns:
``key`` (sha256 of the criterion version and what the judge saw), ``verdict`` (pass|fail),
``reason``, ``raw`` (the judge's answer as sent), ``judged_at`` (UTC, µs), ``model``,
``tokens`` (prompt + completion). Only verdicts are kept: an error or a skipped judgement is
asked again next time. Parts are never rewritten; a key found in several parts (two runs
judging the same answer at once) reads as any one of them — at temperature 0 they agree.

A run loads a criterion version's parts once, into a dict of key -> verdict (reasons too only
when asked: a calibration shows them, a big evaluation does not need them in memory).
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Final, Literal

import pyarrow as pa
import pyarrow.parquet as pq

from core.errors import StoreError
from core.ids import new_id
from core.store import Store

COMPRESSION: Final = "zstd"
SCHEMA: Final = pa.schema(
    [
        pa.field("key", pa.string(), nullable=False),
        pa.field("verdict", pa.string(), nullable=False),
        pa.field("reason", pa.string()),
        pa.field("raw", pa.string()),
        pa.field("judged_at", pa.timestamp("us", tz="UTC"), nullable=False),
        pa.field("model", pa.string()),
        pa.field("tokens", pa.int64()),
    ]
)


@dataclass(frozen=True)
class Verdict:
    """A judgement to store: what ``Judge`` learnt from one call."""

    key: str
    verdict: str
    reason: str
    raw: str
    model: str
    tokens: int
    judged_at: datetime


@dataclass(frozen=True)
class Cached:
    verdict: Literal["pass", "fail"]
    reason: str = ""


async def load(store: Store, prefix: str, *, reasons: bool = False) -> dict[str, Cached]:
    """Every verdict stored under ``prefix`` (one criterion version), by key."""
    out: dict[str, Cached] = {}
    columns = ["key", "verdict", "reason"] if reasons else ["key", "verdict"]
    for obj in await store.list_objects(prefix):
        if not obj.key.endswith(".parquet"):
            continue
        data = await store.get(obj.key)
        table = await asyncio.to_thread(_read, data, columns, f"{store.uri}: {obj.key}")
        keys, verdicts = table.column("key").to_pylist(), table.column("verdict").to_pylist()
        why = table.column("reason").to_pylist() if reasons else [""] * len(keys)
        for key, verdict, reason in zip(keys, verdicts, why, strict=True):
            if verdict == "pass" or verdict == "fail":  # anything else is not a verdict
                out[key] = Cached(verdict, reason or "")
    return out


def _read(data: bytes, columns: list[str], where: str) -> pa.Table:
    try:
        return pq.read_table(pa.BufferReader(data), columns=columns)
    except (pa.ArrowException, OSError) as exc:
        raise StoreError(f"{where} is not a readable judgement part: {exc}") from exc


async def write(store: Store, prefix: str, verdicts: Sequence[Verdict]) -> str | None:
    """``verdicts`` as one new part under ``prefix``; its key (None when there were none)."""
    if not verdicts:
        return None
    data = await asyncio.to_thread(encode, verdicts)
    key = f"{prefix}{new_id()}.parquet"
    await store.put(key, data)
    return key


def encode(verdicts: Sequence[Verdict]) -> bytes:
    """``verdicts`` as the bytes of a Parquet part (blocking: run it off the event loop)."""
    columns = {
        "key": [v.key for v in verdicts],
        "verdict": [v.verdict for v in verdicts],
        "reason": [v.reason for v in verdicts],
        "raw": [v.raw for v in verdicts],
        "judged_at": [v.judged_at.astimezone(UTC) for v in verdicts],
        "model": [v.model for v in verdicts],
        "tokens": [v.tokens for v in verdicts],
    }
    sink = pa.BufferOutputStream()
    pq.write_table(pa.table(columns, schema=SCHEMA), sink, compression=COMPRESSION)
    return bytes(sink.getvalue().to_pybytes())
