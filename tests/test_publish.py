"""Publishing adapters to the store: layout, manifest last, unique versions."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from core.errors import StoreNotFound
from core.profile import Profile
from trainer.examples import Example
from trainer.publish import (
    download_adapter,
    list_versions,
    new_version,
    publish,
    read_manifest,
    reference_profile,
)


def adapter(tmp_path: Path) -> Path:
    folder = tmp_path / "adapter"
    folder.mkdir()
    (folder / "adapter_config.json").write_text('{"peft_type": "LORA"}')
    (folder / "adapter_model.safetensors").write_bytes(b"\0" * 64)
    return folder


def test_publish_lays_out_files_and_manifest(tmp_path: Path) -> None:
    """The adapter lands under adapters/<task>/<version>/ with its protege.json."""
    store = f"file://{tmp_path / 'store'}"
    examples = [Example("r1", [{"role": "user", "content": "reset my password"}], "ok", "g")]
    manifest = {"base_model": "smollm2", "input_profile": reference_profile(examples)}
    published = asyncio.run(publish(store, "tickets", adapter(tmp_path), manifest))
    root = tmp_path / "store" / "adapters" / "tickets" / published.version
    assert sorted(p.name for p in root.iterdir()) == [
        "adapter_config.json",
        "adapter_model.safetensors",
        "protege.json",
    ]
    assert published.adapter_id == f"tickets/{published.version}"
    assert asyncio.run(list_versions(store, "tickets")) == [published.version]
    read = asyncio.run(read_manifest(store, "tickets", published.version))
    assert read["base_model"] == "smollm2" and read["task"] == "tickets"
    assert Profile.from_dict(read["input_profile"]).n == 1
    target = asyncio.run(download_adapter(store, "tickets", published.version, tmp_path / "dl"))
    assert (target / "adapter_model.safetensors").read_bytes() == b"\0" * 64


def test_version_without_manifest_is_not_listed(tmp_path: Path) -> None:
    """An unfinished upload (no protege.json yet) is not a published version."""
    half = tmp_path / "store" / "adapters" / "tickets" / "v1"
    half.mkdir(parents=True)
    (half / "adapter_config.json").write_text("{}")
    assert asyncio.run(list_versions(f"file://{tmp_path / 'store'}", "tickets")) == []
    with pytest.raises(StoreNotFound):
        asyncio.run(read_manifest(f"file://{tmp_path / 'store'}", "tickets", "v1"))


def test_versions_are_unique_and_never_prefixes() -> None:
    """Versions made in the same second differ, and none is a prefix of another."""
    versions = [new_version() for _ in range(200)]
    assert len(set(versions)) == 200
    assert not any(a != b and b.startswith(a) for a in versions for b in versions)


def test_missing_adapter_files_are_refused(tmp_path: Path) -> None:
    """Publishing a folder without the PEFT files fails before anything is uploaded."""
    with pytest.raises(FileNotFoundError, match=r"adapter_model\.safetensors"):
        empty = tmp_path / "empty"
        empty.mkdir()
        (empty / "adapter_config.json").write_text("{}")
        asyncio.run(publish(f"file://{tmp_path / 'store'}", "t", empty, {}))
    assert not (tmp_path / "store").exists()
