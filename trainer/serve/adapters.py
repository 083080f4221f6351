"""Published adapters: fetched from the store once, attached to the model in a bounded LRU.

An adapter is named ``<task>/<version>`` (or by its full URI, ``<store>/adapters/<task>/
<version>``, as ``trainer.publish`` reports it). ``AdapterFetcher`` copies its folder from the
store to a local cache on first use, on the event loop; concurrent first requests share one
download, and a failed download is not remembered, so a later request tries again.
``AdapterSlots`` attaches cached adapters to the one PEFT model, on the engine's thread only:
at most ``capacity`` stay attached, the least recently used one is deleted beyond that, and an
adapter that does not load is removed again, leaving the model as it was.

The model carries a permanent zero-effect adapter (``PLACEHOLDER``) from the start, so it is a
``PeftModel`` before any real adapter arrives and a failed load never half-wraps the base.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import tempfile
import threading
import warnings
from collections import OrderedDict
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import structlog

from core.errors import StoreError, StoreNotFound
from core.keys import ADAPTER_ID, ADAPTERS, MANIFEST, adapter_ids
from core.store import open_store
from trainer.publish import download_adapter
from trainer.serve.errors import AdapterUnavailable

log = structlog.get_logger("student")

PLACEHOLDER: Final = "protege-base"


@dataclass(frozen=True)
class LocalAdapter:
    adapter_id: str  # <task>/<version>
    path: Path  # the folder peft loads


def parse_adapter_id(raw: str, store_uri: str) -> tuple[str, str]:
    """The (task, version) ``raw`` names; ``AdapterUnavailable`` when it names none."""
    prefix = f"{store_uri.rstrip('/')}/{ADAPTERS}/"
    name = raw[len(prefix) :].rstrip("/") if raw.startswith(prefix) else raw
    match = ADAPTER_ID.match(name)
    if match is None:
        raise AdapterUnavailable(raw, "is not <task>/<version> of a published adapter")
    return match.group(1), match.group(2)


async def published(store_uri: str) -> list[str]:
    """Every complete published adapter in the store, as ``<task>/<version>``."""
    async with open_store(store_uri) as store:
        objects = await store.list_objects(f"{ADAPTERS}/")
    return adapter_ids(o.key for o in objects)


class AdapterFetcher:
    """Copies adapters from the store into ``cache_dir``; event loop only."""

    def __init__(self, store_uri: str, cache_dir: Path) -> None:
        self.store_uri = store_uri
        self.cache_dir = cache_dir
        self.downloads = 0
        self._running: dict[str, asyncio.Task[LocalAdapter]] = {}

    async def fetch(self, raw_id: str) -> LocalAdapter:
        """The adapter's local copy, downloading it unless it is cached or on its way."""
        task, version = parse_adapter_id(raw_id, self.store_uri)
        adapter_id = f"{task}/{version}"
        folder = self.cache_dir / task / version
        if (folder / MANIFEST).is_file():
            return LocalAdapter(adapter_id, folder)
        running = self._running.get(adapter_id)
        if running is None:
            running = asyncio.create_task(self._download(adapter_id, folder))
            self._running[adapter_id] = running
            running.add_done_callback(self._forget)
        return await asyncio.shield(running)

    async def aclose(self) -> None:
        """Cancel downloads still running and wait for them."""
        tasks = list(self._running.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def _forget(self, task: asyncio.Task[LocalAdapter]) -> None:
        self._running = {k: t for k, t in self._running.items() if t is not task}
        if not task.cancelled():
            task.exception()  # its waiters have it; nobody else must be told again

    async def _download(self, adapter_id: str, folder: Path) -> LocalAdapter:
        task, version = adapter_id.split("/")
        await asyncio.to_thread(self.cache_dir.mkdir, parents=True, exist_ok=True)
        staging = Path(await asyncio.to_thread(tempfile.mkdtemp, dir=self.cache_dir))
        try:
            await download_adapter(self.store_uri, task, version, staging)
            await asyncio.to_thread(_place, staging, folder)
        except StoreNotFound as exc:
            raise AdapterUnavailable(adapter_id, f"is not published in {self.store_uri}") from exc
        except (StoreError, OSError) as exc:
            log.warning("adapter download failed", adapter=adapter_id, error=str(exc))
            raise AdapterUnavailable(adapter_id, f"could not be downloaded: {exc}") from exc
        finally:
            await asyncio.to_thread(shutil.rmtree, staging, True)
        self.downloads += 1
        log.info("adapter downloaded", adapter=adapter_id)
        return LocalAdapter(adapter_id, folder)


def _place(staging: Path, folder: Path) -> None:
    """Move a complete download to its place in one step (a folder already there wins)."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.replace(staging, folder)
    except OSError:
        if not (folder / MANIFEST).is_file():
            raise


@contextmanager
def peft_quirks() -> Iterator[None]:
    """Silence the deprecation PEFT trips over in transformers 5 (it asks the old name)."""
    with warnings.catch_warnings():
        warnings.filterwarnings(
            "ignore", message=".*is_gradient_checkpointing.*deprecated", category=FutureWarning
        )
        yield


def with_placeholder(base: Any) -> Any:
    """``base`` as a ``PeftModel`` holding only the zero-effect ``PLACEHOLDER`` adapter."""
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(r=1, target_modules="all-linear", lora_dropout=0.0, bias="none")
    with peft_quirks():
        model = get_peft_model(base, config, adapter_name=PLACEHOLDER)
    return model.eval()


class AdapterSlots:
    """The adapters attached to the model, least recently used first; engine thread only."""

    def __init__(self, model: Any, capacity: int) -> None:
        self.capacity = capacity
        self.loads = 0
        self.evictions = 0
        self._model = model
        self._names: OrderedDict[str, str] = OrderedDict()  # adapter id -> peft adapter name
        self._serial = 0
        self._lock = threading.Lock()  # guards _names for readers on other threads

    def attached(self) -> list[str]:
        """Attached adapter ids, least recently used first (any thread)."""
        with self._lock:
            return list(self._names)

    def activate(self, adapter: LocalAdapter | None) -> None:
        """Make ``adapter`` the active one, attaching it (and evicting) if needed."""
        if adapter is None:
            return
        name = self._names.get(adapter.adapter_id)
        if name is None:
            name = self._attach(adapter)
            self._evict()
        else:
            with self._lock:
                self._names.move_to_end(adapter.adapter_id)
        self._model.set_adapter(name, inference_mode=True)

    def using(self, adapter: LocalAdapter | None) -> AbstractContextManager[Any]:
        """Context in which the model runs as ``adapter`` (None: the bare base model)."""
        return self._model.disable_adapter() if adapter is None else nullcontext()

    def _attach(self, adapter: LocalAdapter) -> str:
        self._serial += 1
        name = f"adapter-{self._serial}"
        device = str(next(self._model.parameters()).device)
        try:
            with peft_quirks():
                self._model.load_adapter(
                    str(adapter.path), adapter_name=name, is_trainable=False, torch_device=device
                )
        except Exception as exc:
            log.warning("adapter load failed", adapter=adapter.adapter_id, error=str(exc))
            if name in self._model.peft_config:
                self._model.delete_adapter(name)
            raise AdapterUnavailable(
                adapter.adapter_id, f"does not load onto the base model: {exc}"
            ) from exc
        self._model.eval()
        with self._lock:
            self._names[adapter.adapter_id] = name
        self.loads += 1
        log.info("adapter attached", adapter=adapter.adapter_id, attached=len(self._names))
        return name

    def _evict(self) -> None:
        while len(self._names) > self.capacity:
            with self._lock:
                oldest, name = self._names.popitem(last=False)
            self._model.set_adapter(PLACEHOLDER, inference_mode=True)  # never delete the active
            self._model.delete_adapter(name)
            self.evictions += 1
            log.info("adapter evicted", adapter=oldest)
