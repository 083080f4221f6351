"""The store: where Parquet parts and adapters live. ``file://DIR`` or ``s3://bucket/prefix``.

S3 goes through aiobotocore, configured by ``core.s3`` from the standard AWS settings (endpoint,
region, credentials, profile) exactly as the reader in ``core.read`` is, so any S3-compatible
store works. Local directories get the same
semantics: a ``put`` is atomic (write aside, fsync, rename), so a reader never sees half a part.
Every failure becomes a ``StoreError`` here and nowhere else.

Small shared documents (a lease, the autopilot's controls) are changed by compare-and-swap:
``get_tagged`` reads an object with its tag, ``put_if`` writes only if the object is still that
version (or, with ``tag=None``, does not exist yet) and raises ``StoreConflict`` otherwise.
On S3 these are conditional requests (``If-Match``, ``If-None-Match: *``); in a directory, a
lock file serialises writers across processes and the tag is the content's digest.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import hashlib
import os
import shutil
import tempfile
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Iterator, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any
from urllib.parse import urlparse

import aiohttp
from aiobotocore.session import get_session
from botocore.exceptions import BotoCoreError, ClientError

from core.errors import StoreConflict, StoreError, StoreNotFound
from core.s3 import S3Settings

_SINGLE_PUT_MAX = 64 * 1024 * 1024  # larger files go up in multipart
_PART_SIZE = 16 * 1024 * 1024


@dataclass(frozen=True)
class StoredObject:
    key: str  # relative to the store's root
    size: int


class Store(ABC):
    """A flat key space of immutable objects, keys relative to the store's root."""

    uri: str

    async def __aenter__(self) -> Store:
        await self.start()
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    async def start(self) -> None:  # noqa: B027 - optional hook
        """Open connections; a store is usable after this."""

    async def aclose(self) -> None:  # noqa: B027 - optional hook
        """Release connections."""

    @abstractmethod
    async def put(self, key: str, data: bytes) -> None: ...

    @abstractmethod
    async def put_file(self, key: str, path: Path) -> None: ...

    @abstractmethod
    async def get(self, key: str) -> bytes: ...

    @abstractmethod
    async def get_file(self, key: str, path: Path) -> None:
        """Download ``key`` to ``path`` chunk by chunk, never holding it whole in memory."""

    @abstractmethod
    async def list_objects(self, prefix: str) -> list[StoredObject]: ...

    @abstractmethod
    async def delete(self, keys: Sequence[str]) -> None: ...

    @abstractmethod
    async def get_tagged(self, key: str) -> tuple[bytes, str]:
        """The object and its version tag, for a later ``put_if``."""

    @abstractmethod
    async def put_if(self, key: str, data: bytes, tag: str | None) -> str:
        """Write ``data`` only if ``key`` is still at version ``tag`` (None: only if it does
        not exist); its new tag. ``StoreConflict`` when someone else wrote it first."""


def open_store(uri: str, s3: S3Settings | None = None) -> Store:
    """The store named by ``uri`` (not yet started); an S3 store uses ``s3``, by default the
    settings of this process's environment."""
    parsed = urlparse(uri)
    if parsed.scheme == "file":
        return FileStore(Path(parsed.netloc + parsed.path))
    if parsed.scheme == "s3" and parsed.netloc:
        return S3Store(parsed.netloc, parsed.path.strip("/"), s3 or S3Settings.from_env())
    raise StoreError(f"store must be file://DIR or s3://bucket/prefix, got {uri!r}")


