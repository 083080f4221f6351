"""The store: one behaviour on a local directory and on a real S3 server alike."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from core.errors import StoreConflict, StoreError, StoreNotFound
from core.store import FileStore, Store, open_store
from tests.s3_server import S3Server, aws_env


@pytest.fixture(scope="module")
def s3() -> Iterator[S3Server]:
    server = S3Server().start()
    server.client().create_bucket(Bucket="store-tests")
    with aws_env(server):
        yield server
    server.stop()


@pytest.fixture(params=["file", "s3"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Store]:
    if request.param == "s3":
        request.getfixturevalue("s3")
        uri = f"s3://store-tests/{tmp_path.name}"
    else:
        uri = f"file://{tmp_path / 'store'}"
    async with open_store(uri) as opened:
        yield opened


async def test_put_get_list_delete(store: Store, tmp_path: Path) -> None:
    """Objects put (bytes or file) read back, list by prefix with sizes, and delete."""
    await store.put("a/one.bin", b"1" * 10)
    src = tmp_path / "src.bin"
    src.write_bytes(b"2" * 2000)
    await store.put_file("a/two.bin", src)
    await store.put("b/three.bin", b"3")
    assert [(o.key, o.size) for o in await store.list_objects("a/")] == [
        ("a/one.bin", 10),
        ("a/two.bin", 2000),
    ]
    assert await store.get("a/one.bin") == b"1" * 10
    await store.get_file("a/two.bin", tmp_path / "copy.bin")
    assert (tmp_path / "copy.bin").read_bytes() == src.read_bytes()
    await store.delete(["a/one.bin", "a/two.bin"])
    assert [o.key for o in await store.list_objects("")] == ["b/three.bin"]


async def test_put_overwrites(store: Store) -> None:
    """Putting a key again replaces it: a re-shipped part overwrites, never duplicates."""
    await store.put("k", b"first")
    await store.put("k", b"second")
    assert await store.get("k") == b"second"
    assert len(await store.list_objects("k")) == 1


async def test_missing_object_is_not_found(store: Store, tmp_path: Path) -> None:
    """Reading a key that does not exist raises StoreNotFound."""
    with pytest.raises(StoreNotFound):
        await store.get("nope")
    with pytest.raises(StoreNotFound):
        await store.get_file("nope", tmp_path / "x")


async def test_file_store_refuses_keys_outside_its_root(tmp_path: Path) -> None:
    """A key cannot climb out of a local store's directory."""
    with pytest.raises(StoreError, match="escapes"):
        await FileStore(tmp_path / "root").put("../outside", b"x")


def test_unknown_scheme_is_refused() -> None:
    """Only file:// and s3:// stores exist."""
    with pytest.raises(StoreError, match="file://DIR or s3://"):
        open_store("gs://bucket/x")


async def test_conditional_writes_let_one_writer_win(store: Store) -> None:
    """``put_if`` creates only what does not exist and replaces only the version read: of two
    writers that read the same version, the second is refused and nothing of it is written."""
    tag = await store.put_if("doc.json", b"v1", None)
    with pytest.raises(StoreConflict):
        await store.put_if("doc.json", b"v1 again", None)
    data, read_tag = await store.get_tagged("doc.json")
    assert (data, read_tag) == (b"v1", tag)
    second = await store.put_if("doc.json", b"v2 by A", read_tag)
    with pytest.raises(StoreConflict):
        await store.put_if("doc.json", b"v2 by B", read_tag)
    assert await store.get_tagged("doc.json") == (b"v2 by A", second)
    with pytest.raises(StoreNotFound):
        await store.get_tagged("missing.json")
    assert [o.key for o in await store.list_objects("")] == ["doc.json"]


async def test_conditional_writes_race_across_tasks(store: Store) -> None:
    """Twenty writers racing to create one object: exactly one succeeds."""
    import asyncio

    async def attempt(i: int) -> bool:
        try:
            await store.put_if("race.json", str(i).encode(), None)
        except StoreConflict:
            return False
        return True

    won = await asyncio.gather(*(attempt(i) for i in range(20)))
    assert sum(won) == 1
