"""Corrections made in the console: feedback rows the trainer reads like the applications'.

A correction is one row of ``core.feedback.FEEDBACK_SCHEMA`` (a new ``feedback_id``, ``ts`` now,
``client`` "console"), written as its own Parquet part where the sidecar ships the gateway's
feedback (``core.keys.feedback_part_key``), through the store's atomic ``put``. The trainer's
next dataset build takes it as the request's gold answer (``trainer.feedback``): the newest
correction of a request wins. Blocking: run it on a worker thread.
"""

from __future__ import annotations

import asyncio
import re
import time

import orjson
import pyarrow as pa
import pyarrow.parquet as pq

from core.feedback import FEEDBACK_SCHEMA, FEEDBACK_SCHEMA_VERSION, feedback_to_table
from core.ids import new_id
from core.keys import NAME, feedback_part_key, feedback_partition_of
from core.s3 import S3Settings
from core.store import open_store

CLIENT = "console"
_COMPRESSION = "zstd"


def record_correction(
    store_uri: str,
    task: str,
    request_id: str,
    correction: str,
    comment: str | None,
    *,
    json_answer: bool,
    s3: S3Settings | None = None,
) -> str:
    """Store ``correction`` of ``task``'s exchange ``request_id``; returns the feedback id.

    ``json_answer``: the task answers in JSON, so the correction must parse as JSON; it is
    stored as compact JSON (``correction_json``). Raises ``ValueError`` for an empty correction,
    one that is not JSON when JSON is wanted, or a task that is no task name.
    """
    if not re.fullmatch(NAME, task):
        raise ValueError(f"task must be a task name, got {task!r}")
    if not request_id.strip():
        raise ValueError("request_id must not be empty")
    if not correction.strip():
        raise ValueError("the correction is empty")
    text = correction
    if json_answer:
        try:
            text = orjson.dumps(orjson.loads(correction)).decode()
        except orjson.JSONDecodeError as exc:
            message = f"the correction must be JSON (the task answers in JSON): {exc}"
            raise ValueError(message) from exc
    feedback_id, ts_us = new_id(), time.time_ns() // 1000
    row = {
        "feedback_id": feedback_id,
        "request_id": request_id,
        "schema_version": FEEDBACK_SCHEMA_VERSION,
        "ts": ts_us,
        "task": task,
        "correction": text,
        "correction_json": json_answer,
        "comment": (comment.strip() or None) if comment else None,
        "client": CLIENT,
    }
    key = feedback_part_key(feedback_partition_of(task, ts_us), feedback_id)
    asyncio.run(_put(store_uri, s3, key, _parquet(feedback_to_table([row]))))
    return feedback_id


def _parquet(table: pa.Table) -> bytes:
    sink = pa.BufferOutputStream()
    pq.write_table(table.cast(FEEDBACK_SCHEMA), sink, compression=_COMPRESSION)
    return bytes(sink.getvalue())


async def _put(store_uri: str, s3: S3Settings | None, key: str, data: bytes) -> None:
    async with open_store(store_uri, s3) as store:
        await store.put(key, data)
