"""Publishing an adapter: the folder LoRAX loads, plus what Protégé knows about it.

    <store>/adapters/<task>/<version>/adapter_config.json
    <store>/adapters/<task>/<version>/adapter_model.safetensors
    <store>/adapters/<task>/<version>/protege.json

``protege.json`` holds the base model, the dataset snapshot, the hyper-parameters, the
evaluation metrics, the prompt template and the input reference profile the gateway's drift
monitor compares live traffic with. Versions are ``v<UTC time>-<random>``: unique, sortable,
and never a prefix of one another (LoRAX lists S3 by prefix). ``protege.json`` is uploaded last,
so a version without it is an unfinished upload, and readers skip it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

import orjson

from core.errors import StoreNotFound
from core.ids import new_id
from core.keys import ADAPTER_FILES, MANIFEST, adapter_ids, adapter_prefix, adapters_prefix
from core.profile import Profile
from core.store import open_store
from core.text import prompt_text
from trainer.examples import Example

MANIFEST_VERSION: Final = 1


def new_version(now: datetime | None = None) -> str:
    moment = now or datetime.now(UTC)
    return f"v{moment:%Y%m%d%H%M%S}-{new_id()[-6:].lower()}"


def reference_profile(examples: Iterable[Example]) -> dict[str, Any]:
    """The input profile of the training prompts, as stored in ``protege.json``."""
    return Profile.of(prompt_text(e.messages) for e in examples).to_dict()


@dataclass(frozen=True)
class Published:
    task: str
    version: str
    uri: str  # where LoRAX finds it: <store>/adapters/<task>/<version>

    @property
    def adapter_id(self) -> str:
        return f"{self.task}/{self.version}"


async def publish(
    store_uri: str, task: str, adapter_dir: Path, manifest: dict[str, Any]
) -> Published:
    """Upload the adapter files, then ``protege.json`` (marking the version complete)."""
    missing = [f for f in ADAPTER_FILES if not (adapter_dir / f).is_file()]
    if missing:
        raise FileNotFoundError(f"{adapter_dir} lacks {', '.join(missing)}")
    version = new_version()
    prefix = adapter_prefix(task, version)
    body = {
        "manifest_version": MANIFEST_VERSION,
        "task": task,
        "version": version,
        "published": datetime.now(UTC).isoformat(),
        **manifest,
    }
    async with open_store(store_uri) as store:
        for name in ADAPTER_FILES:
            await store.put_file(prefix + name, adapter_dir / name)
        await store.put(prefix + MANIFEST, orjson.dumps(body, option=orjson.OPT_INDENT_2))
    return Published(task, version, f"{store_uri.rstrip('/')}/{prefix.rstrip('/')}")


async def list_versions(store_uri: str, task: str) -> list[str]:
    """Complete versions of ``task``'s adapter (those with a manifest), oldest first."""
    async with open_store(store_uri) as store:
        objects = await store.list_objects(adapters_prefix(task))
    return sorted(i.split("/")[1] for i in adapter_ids(o.key for o in objects))


async def read_manifest(store_uri: str, task: str, version: str) -> dict[str, Any]:
    async with open_store(store_uri) as store:
        try:
            data = await store.get(adapter_prefix(task, version) + MANIFEST)
        except StoreNotFound as exc:
            raise StoreNotFound(f"no published adapter {task}/{version}") from exc
    manifest: dict[str, Any] = orjson.loads(data)
    return manifest


async def download_adapter(store_uri: str, task: str, version: str, target: Path) -> Path:
    """The adapter's files (and manifest) in ``target``, ready for peft to load."""
    await asyncio.to_thread(target.mkdir, parents=True, exist_ok=True)
    async with open_store(store_uri) as store:
        for name in (*ADAPTER_FILES, MANIFEST):
            await store.get_file(adapter_prefix(task, version) + name, target / name)
    return target
