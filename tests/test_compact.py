"""Compaction of closed partitions (local directory and moto S3): merge, skip, crash, re-run."""

from __future__ import annotations

import io
from collections.abc import AsyncIterator, Sequence
from datetime import timedelta
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from structlog.testing import capture_logs

from core.errors import StoreError, StoreNotFound
from core.keys import Partition, parse_part_key
from core.read import count_exchanges, read_exchanges
from core.store import Store, StoredObject, open_store
from sidecar.compact import (
    CompactionReport,
    compact,
    is_closed,
    merged_name,
    plan_groups,
)
from tests.stored import at, put_part, record, s3_server, store_uri

__all__ = ["s3_server", "store_uri"]  # the shared store fixtures, used by this module

NOW = at("2024-05-01 14:30")


@pytest.fixture
async def store(store_uri: str) -> AsyncIterator[Store]:
    async with open_store(store_uri) as opened:
        yield opened


async def put_hour(store: Store, tmp: Path, hour: str, parts: int, rows: int = 3) -> list[str]:
    """``parts`` parts in ``hour`` of task ``t``; part ``n`` repeats one record of part ``n-1``."""
    keys = []
    for n in range(parts):
        first = max(0, n * rows - 1)
        records = [
            record(f"{hour}-{i:03d}", at(f"2024-05-01 {hour}:{i % 60:02d}"))
            for i in range(first, (n + 1) * rows)
        ]
        keys.append(await put_part(store, f"seg{n}", records, tmp))
    return keys


async def part_keys(store: Store) -> list[str]:
    return sorted(o.key for o in await store.list_objects("exchanges/"))


async def raw_ids(store: Store, key: str) -> list[str]:
    """The request ids stored in one part, repeats included."""
    table = pq.read_table(io.BytesIO(await store.get(key)), columns=["request_id"])
    return sorted(table["request_id"].to_pylist())


def request_ids(uri: str) -> list[str]:
    return sorted(read_exchanges(uri, columns=["request_id"])["request_id"].to_pylist())


async def test_merges_closed_partition_into_one_part(store: Store, tmp_path: Path) -> None:
    """A closed hour's parts become one ``compacted-`` part holding every distinct record."""
    await put_hour(store, tmp_path, "10", parts=4)
    before = request_ids(store.uri)
    report = await compact(store, tmp_path / "work", now=NOW)
    [key] = await part_keys(store)
    partition, name = parse_part_key(key) or (None, "")
    assert partition == Partition("t", "2024-05-01", "10") and name.startswith("compacted-")
    assert request_ids(store.uri) == before and count_exchanges(store.uri) == 12
    assert await raw_ids(store, key) == before
    assert report == CompactionReport(partitions=1, parts_merged=4, records_written=12)


async def test_leaves_open_partition_alone(store: Store, tmp_path: Path) -> None:
    """Parts of an hour that ended less than ``grace`` ago are not touched."""
    keys = await put_hour(store, tmp_path, "13", parts=3)
    report = await compact(store, tmp_path / "work", now=NOW, grace=timedelta(hours=1))
    assert report == CompactionReport()
    assert await part_keys(store) == sorted(keys)


async def test_second_run_changes_nothing(store: Store, tmp_path: Path) -> None:
    """Compacting an already compacted store is a no-op."""
    await put_hour(store, tmp_path, "10", parts=3)
    await put_hour(store, tmp_path, "11", parts=2)
    first = await compact(store, tmp_path / "work", now=NOW)
    after_first = await part_keys(store)
    assert first.partitions == 2 and len(after_first) == 2
    assert await compact(store, tmp_path / "work", now=NOW) == CompactionReport()
    assert await part_keys(store) == after_first


async def test_single_part_is_left_alone(store: Store, tmp_path: Path) -> None:
    """A closed partition below ``min_parts`` keeps its part as it is."""
    keys = await put_hour(store, tmp_path, "10", parts=1)
    assert await compact(store, tmp_path / "work", now=NOW) == CompactionReport()
    assert await part_keys(store) == keys


class Faulty(Store):
    """A store that dies when asked to delete (the merged part is up, the inputs remain), or
    that lost some keys to another compactor after they were listed."""

    def __init__(
        self, inner: Store, *, crash_on_delete: bool = False, gone: Sequence[str] = ()
    ) -> None:
        self.inner, self.uri = inner, inner.uri
        self.crash_on_delete, self.gone = crash_on_delete, set(gone)

    async def put(self, key: str, data: bytes) -> None:
        await self.inner.put(key, data)

    async def put_file(self, key: str, path: Path) -> None:
        await self.inner.put_file(key, path)

    async def get(self, key: str) -> bytes:
        if key in self.gone:
            raise StoreNotFound(f"no object {key!r}")
        return await self.inner.get(key)

    async def get_file(self, key: str, path: Path) -> None:
        if key in self.gone:
            raise StoreNotFound(f"no object {key!r}")
        await self.inner.get_file(key, path)

    async def list_objects(self, prefix: str) -> list[StoredObject]:
        return await self.inner.list_objects(prefix)

    async def delete(self, keys: Sequence[str]) -> None:
        if self.crash_on_delete:
            raise StoreError("simulated crash before delete")
        await self.inner.delete(keys)

    async def get_tagged(self, key: str) -> tuple[bytes, str]:
        return await self.inner.get_tagged(key)

    async def put_if(self, key: str, data: bytes, tag: str | None) -> str:
        return await self.inner.put_if(key, data, tag)