class FileStore(Store):
    def __init__(self, root: Path) -> None:
        self.root = root
        self.uri = f"file://{root}"

    def _path(self, key: str) -> Path:
        path = (self.root / key).resolve()
        if not path.is_relative_to(self.root.resolve()):
            raise StoreError(f"{self.uri}: key {key!r} escapes the store")
        return path

    async def put(self, key: str, data: bytes) -> None:
        await asyncio.to_thread(self._write, self._path(key), data)

    async def put_file(self, key: str, path: Path) -> None:
        await asyncio.to_thread(self._write, self._path(key), path)

    async def get(self, key: str) -> bytes:
        try:
            return await asyncio.to_thread(self._path(key).read_bytes)
        except FileNotFoundError as exc:
            raise StoreNotFound(f"{self.uri}: no object {key!r}") from exc
        except OSError as exc:
            raise StoreError(f"{self.uri}: cannot read {key!r}: {exc}") from exc

    async def get_file(self, key: str, path: Path) -> None:
        try:
            await asyncio.to_thread(shutil.copyfile, self._path(key), path)
        except FileNotFoundError as exc:
            raise StoreNotFound(f"{self.uri}: no object {key!r}") from exc
        except OSError as exc:
            raise StoreError(f"{self.uri}: cannot read {key!r}: {exc}") from exc

    async def list_objects(self, prefix: str) -> list[StoredObject]:
        return await asyncio.to_thread(self._list, prefix)

    async def delete(self, keys: Sequence[str]) -> None:
        await asyncio.to_thread(self._delete, keys)

    async def get_tagged(self, key: str) -> tuple[bytes, str]:
        data = await self.get(key)
        return data, _digest(data)

    async def put_if(self, key: str, data: bytes, tag: str | None) -> str:
        return await asyncio.to_thread(self._put_if, self._path(key), data, tag)

    def _put_if(self, target: Path, data: bytes, tag: str | None) -> str:
        """Under an exclusive lock on ``target``'s lock file: compare, then write."""
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            with open(target.parent / f".lock-{target.name}", "a") as lock:
                fcntl.flock(lock, fcntl.LOCK_EX)
                try:
                    current = _digest(target.read_bytes())
                except FileNotFoundError:
                    current = None
                if current != tag:
                    raise StoreConflict(f"{self.uri}: {target.name} changed (or exists) since read")
                self._write(target, data)
        except OSError as exc:
            raise StoreError(f"{self.uri}: cannot write {target}: {exc}") from exc
        return _digest(data)

    def _write(self, target: Path, source: bytes | Path) -> None:
        """Atomically place ``source`` at ``target``: temp file, fsync, rename, fsync dir."""
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".tmp-")
            try:
                with os.fdopen(fd, "wb") as out:
                    if isinstance(source, bytes):
                        out.write(source)
                    else:
                        with source.open("rb") as src:
                            while chunk := src.read(1024 * 1024):
                                out.write(chunk)
                    out.flush()
                    os.fsync(out.fileno())
                os.replace(tmp, target)
            except BaseException:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(tmp)
                raise
            dir_fd = os.open(target.parent, os.O_RDONLY | os.O_DIRECTORY)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)
        except OSError as exc:
            raise StoreError(f"{self.uri}: cannot write {target}: {exc}") from exc

    def _list(self, prefix: str) -> list[StoredObject]:
        base = self.root / prefix
        start = base if prefix.endswith("/") or base.is_dir() else base.parent
        out = []
        for path in _walk(start):
            key = path.relative_to(self.root).as_posix()
            if key.startswith(prefix) and not path.name.startswith((".tmp-", ".lock-")):
                with contextlib.suppress(FileNotFoundError):
                    out.append(StoredObject(key, path.stat().st_size))
        return sorted(out, key=lambda o: o.key)

    def _delete(self, keys: Sequence[str]) -> None:
        for key in keys:
            try:
                self._path(key).unlink(missing_ok=True)
            except OSError as exc:
                raise StoreError(f"{self.uri}: cannot delete {key!r}: {exc}") from exc


def _digest(data: bytes) -> str:
    return hashlib.blake2b(data, digest_size=16).hexdigest()


def _walk(start: Path) -> Iterator[Path]:
    if not start.is_dir():
        return
    for dirpath, _, files in os.walk(start):
        for name in files:
            yield Path(dirpath, name)


