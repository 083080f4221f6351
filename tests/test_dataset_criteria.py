"""Dataset builds that screen the teacher's answers with the task's criteria."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest

from core.judging import load_judge_settings
from core.keys import frozen_prefix, snapshot_prefix
from core.store import open_store
from tests.fake_judge import FakeJudge
from tests.test_dataset import DAY1, DAY2, TASK, exchange, prompt, put_records
from trainer.card import DatasetCard
from trainer.dataset import build_snapshot, load_snapshot
from trainer.examples import TEST_SPLITS
from trainer.settings import CurationConfig, LabelRule

CONFIG = CurationConfig(label=LabelRule(json_path="$.category"), classes=("bug", "billing"),
                        test_fraction=0.25, test_balanced_per_class=5)  # fmt: skip
CRITERIA: list[dict[str, Any]] = [
    {"name": "correct", "question": "Is the category right?"},
    {"name": "grounded", "question": "Same as the reference?",
     "uses": ["request", "reference", "answer"]},
]  # fmt: skip


def rows(n: int) -> list[dict[str, Any]]:
    """``n`` exchanges, one user each; every fifth answer says "wrong" (the fake judge fails it)."""
    out = []
    for i in range(n):
        answer = {"category": "bug" if i % 2 else "billing"}
        if i % 5 == 0:
            answer["note"] = "wrong"
        out.append(exchange(f"c-{i:04}", DAY1 + timedelta(minutes=i), prompt(f"c-{i}"),
                            orjson.dumps(answer).decode(), user=f"user-{i}"))  # fmt: skip
    return out


@pytest.fixture
def judge() -> Iterator[FakeJudge]:
    with FakeJudge() as fake:
        yield fake


def settings(uri: str, judge: FakeJudge, criteria: list[dict[str, Any]] = CRITERIA,
             **judges: Any) -> Any:  # fmt: skip
    section = {"endpoint": {"base_url": judge.base_url, "model": "judge-1"},
               "max_calls_per_s": 10_000, "max_concurrency": 8, "max_retries": 0,
               "tasks": {TASK: {"criteria": criteria}}, **judges}  # fmt: skip
    return load_judge_settings(env={}, store=uri, judges=section)


async def stored(tmp_path: Path, n: int = 80) -> str:
    uri = f"file://{tmp_path / 'store'}"
    async with open_store(uri) as store:
        await put_records(store, rows(n), tmp_path)
    return uri


def wrong(examples: list[Any]) -> int:
    return sum("wrong" in e.completion for e in examples)


async def test_failing_answers_are_dropped_and_counted_per_criterion(
    tmp_path: Path, judge: FakeJudge
) -> None:
    """Every answer a criterion fails is dropped and counted under it; a criterion using the
    reference is not applied and named; a rebuild asks the judge nothing (its cache)."""
    uri = await stored(tmp_path)
    card = await build_snapshot(uri, TASK, CONFIG, now=DAY2, judges=settings(uri, judge))
    _, splits, _ = await load_snapshot(uri, TASK, card.snapshot)
    assert all(wrong(splits[s]) == 0 for s in splits)
    assert card.dropped_by_criterion == {"correct": 16} and card.drops["criteria_failed"] == 16
    assert card.criteria["correct"] == {"pass": 64, "fail": 16, "error": 0, "skipped": 0}
    assert list(card.criteria_not_applied) == ["grounded"]
    assert "reference" in card.criteria_not_applied["grounded"]
    assert judge.calls == 80 and card.judge_usage["calls"] == 80
    assert card.criteria_flagged == {"correct": "uncalibrated"}  # it screens, flagged
    markdown = card.to_markdown()
    assert "| correct (flagged: uncalibrated) | 64 | 16 | 0 | 0 |" in markdown
    assert "grounded | not applied" in markdown

    again = await build_snapshot(uri, TASK, CONFIG, now=DAY2 + timedelta(hours=1),
                                 judges=settings(uri, judge))  # fmt: skip
    assert judge.calls == 80 and again.judge_usage["calls"] == 0
    assert again.judge_usage["cached"] == again.judge_usage["examples"] > 0


async def test_judge_errors_keep_their_examples_and_are_counted(
    tmp_path: Path, judge: FakeJudge
) -> None:
    """A judge that answers no valid verdict drops nothing: every example is kept, and the
    errors are counted apart from passes."""
    uri = await stored(tmp_path, 40)
    judge.mode = "garbage"
    card = await build_snapshot(uri, TASK, CONFIG, now=DAY2, judges=settings(uri, judge))
    assert card.criteria["correct"] == {"pass": 0, "fail": 0, "error": 40, "skipped": 0}
    assert card.dropped_by_criterion == {"correct": 0} and "criteria_failed" not in card.drops
    assert sum(card.examples[s] for s in ("train", "test-indist")) == 40


async def test_a_spent_budget_skips_and_keeps(tmp_path: Path, judge: FakeJudge) -> None:
    """Past the judge's budget the rest are skipped: kept, and counted as skipped."""
    uri = await stored(tmp_path, 40)
    card = await build_snapshot(uri, TASK, CONFIG, now=DAY2,
                                judges=settings(uri, judge, budget={"calls": 10}))  # fmt: skip
    counts = card.criteria["correct"]
    assert counts["skipped"] == 30 and counts["pass"] + counts["fail"] == 10 == judge.calls
    assert card.drops.get("criteria_failed", 0) == counts["fail"]