async def test_crash_between_upload_and_delete_recovers(store: Store, tmp_path: Path) -> None:
    """After a crash between upload and delete, records are only duplicated (never lost), and
    the next run leaves exactly one part with every record once."""
    inputs = await put_hour(store, tmp_path, "10", parts=3)
    expected = request_ids(store.uri)
    with pytest.raises(StoreError, match="simulated"):
        await compact(Faulty(store, crash_on_delete=True), tmp_path / "work", now=NOW)
    keys = await part_keys(store)
    assert len(keys) == 4 and set(inputs) < set(keys)
    assert request_ids(store.uri) == expected
    await compact(store, tmp_path / "work", now=NOW)
    [key] = await part_keys(store)
    assert key not in keys
    assert await raw_ids(store, key) == expected


@pytest.mark.parametrize("store_uri", ["file"], indirect=True)
async def test_part_gone_after_listing_skips_its_group(store: Store, tmp_path: Path) -> None:
    """A part that vanished after the listing (another compactor won) skips its group, deleting
    nothing; other partitions still compact."""
    ten = await put_hour(store, tmp_path, "10", parts=2)
    await put_hour(store, tmp_path, "11", parts=2)
    report = await compact(Faulty(store, gone=ten[1:]), tmp_path / "work", now=NOW)
    assert report == CompactionReport(partitions=1, parts_merged=2, records_written=6)
    assert set(ten) < set(await part_keys(store))


@pytest.mark.parametrize("store_uri", ["file"], indirect=True)
async def test_large_inputs_merge_in_groups(store: Store, tmp_path: Path) -> None:
    """Inputs over ``max_bytes`` in total are merged in several groups, nothing lost."""
    await put_hour(store, tmp_path, "10", parts=6)
    sizes = [o.size for o in await store.list_objects("exchanges/")]
    report = await compact(store, tmp_path / "work", now=NOW, max_bytes=2 * max(sizes))
    assert report.parts_merged == 6 and len(await part_keys(store)) == 3
    assert count_exchanges(store.uri) == 18


@pytest.mark.parametrize("store_uri", ["file"], indirect=True)
async def test_unreadable_part_leaves_its_partition_alone(store: Store, tmp_path: Path) -> None:
    """A part that is not Parquet keeps its partition as it is, logged; others still compact."""
    bad = await put_hour(store, tmp_path, "10", parts=2)
    await store.put(bad[0].replace("seg0", "junk"), b"not parquet")
    await put_hour(store, tmp_path, "11", parts=2)
    with capture_logs() as logs:
        report = await compact(store, tmp_path / "work", now=NOW)
    assert report.partitions == 1 and report.parts_merged == 2
    assert len([k for k in await part_keys(store) if "hour=10" in k]) == 3
    assert [e["partition"] for e in logs if e["log_level"] == "warning"] == [
        "exchanges/task=t/date=2024-05-01/hour=10/"
    ]


@pytest.mark.parametrize("store_uri", ["file"], indirect=True)
async def test_workdir_is_left_empty(store: Store, tmp_path: Path) -> None:
    """Downloads and the merged file are removed once the partition is done."""
    await put_hour(store, tmp_path, "10", parts=3)
    await compact(store, tmp_path / "work", now=NOW)
    assert list((tmp_path / "work").iterdir()) == []


@pytest.mark.parametrize(
    ("hour", "now", "grace", "closed"),
    [
        ("10", "2024-05-01 12:00", timedelta(hours=1), True),
        ("10", "2024-05-01 11:59:59", timedelta(hours=1), False),
        ("10", "2024-05-01 11:00", timedelta(0), True),
        ("23", "2024-05-02 00:30", timedelta(minutes=30), True),
        ("23", "2024-05-02 00:29", timedelta(minutes=30), False),
    ],
)
def test_is_closed(hour: str, now: str, grace: timedelta, closed: bool) -> None:
    """A partition is closed once its hour ended at least ``grace`` ago."""
    assert is_closed(Partition("t", "2024-05-01", hour), at(now), grace) is closed


@pytest.mark.parametrize(
    ("sizes", "max_bytes", "groups"),
    [
        ([10, 10, 10], 100, [[0, 1, 2]]),
        ([10, 10, 10], 20, [[0, 1]]),
        ([10, 10, 10, 10], 20, [[0, 1], [2, 3]]),
        ([50, 10, 10], 20, [[1, 2]]),
        ([50, 60], 20, []),
    ],
)
def test_plan_groups(sizes: list[int], max_bytes: int, groups: list[list[int]]) -> None:
    """Parts are grouped in key order up to ``max_bytes``; a lone part forms no group."""
    parts = [StoredObject(f"k{i}", size) for i, size in enumerate(sizes)]
    planned = plan_groups(parts, max_bytes)
    assert [[int(p.key[1:]) for p in group] for group in planned] == groups


def test_merged_name_is_deterministic() -> None:
    """The merged part's name depends on the set of inputs only."""
    assert merged_name(["b", "a"]) == merged_name(["a", "b"]) != merged_name(["a"])
    assert merged_name(["a"]).startswith("compacted-")