class S3Store(Store):
    def __init__(self, bucket: str, prefix: str, settings: S3Settings) -> None:
        self.bucket = bucket
        self.settings = settings
        self.prefix = f"{prefix}/" if prefix else ""
        self.uri = f"s3://{bucket}/{prefix}".rstrip("/")
        self._exit: contextlib.AsyncExitStack | None = None
        self._client: Any = None

    async def start(self) -> None:
        self._exit = contextlib.AsyncExitStack()
        client_cm: AbstractAsyncContextManager[Any] = get_session().create_client(
            "s3", **self.settings.client_options()
        )
        self._client = await self._exit.enter_async_context(client_cm)

    async def aclose(self) -> None:
        if self._exit is not None:
            await self._exit.aclose()
            self._exit, self._client = None, None

    def _key(self, key: str) -> str:
        return self.prefix + key

    async def put(self, key: str, data: bytes) -> None:
        async with self._translate(key):
            await self._client.put_object(Bucket=self.bucket, Key=self._key(key), Body=data)

    async def put_file(self, key: str, path: Path) -> None:
        size = (await asyncio.to_thread(path.stat)).st_size
        if size <= _SINGLE_PUT_MAX:
            await self.put(key, await asyncio.to_thread(path.read_bytes))
            return
        async with self._translate(key):
            await self._multipart(self._key(key), path)

    async def _multipart(self, key: str, path: Path) -> None:
        up = await self._client.create_multipart_upload(Bucket=self.bucket, Key=key)
        upload_id, parts = up["UploadId"], []
        try:
            with path.open("rb") as src:
                number = 1
                while chunk := await asyncio.to_thread(src.read, _PART_SIZE):
                    part = await self._client.upload_part(
                        Bucket=self.bucket, Key=key, UploadId=upload_id, PartNumber=number,
                        Body=chunk,
                    )  # fmt: skip
                    parts.append({"ETag": part["ETag"], "PartNumber": number})
                    number += 1
            await self._client.complete_multipart_upload(
                Bucket=self.bucket, Key=key, UploadId=upload_id,
                MultipartUpload={"Parts": parts},
            )  # fmt: skip
        except BaseException:
            with contextlib.suppress(Exception):
                await self._client.abort_multipart_upload(
                    Bucket=self.bucket, Key=key, UploadId=upload_id
                )
            raise

    async def get(self, key: str) -> bytes:
        async with self._translate(key):
            resp = await self._client.get_object(Bucket=self.bucket, Key=self._key(key))
            async with resp["Body"] as body:
                data: bytes = await body.read()
                return data

    async def get_file(self, key: str, path: Path) -> None:
        async with self._translate(key):
            resp = await self._client.get_object(Bucket=self.bucket, Key=self._key(key))
            with path.open("wb") as out:
                async with resp["Body"] as body:
                    while chunk := await body.read(_PART_SIZE // 4):
                        await asyncio.to_thread(out.write, chunk)

    async def get_tagged(self, key: str) -> tuple[bytes, str]:
        async with self._translate(key):
            resp = await self._client.get_object(Bucket=self.bucket, Key=self._key(key))
            async with resp["Body"] as body:
                data: bytes = await body.read()
            return data, str(resp["ETag"])

    async def put_if(self, key: str, data: bytes, tag: str | None) -> str:
        condition = {"IfNoneMatch": "*"} if tag is None else {"IfMatch": tag}
        async with self._translate(key):
            resp = await self._client.put_object(
                Bucket=self.bucket, Key=self._key(key), Body=data, **condition
            )
            return str(resp["ETag"])

    async def list_objects(self, prefix: str) -> list[StoredObject]:
        out: list[StoredObject] = []
        async with self._translate(prefix):
            paginator = self._client.get_paginator("list_objects_v2")
            async for page in paginator.paginate(Bucket=self.bucket, Prefix=self._key(prefix)):
                for obj in page.get("Contents", ()):
                    out.append(StoredObject(obj["Key"][len(self.prefix) :], obj["Size"]))
        return out

    async def delete(self, keys: Sequence[str]) -> None:
        for i in range(0, len(keys), 1000):
            batch = [{"Key": self._key(k)} for k in keys[i : i + 1000]]
            async with self._translate(keys[i]):
                resp = await self._client.delete_objects(
                    Bucket=self.bucket, Delete={"Objects": batch, "Quiet": True}
                )
            if resp.get("Errors"):
                first = resp["Errors"][0]
                raise StoreError(f"{self.uri}: cannot delete {first.get('Key')}: {first}")

    @contextlib.asynccontextmanager
    async def _translate(self, key: str) -> AsyncIterator[None]:
        if self._client is None:
            raise StoreError(f"{self.uri}: store is not started")
        try:
            yield
        except ClientError as exc:
            code = exc.response.get("Error", {}).get("Code", "")
            if code in ("NoSuchKey", "404"):
                raise StoreNotFound(f"{self.uri}: no object {key!r}") from exc
            if code in ("PreconditionFailed", "ConditionalRequestConflict", "412", "409"):
                raise StoreConflict(f"{self.uri}: {key!r} changed (or exists) since read") from exc
            raise StoreError(f"{self.uri}: {code or 'error'} on {key!r}: {exc}") from exc
        except (TimeoutError, BotoCoreError, aiohttp.ClientError, OSError) as exc:
            raise StoreError(f"{self.uri}: unreachable on {key!r}: {exc}") from exc
