"""The exchange record contract: schema, ids, table conversion, and the encoder."""

from __future__ import annotations

import os
import random
import time

import orjson
import pyarrow as pa

from core.ids import new_id
from core.record import COLUMNS, SCHEMA, SCHEMA_VERSION, missing_columns, records_to_table
from core.redact import Redactor
from core.settings import RedactionConfig
from gateway.capture import Exchange, RecordEncoder, hash_id
from gateway.metrics import Metrics
from tests.fake_teacher import completion, stream_events

REQ = {"model": "m", "messages": [{"role": "user", "content": "mail me at a@b.io"}], "user": "u1"}


def encoder() -> tuple[RecordEncoder, Metrics]:
    metrics = Metrics()
    return RecordEncoder(Redactor.from_config(RedactionConfig()), metrics), metrics


def exchange(**kw: object) -> Exchange:
    base: dict[str, object] = {
        "request_id": new_id(),
        "ts_us": time.time_ns() // 1000,
        "task": "t",
        "endpoint": "chat.completions",
        "request": orjson.dumps(REQ),
        "stream": False,
        "status": 200,
        "complete": True,
        "response": orjson.dumps(completion(REQ, "/v1/chat/completions")),
    }
    base.update(kw)
    return Exchange(**base)  # type: ignore[arg-type]


def test_ids_sort_by_time_and_are_unique() -> None:
    """new_id is 26 chars, sorts by creation millisecond, and does not repeat."""
    ids = [new_id(now_ms=1_700_000_000_000 + i) for i in range(100)]
    assert ids == sorted(ids) and all(len(i) == 26 for i in ids)
    assert len({new_id() for _ in range(10_000)}) == 10_000


def test_ids_differ_in_a_forked_child_and_ignore_random_seed() -> None:
    """A forked child draws other random bits than its parent, and random.seed() (which a
    training run calls) does not make ids repeat."""
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: its ids to the parent, then out at once
        os.write(write, " ".join(new_id(0) for _ in range(3)).encode())
        os._exit(0)
    os.close(write)
    child = os.read(read, 4096).decode().split()
    os.close(read)
    os.waitpid(pid, 0)
    assert len(child) == 3
    assert not set(child) & {new_id(0) for _ in range(3)}
    random.seed(7)
    first = new_id(0)
    random.seed(7)
    assert new_id(0) != first


def test_encoded_record_fits_the_schema() -> None:
    """An encoded exchange has every schema column, converts to Arrow, and is redacted."""
    enc, metrics = encoder()
    record = orjson.loads(enc(exchange()))
    assert set(record) == set(COLUMNS) and not missing_columns(record)
    assert record["schema_version"] == SCHEMA_VERSION
    assert "a@b.io" not in record["request"] and "[EMAIL]" in record["request"]
    assert (record["prompt_tokens"], record["completion_tokens"]) == (11, 7)
    table = records_to_table([record])
    assert table.schema.equals(SCHEMA)
    assert table.column("ts").type == pa.timestamp("us", tz="UTC")
    sample = metrics.registry.get_sample_value(
        "protege_tokens_total", {"task": "t", "backend": "teacher", "kind": "completion"}
    )
    assert sample == 7


def test_stream_record_is_assembled() -> None:
    """A streamed exchange is recorded as the assembled completion."""
    enc, _ = encoder()
    raw = b"".join(stream_events({**REQ, "stream": True}, "/v1/chat/completions"))
    record = orjson.loads(enc(exchange(stream=True, response=raw)))
    assert record["complete"] is True
    assert orjson.loads(record["response"])["choices"][0]["message"]["content"].startswith("echo")


def test_stream_without_done_is_never_complete() -> None:
    """A stream missing [DONE] is recorded incomplete even if the relay thought otherwise."""
    enc, _ = encoder()
    raw = b"".join(stream_events(REQ, "/v1/chat/completions")[:-1])
    record = orjson.loads(enc(exchange(stream=True, response=raw, complete=True)))
    assert record["complete"] is False and "DONE" in record["error"]


def test_records_to_table_ignores_unknown_keys_and_keeps_nulls() -> None:
    """Extra keys from a newer writer are ignored; nullable columns stay null."""
    enc, _ = encoder()
    record = orjson.loads(enc(exchange()))
    record["future_column"] = 1
    row = records_to_table([record]).to_pylist()[0]
    assert row["adapter"] is None and "future_column" not in row


def test_hash_id_is_stable_salted_and_opaque() -> None:
    """hash_id gives the same id for the same input and salt, and reveals neither."""
    assert hash_id("key", b"s1") == hash_id("key", b"s1") != hash_id("key", b"s2")
    assert "key" not in hash_id("key", b"s1") and len(hash_id("key", b"s1")) == 16
