"""Dataset builds use the applications' feedback: negative feedback drops, corrections teach,
the frozen test sets stay frozen."""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest

from core.feedback import FEEDBACK_SCHEMA, FEEDBACK_SCHEMA_VERSION, UNRESOLVED, feedback_to_table
from core.keys import feedback_part_key, feedback_partition_of, frozen_prefix, snapshot_prefix
from core.read import read_feedback
from core.store import Store
from tests.stored import EPOCH
from tests.test_dataset import CLASSIFY, DAY1, DAY2, TASK, put_records, store, tickets
from trainer.dataset import build_snapshot, load_snapshot
from trainer.examples import TEST_SPLITS
from trainer.feedback import is_negative, merge_corrections, verdicts
from trainer.settings import CurationConfig

__all__ = ["store"]  # the shared store fixture, used by this module

TRAIN_ONLY = CLASSIFY.model_copy(update={"test_fraction": 0.0})


def feedback(request_id: str, when: datetime, task: str = TASK, **said: Any) -> dict[str, Any]:
    """A feedback record as the feedback spool holds it."""
    return {
        "feedback_id": said.pop("feedback_id", uuid.uuid4().hex),
        "request_id": request_id,
        "schema_version": FEEDBACK_SCHEMA_VERSION,
        "ts": (when - EPOCH) // timedelta(microseconds=1),
        "task": task,
        **said,
    }


async def put_feedback(store: Store, rows: list[dict[str, Any]], tmp: Path) -> None:
    """Ship feedback ``rows`` (one partition) as one part, as the sidecar would."""
    from sidecar.parts import parquet_writer

    first = rows[0]
    key = feedback_part_key(feedback_partition_of(first["task"], first["ts"]), uuid.uuid4().hex)
    path = tmp / f"{uuid.uuid4().hex}.parquet"
    with parquet_writer(path, FEEDBACK_SCHEMA) as writer:
        writer.write_table(feedback_to_table(rows))
    await store.put_file(key, path)


@pytest.mark.parametrize(
    ("row", "negative"),
    [
        ({"label": "BAD "}, True),
        ({"label": "thumbs_down"}, True),
        ({"label": "good"}, False),
        ({"score": -0.5}, True),
        ({"score": 0}, False),
        ({"score": 1.0, "label": "wrong"}, True),
        ({"correction": "x"}, False),
    ],
)
def test_negative_rules(row: dict[str, Any], negative: bool) -> None:
    """Default rules: a negative label (case-folded) or a score below 0 is negative."""
    assert is_negative(row, CurationConfig()) is negative


def test_negative_rules_follow_the_config() -> None:
    """The label set and the score threshold are the task's; a null threshold ignores scores."""
    config = CurationConfig(negative_labels=("meh",), negative_score_below=None)
    assert is_negative({"label": "Meh"}, config)
    assert not is_negative({"label": "bad", "score": -9}, config)
    assert is_negative({"score": 2}, CurationConfig(negative_score_below=3))


def test_newest_correction_wins_and_the_file_wins_over_feedback() -> None:
    """Rows come newest first: a request's first correction stands; the file overrides."""
    told = verdicts([{"request_id": "r", "correction": "new"},
                     {"request_id": "r", "correction": "old"}], CurationConfig())  # fmt: skip
    assert told.corrections == {"r": "new"} and told.records == 2
    merged, overridden = merge_corrections({"r": "file"}, {"r": "new", "s": "fb"})
    assert merged == {"r": "file", "s": "fb"} and overridden == 1


