"""Reading exchanges back from a store (local directory and moto S3): filters, dedup, streaming."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import datetime
from pathlib import Path

import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest

import core.read
from core.errors import StoreError
from core.keys import parse_part_key
from core.read import count_exchanges, iter_exchanges, read_exchanges
from core.record import SCHEMA
from core.store import Store, open_store
from tests.stored import at, put_part, record, s3_server, store_uri

__all__ = ["s3_server", "store_uri"]  # the shared store fixtures, used by this module


@pytest.fixture
async def store(store_uri: str) -> AsyncIterator[Store]:
    async with open_store(store_uri) as opened:
        yield opened


@pytest.fixture
async def hours(store: Store, tmp_path: Path) -> Store:
    """Task ``a`` on both sides of 10:00 and 11:00, and task ``b`` at 10:15."""
    await put_part(store, "s1", [record("a-0959", at("2024-05-01 09:59:59.999999"), "a")], tmp_path)
    a10 = [
        record("a-1000", at("2024-05-01 10:00"), "a"),
        record("a-1030", at("2024-05-01 10:30"), "a"),
    ]
    await put_part(store, "s1", a10, tmp_path)
    await put_part(store, "s2", [record("a-1100", at("2024-05-01 11:00"), "a")], tmp_path)
    await put_part(store, "s1", [record("b-1015", at("2024-05-01 10:15"), "b")], tmp_path)
    return store


def ids(table: pa.Table) -> list[str]:
    return sorted(table.column("request_id").to_pylist())


@pytest.mark.parametrize(
    ("task", "since", "until", "expected"),
    [
        (None, None, None, ["a-0959", "a-1000", "a-1030", "a-1100", "b-1015"]),
        ("a", None, None, ["a-0959", "a-1000", "a-1030", "a-1100"]),
        (["b", "zzz"], None, None, ["b-1015"]),
        ([], None, None, []),
        ("a", "2024-05-01 10:00", "2024-05-01 11:00", ["a-1000", "a-1030"]),
        (None, "2024-05-01 09:30", "2024-05-01 10:00", ["a-0959"]),
        (None, "2024-05-01 10:00:00.000001", None, ["a-1030", "a-1100", "b-1015"]),
        (None, None, "2024-05-01 10:15", ["a-0959", "a-1000"]),
        ("b", "2024-05-01 10:20", None, []),
    ],
)
async def test_filters_by_task_and_time(
    hours: Store,
    task: str | list[str] | None,
    since: str | None,
    until: str | None,
    expected: list[str],
) -> None:
    """Only records of the tasks asked for with ``since <= ts < until`` come back, exactly at
    hour boundaries too."""
    start, end = (at(since) if since else None), (at(until) if until else None)
    assert ids(read_exchanges(hours.uri, task=task, since=start, until=end)) == expected
    assert count_exchanges(hours.uri, task=task, since=start, until=end) == len(expected)


async def test_same_request_id_in_two_parts_reads_once(store: Store, tmp_path: Path) -> None:
    """A record present in two parts (and twice in one part) comes back once, first copy kept."""
    first = record("dup", at("2024-05-01 10:05"))
    second = {**record("dup", at("2024-05-01 10:05")), "status": 500}
    await put_part(store, "s1", [first, record("x", at("2024-05-01 10:06"))], tmp_path)
    await put_part(store, "s2", [second, second, record("y", at("2024-05-01 10:07"))], tmp_path)
    table = read_exchanges(store.uri)
    assert ids(table) == ["dup", "x", "y"]
    assert table.filter(pa.compute.equal(table["request_id"], "dup"))["status"].to_pylist() == [200]
    assert count_exchanges(store.uri) == 3


async def test_task_names_are_taken_verbatim(store: Store, tmp_path: Path) -> None:
    """A task name that looks percent-encoded is neither decoded nor lost by the task filter."""
    await put_part(store, "s1", [record("r1", at("2024-05-01 10:00"), "caf%C3%A9 x")], tmp_path)
    table = read_exchanges(store.uri, task="caf%C3%A9 x", columns=["task", "request_id"])
    assert table.to_pylist() == [{"task": "caf%C3%A9 x", "request_id": "r1"}]


async def test_columns_are_projected(hours: Store) -> None:
    """Only the columns asked for come back, with the schema's types; request_id is not added."""
    table = read_exchanges(hours.uri, task="a", columns=["ts", "task"])
    assert table.schema.names == ["ts", "task"]
    assert table.schema.field("ts").type == pa.timestamp("us", tz="UTC")
    assert table.num_rows == 4


async def test_default_columns_are_the_exchange_schema(hours: Store) -> None:
    """By default every exchange column comes back once, typed as the schema, no partition
    fields."""
    table = read_exchanges(hours.uri)
    assert table.schema.names == SCHEMA.names
    assert [f.type for f in table.schema] == [f.type for f in SCHEMA]
    assert table.num_rows == 5


