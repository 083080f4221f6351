"""Dataset snapshots built from exchanges in a store: files, card, frozen tests, corrections."""

from __future__ import annotations

import random
import uuid
from collections import defaultdict
from collections.abc import AsyncIterator, Sequence
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from core.errors import StoreNotFound
from core.keys import frozen_prefix, partition_of, snapshot_prefix
from core.store import Store, open_store
from tests.stored import at, put_part, record, s3_server, store_uri
from trainer.dataset import DatasetCard, build_snapshot, build_snapshot_sync, load_snapshot
from trainer.examples import SPLITS, TEST_SPLITS
from trainer.settings import CurationConfig, LabelRule

__all__ = ["s3_server", "store_uri"]  # the shared store fixtures, used by this module

TASK = "tickets"
DAY1 = at("2024-05-01 10:00")
DAY2 = at("2024-05-02 10:00")
CLASSIFY = CurationConfig(
    label=LabelRule(json_path="$.category"),
    classes=("bug", "billing"),
    test_fraction=0.25,
    test_balanced_per_class=5,
    max_per_group=4,
)


def exchange(
    request_id: str,
    when: datetime,
    prompt: str,
    answer: str,
    *,
    user: str | None = None,
    **fields: Any,
) -> dict[str, Any]:
    """A teacher exchange of ``TASK`` as the spool holds it."""
    row = record(request_id, when, TASK)
    row["request"] = orjson.dumps({"messages": [{"role": "user", "content": prompt}]}).decode()
    row["response"] = orjson.dumps({"choices": [{"message": {"content": answer}}]}).decode()
    row["user"] = user
    row.update(fields)
    return row


def tickets(start: datetime, n: int, users: int, tag: str) -> list[dict[str, Any]]:
    """``n`` distinct ticket exchanges from ``users`` users, one a minute, 3 bugs to 1 billing."""
    return [
        exchange(
            f"{tag}-{i:04}",
            start + timedelta(minutes=i),
            prompt(f"{tag}-{i}"),
            orjson.dumps({"category": "billing" if i % 4 == 0 else "bug"}).decode(),
            user=f"user-{i % users}",
        )
        for i in range(n)
    ]


def prompt(seed: str) -> str:
    rng = random.Random(seed)
    return "Ticket: " + " ".join(f"w{rng.randrange(10_000)}" for _ in range(12))


async def put_records(store: Store, records: Sequence[dict[str, Any]], tmp: Path) -> None:
    """Ship ``records`` as parts, one per partition, as the sidecar would."""
    by_partition: defaultdict[Any, list[dict[str, Any]]] = defaultdict(list)
    for row in records:
        by_partition[partition_of(row["task"], row["ts"])].append(row)
    for rows in by_partition.values():
        await put_part(store, uuid.uuid4().hex, rows, tmp)


@pytest.fixture
def local_uri(tmp_path: Path) -> str:
    return f"file://{tmp_path / 'store'}"


@pytest.fixture
async def store(local_uri: str) -> AsyncIterator[Store]:
    async with open_store(local_uri) as opened:
        yield opened


