"""Store keys: every key is built and parsed in ``core.keys``, and the two agree."""

from __future__ import annotations

import pytest

from core.keys import (
    ADAPTER_ID,
    Partition,
    adapter_ids,
    adapter_prefix,
    frozen_prefix,
    manifest_key,
    parse_part_key,
    part_key,
    partition_of,
    snapshot_names,
    snapshot_prefix,
    split_key,
)

HOUR_US = 3_600_000_000


def test_part_keys_round_trip() -> None:
    """A part key names its partition and part, and parses back to them."""
    partition = partition_of("tickets", 19_000 * 24 * HOUR_US + 5 * HOUR_US + 7)
    assert partition == Partition("tickets", "2022-01-08", "05")
    key = part_key(partition, "01HV0000000000000000000000")
    assert (
        key == "exchanges/task=tickets/date=2022-01-08/hour=05/01HV0000000000000000000000.parquet"
    )
    assert parse_part_key(key) == (partition, "01HV0000000000000000000000")
    assert parse_part_key("exchanges/task=t/date=2022-01-08/hour=5/x.parquet") is None
    assert parse_part_key("datasets/t/x/train.parquet") is None


def test_adapter_keys() -> None:
    """An adapter's files live under adapters/<task>/<version>/; its manifest is listed by id."""
    assert adapter_prefix("tickets", "v1") == "adapters/tickets/v1/"
    assert manifest_key("tickets/v1") == "adapters/tickets/v1/protege.json"
    listed = [
        "adapters/tickets/v2/adapter_model.safetensors",  # still uploading: no manifest yet
        "adapters/tickets/v1/protege.json",
        "adapters/tickets/v1/adapter_config.json",
        "adapters/other/v10/protege.json",
        "adapters/tickets/v3/nested/protege.json",
        "datasets/tickets/s1/protege.json",
    ]
    assert adapter_ids(listed) == ["other/v10", "tickets/v1"]


@pytest.mark.parametrize(
    ("raw", "ok"),
    [("tickets/v1", True), ("a.b_c-d/v20261205-x1", True), ("tickets", False),
     ("tickets/v1/x", False), ("../v1", False), ("/v1", False), ("t/.v1", False)],
)  # fmt: skip
def test_adapter_id_is_two_plain_names(raw: str, ok: bool) -> None:
    """An adapter id is <task>/<version>, each one key component that is not a path."""
    assert (ADAPTER_ID.match(raw) is not None) == ok


def test_dataset_keys() -> None:
    """Snapshots and frozen tests share the task's folder; only carded snapshots are complete."""
    assert split_key(snapshot_prefix("t", "s1"), "train") == "datasets/t/s1/train.parquet"
    assert split_key(frozen_prefix("t"), "test-indist") == "datasets/t/tests/test-indist.parquet"
    listed = [
        "datasets/t/s1/card.json",
        "datasets/t/s2/train.parquet",  # unfinished: no card
        "datasets/t/tests/manifest.json",
        "datasets/t/s3/card.json",
        "datasets/t/s3/deeper/card.json",
        "datasets/tt/s4/card.json",
    ]
    assert sorted(snapshot_names("t", listed)) == ["s1", "s3"]