async def test_partition_fields_on_request(hours: Store) -> None:
    """``date`` and ``hour`` come back as zero-padded strings when asked for."""
    table = read_exchanges(hours.uri, task="a", columns=["request_id", "date", "hour"])
    rows = sorted(table.to_pylist(), key=lambda r: r["request_id"])
    assert rows[0] == {"request_id": "a-0959", "date": "2024-05-01", "hour": "09"}


def test_unknown_column_is_refused(tmp_path: Path) -> None:
    """Asking for a column the schema lacks names it in a ValueError."""
    with pytest.raises(ValueError, match="nope"):
        iter_exchanges(f"file://{tmp_path}", columns=["request_id", "nope"])


def test_naive_datetime_is_refused(tmp_path: Path) -> None:
    """A time filter without a timezone is refused rather than guessed."""
    with pytest.raises(ValueError, match="timezone-aware"):
        iter_exchanges(f"file://{tmp_path}", since=datetime(2024, 5, 1))


async def test_empty_store_reads_empty(store: Store) -> None:
    """A store with no exchanges yet gives an empty table of the schema, not an error."""
    table = read_exchanges(store.uri)
    assert table.num_rows == 0 and table.schema.names == SCHEMA.names
    assert list(iter_exchanges(store.uri)) == []
    assert count_exchanges(store.uri) == 0
    assert read_exchanges(store.uri, columns=["ts"]).schema.names == ["ts"]


@pytest.mark.parametrize("store_uri", ["s3"], indirect=True)
def test_missing_bucket_is_an_error(store_uri: str) -> None:
    """A bucket that does not exist is a StoreError naming it, not an empty store."""
    with pytest.raises(StoreError, match="no-such-bucket"):
        read_exchanges("s3://no-such-bucket/protege")


async def test_unreadable_part_is_a_store_error(hours: Store) -> None:
    """A part that is not Parquet fails the read with a StoreError naming it."""
    await hours.put("exchanges/task=b/date=2024-05-01/hour=10/junk.parquet", b"not parquet")
    with pytest.raises(StoreError, match=r"junk\.parquet"):
        read_exchanges(hours.uri, task="b")


@pytest.mark.parametrize("store_uri", ["file"], indirect=True)
async def test_temp_files_are_ignored(hours: Store) -> None:
    """A half-written ``.tmp-`` file of the local store is not read."""
    [key, *_] = [o.key for o in await hours.list_objects("exchanges/task=b/")]
    partition, _ = parse_part_key(key) or (None, None)
    assert partition is not None
    await hours.put(f"{partition.prefix}.tmp-abc123", b"not parquet")
    assert ids(read_exchanges(hours.uri, task="b")) == ["b-1015"]


async def test_batches_stream_in_small_pieces(store: Store, tmp_path: Path) -> None:
    """With a small ``batch_rows`` the records arrive over several batches, none larger."""
    for part in range(3):
        rows = [record(f"r{part}-{i}", at(f"2024-05-01 10:{i:02d}")) for i in range(7)]
        await put_part(store, f"s{part}", rows, tmp_path)
    batches = list(iter_exchanges(store.uri, columns=["request_id"], batch_rows=3))
    assert len(batches) >= 7 and all(0 < b.num_rows <= 3 for b in batches)
    assert sum(b.num_rows for b in batches) == 21


async def test_parts_replaced_after_listing_lose_nothing(
    store: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Parts merged and deleted between the listing and the scan (a compaction running
    alongside) still yield every record exactly once: the scan restarts on a fresh listing."""
    for part in range(4):
        rows = [record(f"r{part}-{i}", at(f"2024-05-01 10:{part:02d}")) for i in range(3)]
        await put_part(store, f"s{part}", rows, tmp_path)
    listings: list[list[str]] = []

    def open_then_compact(fs: pafs.FileSystem, path: str, uri: str) -> ds.Dataset | None:
        dataset = open_dataset(fs, path, uri)
        assert dataset is not None
        listings.append(dataset.files)
        if len(listings) == 1:
            merged = pa.concat_tables(
                pq.ParquetFile(fs.open_input_file(f)).read() for f in dataset.files
            )
            pq.write_table(
                merged, dataset.files[0].rsplit("/", 1)[0] + "/merged.parquet", filesystem=fs
            )
            fs.delete_file(dataset.files[1])
        return dataset

    open_dataset = core.read.open_dataset
    monkeypatch.setattr(core.read, "open_dataset", open_then_compact)
    seen = [r for b in iter_exchanges(store.uri, batch_rows=2) for r in b["request_id"].to_pylist()]
    assert sorted(seen) == sorted(f"r{p}-{i}" for p in range(4) for i in range(3))
    assert len(listings) == 2 and len(listings[1]) == 4