async def test_build_writes_a_complete_snapshot(store_uri: str, tmp_path: Path) -> None:
    """A build writes the three splits and its card; everything read is either kept or
    counted as a drop by reason; load_snapshot reads the same examples back."""
    rows = tickets(DAY1, 120, users=40, tag="t")
    again = "  " + str(orjson.loads(rows[1]["request"])["messages"][0]["content"]).upper()
    bad = [
        exchange("x-cut", DAY1, "Ticket cut", '{"category": "bug"}', complete=False),
        exchange("x-500", DAY1, "Ticket err", '{"category": "bug"}', status=500),
        exchange("x-stu", DAY1, "Ticket stu", '{"category": "bug"}', backend="student"),
        exchange("x-lbl", DAY1, "Ticket lbl", '{"category": "other"}'),
        exchange("x-raw", DAY1, "Ticket raw", "bug"),
        exchange("x-dup", DAY1 + timedelta(hours=5), again, '{"category": "bug"}'),
    ]
    async with open_store(store_uri) as opened:
        await put_records(opened, [*rows, *bad], tmp_path)
    card = await build_snapshot(store_uri, TASK, CLASSIFY, seed=3, now=DAY2)

    assert card.records_in == 126
    assert card.drops == {
        "incomplete": 1, "error_status": 1, "not_teacher": 1, "unknown_label": 1,
        "no_label": 1, "duplicate": 1,
    }  # fmt: skip
    assert card.examples["train"] + card.examples["test-indist"] == 120
    assert card.examples["test-indist"] > 0 and card.tests_from == card.snapshot
    assert not card.tests_reused
    assert card.classes["test-balanced"] == {"billing": 5, "bug": 5}
    for split in SPLITS:
        assert sum(card.classes[split].values()) == card.examples[split]
        assert card.sources[split] == (
            {"teacher": card.examples[split]} if card.examples[split] else {}
        )
    assert card.groups["train"] + card.groups["test-indist"] == 40
    assert card.config["label"] == {"json_path": "$.category", "regex": None}
    assert (card.seed, card.since, card.until) == (3, None, None)
    assert card.created == DAY2.isoformat() and card.snapshot.startswith("20240502T100000Z-")

    snapshot, splits, loaded = await load_snapshot(store_uri, TASK)
    assert snapshot == card.snapshot and loaded == card
    assert {s: len(splits[s]) for s in SPLITS} == card.examples
    train_groups = {e.group for e in splits["train"]}
    assert not train_groups & {e.group for s in TEST_SPLITS for e in splits[s]}
    first = min(splits["train"], key=lambda e: e.request_id)
    assert first.label in ("bug", "billing") and first.messages[0]["role"] == "user"


async def test_card_json_and_markdown(store: Store, local_uri: str, tmp_path: Path) -> None:
    """card.json round-trips to the card; card.md shows the splits, classes, drops and config."""
    await put_records(store, tickets(DAY1, 40, users=40, tag="t"), tmp_path)
    until = at("2024-05-01 10:30")
    card = await build_snapshot(local_uri, TASK, CLASSIFY, until=until, now=DAY2)
    prefix = snapshot_prefix(TASK, card.snapshot)
    assert DatasetCard.from_json(await store.get(prefix + "card.json")) == card
    assert card.records_in == 30 and card.until == until.isoformat()
    assert card.drops == {}
    text = (await store.get(prefix + "card.md")).decode()
    assert f"# Dataset `{TASK}` / `{card.snapshot}`" in text
    assert f"| train | {card.examples['train']} | {card.groups['train']} |" in text
    assert "| billing |" in text and "| bug |" in text
    assert '"max_per_group": 4' in text and "| (none) | 0 |" in text


async def test_test_sets_are_frozen_across_builds(
    store: Store, local_uri: str, tmp_path: Path
) -> None:
    """A second build with new data copies the first build's test files byte for byte, and
    never trains on their groups, even on the groups' new exchanges."""
    await put_records(store, tickets(DAY1, 120, users=60, tag="a"), tmp_path)
    first = await build_snapshot(local_uri, TASK, CLASSIFY, now=DAY2)
    frozen = {s: await store.get(f"{frozen_prefix(TASK)}{s}.parquet") for s in TEST_SPLITS}
    manifest = orjson.loads(await store.get(frozen_prefix(TASK) + "manifest.json"))
    assert manifest["snapshot"] == first.snapshot and manifest["groups"]

    await put_records(store, tickets(DAY2, 120, users=120, tag="b"), tmp_path)
    second = await build_snapshot(local_uri, TASK, CLASSIFY, now=DAY2 + timedelta(hours=1))
    for split in TEST_SPLITS:
        copied = await store.get(f"{snapshot_prefix(TASK, second.snapshot)}{split}.parquet")
        assert copied == frozen[split]
        assert await store.get(f"{frozen_prefix(TASK)}{split}.parquet") == frozen[split]
    assert second.tests_reused and second.tests_from == first.snapshot
    assert second.drops["test_group"] > 0
    _, splits, _ = await load_snapshot(local_uri, TASK)
    assert not {e.group for e in splits["train"]} & set(manifest["groups"])
    assert second.examples["train"] > first.examples["train"]
    assert second.records_in == 240
    assert second.records_in == sum(second.drops.values()) + second.examples["train"]


