"""Exchanges placed in a store the way the shipper places them, and the stores to put them in."""

from __future__ import annotations

import uuid
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from core.errors import StoreError
from core.keys import part_key, partition_of
from core.record import SCHEMA_VERSION, records_to_table
from core.store import FileStore, Store, StoredObject
from sidecar.parts import parquet_writer
from tests.s3_server import S3Server

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def at(text: str) -> datetime:
    """A UTC moment from ``YYYY-MM-DD HH:MM[:SS[.ffffff]]``."""
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


def record(request_id: str, when: datetime, task: str = "t") -> dict[str, Any]:
    """A teacher exchange as the spool holds it (``ts`` in integer microseconds)."""
    return {
        "request_id": request_id,
        "schema_version": SCHEMA_VERSION,
        "ts": (when - EPOCH) // timedelta(microseconds=1),
        "task": task,
        "endpoint": "chat.completions",
        "backend": "teacher",
        "route": "teacher",
        "stream": False,
        "complete": True,
        "status": 200,
        "request": '{"messages": [{"role": "user", "content": "hi"}]}',
        "response": '{"choices": [{"message": {"content": "hello"}}]}',
        "latency_ms": 12.5,
    }


async def put_part(store: Store, name: str, records: Sequence[dict[str, Any]], tmp: Path) -> str:
    """Write ``records`` (all of one partition) as the part ``name``; returns its key."""
    first = records[0]
    key = part_key(partition_of(first["task"], first["ts"]), name)
    path = tmp / f"{uuid.uuid4().hex}.parquet"
    with parquet_writer(path) as writer:
        writer.write_table(records_to_table(records))
    await store.put_file(key, path)
    path.unlink()
    return key


@pytest.fixture(scope="module")
def s3_server() -> Iterator[S3Server]:
    server = S3Server().start()
    yield server
    server.stop()


@pytest.fixture(params=["file", "s3"])
def store_uri(
    request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> str:
    """An empty store: a local directory, or a fresh bucket on the moto S3 server."""
    if request.param == "file":
        return f"file://{tmp_path / 'store'}"
    server: S3Server = request.getfixturevalue("s3_server")
    for name, value in server.env().items():
        monkeypatch.setenv(name, value)
    bucket = f"store-{uuid.uuid4().hex[:12]}"
    server.client().create_bucket(Bucket=bucket)
    return f"s3://{bucket}/protege"


class FlakyStore(FileStore):
    """A file store whose every call fails while ``down`` (a store outage, at will)."""

    down = False

    def _check(self) -> None:
        if self.down:
            raise StoreError("store down")

    async def get(self, key: str) -> bytes:
        self._check()
        return await super().get(key)

    async def get_file(self, key: str, path: Path) -> None:
        self._check()
        await super().get_file(key, path)

    async def put(self, key: str, data: bytes) -> None:
        self._check()
        await super().put(key, data)

    async def put_file(self, key: str, path: Path) -> None:
        self._check()
        await super().put_file(key, path)

    async def get_tagged(self, key: str) -> tuple[bytes, str]:
        self._check()
        return await super().get_tagged(key)

    async def put_if(self, key: str, data: bytes, tag: str | None) -> str:
        self._check()
        return await super().put_if(key, data, tag)

    async def list_objects(self, prefix: str) -> list[StoredObject]:
        self._check()
        return await super().list_objects(prefix)

    async def delete(self, keys: Sequence[str]) -> None:
        self._check()
        await super().delete(keys)