@pytest.mark.parametrize("judges", ["none", "no-criteria"])
async def test_without_criteria_no_judge_is_called(
    tmp_path: Path, judge: FakeJudge, judges: str
) -> None:
    """No judges section, or the task without criteria: nothing judged, nothing dropped."""
    uri = await stored(tmp_path, 40)
    chosen = None if judges == "none" else settings(uri, judge, criteria=[])
    card = await build_snapshot(uri, TASK, CONFIG, now=DAY2, judges=chosen)
    assert judge.calls == 0 and card.criteria == {} and card.dropped_by_criterion == {}
    assert "criteria_failed" not in card.drops


async def test_frozen_test_sets_are_never_judged(tmp_path: Path, judge: FakeJudge) -> None:
    """Test sets frozen by an earlier build are copied as they are, failing answers and all;
    only the training examples are judged."""
    uri = await stored(tmp_path)
    first = await build_snapshot(uri, TASK, CONFIG, now=DAY2)
    async with open_store(uri) as store:
        frozen = {s: await store.get(f"{frozen_prefix(TASK)}{s}.parquet") for s in TEST_SPLITS}
    second = await build_snapshot(uri, TASK, CONFIG, now=DAY2 + timedelta(hours=1),
                                  judges=settings(uri, judge))  # fmt: skip
    _, splits, _ = await load_snapshot(uri, TASK, second.snapshot)
    async with open_store(uri) as store:
        for split in TEST_SPLITS:
            key = f"{snapshot_prefix(TASK, second.snapshot)}{split}.parquet"
            assert await store.get(key) == frozen[split]
    assert first.tests_from == second.tests_from and wrong(splits["test-indist"]) > 0
    assert wrong(splits["train"]) == 0 and judge.calls == first.examples["train"]


def test_an_old_card_still_loads() -> None:
    """A card written before criteria and relabelling loads with those fields empty."""
    doc: dict[str, Any] = {
        "task": "t", "snapshot": "s", "created": "c", "since": None, "until": None, "seed": 0,
        "records_in": 0, "examples": {}, "groups": {}, "classes": {}, "sources": {}, "drops": {},
        "tests_from": None, "tests_reused": False, "config": {}, "feedback": {},
    }  # fmt: skip
    card = DatasetCard.from_json(orjson.dumps(doc))
    assert card.criteria == {} and card.dropped_by_criterion == {} and card.relabel == {}
    assert "## Teacher answers judged" not in card.to_markdown()