async def test_corrections_override_teacher_answers(
    store: Store, local_uri: str, tmp_path: Path
) -> None:
    """Corrections (a Parquet of request_id and completion, in the store or on disk) replace
    the teacher's answer and are labelled from the gold text."""
    rows = tickets(DAY1, 20, users=20, tag="t")
    rows[1]["response"] = orjson.dumps({"choices": [{"message": {"content": "dunno"}}]}).decode()
    await put_records(store, rows, tmp_path)
    gold = tmp_path / "gold.parquet"
    table = pa.table({"request_id": ["t-0001", "t-0002"], "completion": ['{"category": "billing"}',
                      None]})  # fmt: skip
    pq.write_table(table, gold)
    await store.put_file("corrections/tickets.parquet", gold)
    config = CLASSIFY.model_copy(update={"test_fraction": 0.0})
    for source in ("corrections/tickets.parquet", str(gold), f"file://{gold}"):
        card = await build_snapshot(
            local_uri, TASK, config.model_copy(update={"corrections": source})
        )
        _, splits, _ = await load_snapshot(local_uri, TASK, card.snapshot)
        corrected = [e for e in splits["train"] if e.request_id == "t-0001"]
        assert [(e.source, e.label) for e in corrected] == [("correction", "billing")]
        assert card.sources["train"] == {"correction": 1, "teacher": 19}
        assert card.drops == {}


async def test_bad_corrections_file_fails(store: Store, local_uri: str, tmp_path: Path) -> None:
    """A corrections file without the two columns fails the build, naming the file."""
    bad = tmp_path / "bad.parquet"
    pq.write_table(pa.table({"id": ["x"]}), bad)
    config = CurationConfig(corrections=str(bad))
    with pytest.raises(ValueError, match=r"bad\.parquet"):
        await build_snapshot(local_uri, TASK, config)
    with pytest.raises(StoreNotFound):
        await build_snapshot(local_uri, TASK, CurationConfig(corrections="nowhere.parquet"))


async def test_load_snapshot_picks_the_newest(store: Store, local_uri: str, tmp_path: Path) -> None:
    """Without a name the newest snapshot loads; a name loads that one; none is an error."""
    with pytest.raises(StoreNotFound):
        await load_snapshot(local_uri, TASK)
    await put_records(store, tickets(DAY1, 10, users=10, tag="t"), tmp_path)
    old = await build_snapshot(local_uri, TASK, CurationConfig(), now=DAY1)
    new = await build_snapshot(local_uri, TASK, CurationConfig(), now=DAY2)
    assert (await load_snapshot(local_uri, TASK))[0] == new.snapshot
    assert (await load_snapshot(local_uri, TASK, old.snapshot))[2] == old


def test_empty_store_builds_an_empty_snapshot(local_uri: str) -> None:
    """No exchanges: an empty snapshot, and no test sets frozen (the next build makes them)."""
    card = build_snapshot_sync(local_uri, TASK, CurationConfig(), now=DAY2)
    assert card.records_in == 0 and card.examples == dict.fromkeys(SPLITS, 0)
    assert card.tests_from is None and not card.tests_reused
    root = Path(local_uri.removeprefix("file://"))
    assert not (root / frozen_prefix(TASK) / "manifest.json").exists()
    assert (root / snapshot_prefix(TASK, card.snapshot) / "train.parquet").exists()