async def test_negative_feedback_drops_and_corrections_teach(
    store: Store, local_uri: str, tmp_path: Path
) -> None:
    """Negative feedback drops an exchange (counted); a feedback correction, resolved or
    unresolved, replaces the teacher's answer (source correction, counted); a negative verdict
    on a corrected request does not drop it; a feedback stored twice counts once."""
    await put_records(store, tickets(DAY1, 20, users=20, tag="t"), tmp_path)
    later = DAY1 + timedelta(hours=2)
    twice = feedback("t-0003", later, label="bad", feedback_id="same")
    await put_feedback(store, [
        feedback("t-0001", later, score=-1.0),
        twice,
        {**twice, "ts": twice["ts"] + 1},
        feedback("t-0005", later, label="thumbs_down", correction='{"category": "billing"}'),
    ], tmp_path)  # fmt: skip
    await put_feedback(store, [feedback("t-0002", later, task="elsewhere", label="bad")], tmp_path)
    fixed = '{"category": "billing"}'
    unresolved = feedback("t-0006", later, task=UNRESOLVED, correction=fixed)
    await put_feedback(store, [unresolved], tmp_path)
    assert read_feedback(local_uri, task=TASK).num_rows == 3  # (request_id, feedback_id) once

    card = await build_snapshot(local_uri, TASK, TRAIN_ONLY)
    assert card.drops == {"negative_feedback": 2}
    _, splits, _ = await load_snapshot(local_uri, TASK, card.snapshot)
    by_id = {e.request_id: e for e in splits["train"]}
    assert "t-0001" not in by_id and "t-0003" not in by_id
    assert (by_id["t-0005"].source, by_id["t-0005"].label) == ("correction", "billing")
    assert by_id["t-0006"].completion == '{"category": "billing"}'
    assert card.sources["train"] == {"correction": 2, "teacher": 16}
    assert card.feedback_corrections["train"] == 2
    assert card.feedback == {"records": 4, "negative_requests": 3, "corrections": 2,
                             "overridden_by_file": 0, "on_frozen_tests": 0}  # fmt: skip
    markdown = await store.get(snapshot_prefix(TASK, card.snapshot) + "card.md")
    assert b"## Feedback" in markdown


async def test_feedback_off_changes_nothing(store: Store, local_uri: str, tmp_path: Path) -> None:
    """With ``feedback: false`` the build ignores the feedback table."""
    await put_records(store, tickets(DAY1, 8, users=8, tag="t"), tmp_path)
    await put_feedback(store, [feedback("t-0001", DAY1, label="bad")], tmp_path)
    card = await build_snapshot(local_uri, TASK, TRAIN_ONLY.model_copy(update={"feedback": False}))
    assert card.drops == {} and card.feedback == {} and card.examples["train"] == 8


async def test_frozen_test_sets_ignore_feedback(
    store: Store, local_uri: str, tmp_path: Path
) -> None:
    """Feedback on examples of the frozen test sets changes neither set (byte for byte); the
    card counts it as on_frozen_tests."""
    await put_records(store, tickets(DAY1, 120, users=60, tag="a"), tmp_path)
    first = await build_snapshot(local_uri, TASK, CLASSIFY, now=DAY2)
    frozen = {s: await store.get(f"{frozen_prefix(TASK)}{s}.parquet") for s in TEST_SPLITS}
    _, splits, _ = await load_snapshot(local_uri, TASK, first.snapshot)
    tested = [e.request_id for e in splits["test-indist"]][:2]
    assert len(tested) == 2
    await put_feedback(store, [
        feedback(tested[0], DAY2, label="bad"),
        feedback(tested[1], DAY2, correction='{"category": "billing"}'),
    ], tmp_path)  # fmt: skip

    second = await build_snapshot(local_uri, TASK, CLASSIFY, now=DAY2 + timedelta(hours=1))
    for split in TEST_SPLITS:
        copied = await store.get(f"{snapshot_prefix(TASK, second.snapshot)}{split}.parquet")
        assert copied == frozen[split]
    assert second.tests_reused and second.feedback["on_frozen_tests"] == 2
    assert second.feedback_corrections == {"train": 0, "test-indist": 0, "test-balanced": 0}


@pytest.fixture
def local_uri(tmp_path: Path) -> str:
    return f"file://{tmp_path / 'store'}"


def test_card_of_an_older_build_still_reads() -> None:
    """A card written before feedback existed loads, with empty feedback counts."""
    from trainer.dataset import DatasetCard

    doc = {"task": "t", "snapshot": "s", "created": "c", "since": None, "until": None,
           "seed": 0, "records_in": 0, "examples": {}, "groups": {}, "classes": {},
           "sources": {}, "drops": {}, "tests_from": None, "tests_reused": False,
           "config": {}}  # fmt: skip
    card = DatasetCard.from_json(orjson.dumps(doc))
    assert card.feedback == {} and card.feedback_corrections == {}
