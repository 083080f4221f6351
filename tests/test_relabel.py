"""``protege dataset relabel``: the teacher's majority vote, as a new snapshot; and the votes."""

from __future__ import annotations

import random
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest

from core.errors import ConfigError
from core.judging import load_judge_settings
from core.keys import frozen_prefix, snapshot_prefix
from core.store import open_store
from protege.cli import main
from tests.noisy_teacher import ORIGINAL, NoisyTeacher, noisy_answer, truth
from tests.stored import record
from tests.test_dataset import DAY1, DAY2, put_records
from trainer import synthetic
from trainer.dataset import build_snapshot, load_snapshot
from trainer.examples import TEST_SPLITS
from trainer.relabel import AUDIT, RELABELLED, Options, relabel_snapshot
from trainer.settings import CurationConfig, LabelRule, RelabelConfig
from trainer.votes import field_consensus, label_consensus, pick, render_like

TASK = "tickets"
MODEL = "teacher-large"
TICKETS = CurationConfig(
    label=LabelRule(json_path="$.category"),
    classes=tuple(sorted(synthetic.CATEGORIES)),
    near_duplicate_distance=-1,
    test_fraction=0.2,
)
FAST = RelabelConfig(max_concurrency=16, max_calls_per_s=100_000, retry_base_s=0.01)


def exchanges(n: int, answer: Any = None) -> tuple[list[dict[str, Any]], dict[str, str]]:
    """``n`` ticket exchanges, one user each, answered by the noisy teacher's original draw
    (or ``answer(ticket)``); and request id -> the right category."""
    rng = random.Random(7)
    rows, right = [], {}
    for i in range(n):
        text = f"{synthetic.ticket(rng)[0]} Ticket number {i}."
        row = record(f"r-{i:04}", DAY1 + timedelta(seconds=i), TASK)
        request = {"model": MODEL, "messages": synthetic.messages(text)}
        row["request"] = orjson.dumps(request).decode()
        said = answer(text) if answer else noisy_answer(text, ORIGINAL)
        row["response"] = orjson.dumps({"choices": [{"message": {"content": said}}]}).decode()
        row["user"] = f"user-{i}"
        rows.append(row)
        right[row["request_id"]] = truth(text)
    return rows, right


@pytest.fixture
def noisy() -> Iterator[NoisyTeacher]:
    with NoisyTeacher() as fake:
        yield fake


async def built(
    tmp_path: Path, n: int, answer: Any = None, curation: CurationConfig = TICKETS
) -> tuple[str, dict[str, str]]:
    uri = f"file://{tmp_path / 'store'}"
    rows, right = exchanges(n, answer)
    async with open_store(uri) as store:
        await put_records(store, rows, tmp_path)
    await build_snapshot(uri, TASK, curation, now=DAY2)
    return uri, right


def judges_for(uri: str, teacher: str, **judges: Any) -> Any:
    return load_judge_settings(env={}, store=uri, teacher={"base_url": teacher}, judges=judges)


def accuracy(examples: list[Any], right: dict[str, str]) -> float:
    return float(sum(e.label == right[e.request_id] for e in examples) / len(examples))


async def test_relabelling_noisy_labels_with_five_samples_makes_them_right(
    tmp_path: Path, noisy: NoisyTeacher
) -> None:
    """A teacher wrong 20 % of the time, asked 5 more times per example: the kept labels are
    at least 98 % right; the examples without consensus are dropped and counted; the test sets
    are copied byte for byte; the card counts changed / unchanged / dropped."""
    uri, right = await built(tmp_path, 400)
    source, before, _ = await load_snapshot(uri, TASK)
    judges = judges_for(uri, noisy.base_url)
    card = await relabel_snapshot(uri, TASK, TICKETS, judges, FAST, Options(samples=5),
                                  now=DAY2 + timedelta(hours=1))  # fmt: skip
    _, after, loaded = await load_snapshot(uri, TASK, card.snapshot)

    was, now = accuracy(before["train"], right), accuracy(after["train"], right)
    print(f"train label accuracy: {was:.4f} before, {now:.4f} after relabelling "
          f"({len(after['train'])} of {len(before['train'])} kept)")  # fmt: skip
    assert was < 0.85 and now >= 0.98
    counts = card.relabel["splits"]["train"]
    assert sum(counts.values()) == len(before["train"]) and counts["dropped"] > 0
    assert len(after["train"]) == counts["changed"] + counts["unchanged"]
    assert card.relabel["dropped"] == {"no_consensus": counts["dropped"]}
    assert card.sources["train"].get(RELABELLED, 0) == counts["changed"] > 0
    assert loaded.relabel == card.relabel and card.relabel["from"] == source
    originals = {e.request_id: e for e in before["train"]}
    for e in after["train"]:
        changed = e.completion != originals[e.request_id].completion
        assert (e.source == RELABELLED) == changed and e.label == orjson.loads(e.completion)[
            "category"]  # fmt: skip
    bodies = [r.json for r in noisy.received]
    assert len(bodies) == 5 * len(before["train"])
    assert {b["model"] for b in bodies} == {MODEL} and {b["temperature"] for b in bodies} == {1}
    async with open_store(uri) as store:
        for split in TEST_SPLITS:
            old = await store.get(f"{snapshot_prefix(TASK, source)}{split}.parquet")
            assert await store.get(f"{snapshot_prefix(TASK, card.snapshot)}{split}.parquet") == old
        audit = await store.get(snapshot_prefix(TASK, card.snapshot) + AUDIT)
    assert audit and card.tests_reused and not card.relabel["tests_relabelled"]
    assert "## Relabelled" in card.to_markdown() and "WARNING" not in card.to_markdown()


async def test_relabelled_tests_are_said_loudly_and_frozen_ones_kept(
    tmp_path: Path, noisy: NoisyTeacher
) -> None:
    """With ``relabel_tests`` the snapshot's test sets are voted on too and the card warns;
    the task's frozen test sets stay as they were."""
    uri, _ = await built(tmp_path, 80)
    async with open_store(uri) as store:
        frozen = await store.get(f"{frozen_prefix(TASK)}test-indist.parquet")
    judges = judges_for(uri, noisy.base_url)
    card = await relabel_snapshot(uri, TASK, TICKETS, judges, FAST,
                                  Options(samples=3, relabel_tests=True))  # fmt: skip
    assert card.relabel["tests_relabelled"] and not card.tests_reused
    assert set(card.relabel["splits"]) == {"train", *TEST_SPLITS}
    assert "WARNING: THE TEST SETS OF THIS SNAPSHOT WERE RELABELLED" in card.to_markdown()
    async with open_store(uri) as store:
        assert await store.get(f"{frozen_prefix(TASK)}test-indist.parquet") == frozen


async def test_teacher_errors_drop_their_examples(tmp_path: Path, noisy: NoisyTeacher) -> None:
    """An example the teacher cannot answer (HTTP 400) is dropped and counted as
    ``teacher_error``; the others are voted on."""
    uri, _ = await built(tmp_path, 40)
    noisy.broken = ("Ticket number 1.", "Ticket number 2.")
    _, before, _ = await load_snapshot(uri, TASK)
    broken = sum(e.messages[-1]["content"].endswith(noisy.broken) for e in before["train"])
    card = await relabel_snapshot(uri, TASK, TICKETS, judges_for(uri, noisy.base_url), FAST,
                                  Options(samples=3))  # fmt: skip
    assert broken > 0 and card.relabel["dropped"].get("teacher_error") == broken


def test_a_free_text_task_without_judges_is_refused(tmp_path: Path, noisy: NoisyTeacher) -> None:
    """Relabelling a free-text task with no pairwise judge is refused with a message naming
    the setting, before the teacher is asked anything."""
    import asyncio

    text = CurationConfig(near_duplicate_distance=-1, test_fraction=0.2)
    uri, _ = asyncio.run(built(tmp_path, 20, lambda t: f"Thanks, we are on it: {t}", text))
    assert asyncio.run(load_snapshot(uri, TASK))[2].examples["train"] > 10
    config = tmp_path / "protege.yaml"
    config.write_text(f"store: {uri}\nteacher:\n  base_url: {noisy.base_url}\n")
    with pytest.raises(ConfigError, match=rf"free text.*judges\.tasks\.{TASK}\.pairwise"):
        asyncio.run(relabel_snapshot(uri, TASK, text, judges_for(uri, noisy.base_url), FAST,
                                     Options()))  # fmt: skip
    code = main(["dataset", "relabel", "--task", TASK, "--config", str(config)])
    assert code == 2 and noisy.received == []


@pytest.mark.parametrize(
    ("original", "value", "written"),
    [
        ('{"category":"bug"}', {"category": "billing"}, '{"category":"billing"}'),
        ('{"category": "bug", "n": 1}', {"category": "billing", "n": 1},
         '{"category": "billing", "n": 1}'),
        ('{\n  "a": 1\n}', {"a": 2}, '{\n  "a": 2\n}'),
        ('```json\n{"a": 1}\n```', {"a": 2}, '```json\n{"a": 2}\n```'),
        (' {"a":"é"}\n', {"a": "ü"}, ' {"a":"ü"}\n'),
    ],
)  # fmt: skip
def test_a_new_answer_is_written_like_the_original(original: str, value: Any, written: str) -> None:
    """The winning values keep the original's separators, indentation, fence and whitespace."""
    assert render_like(original, value) == written


def test_fields_are_voted_one_by_one_in_the_original_order() -> None:
    """Each field's majority wins, in the original's key order; a field short of the
    consensus drops the example; an agreeing vote keeps the original text as it was."""
    original = '{"b": 1, "a": "x"}'
    samples = ['{"a": "y", "b": 1}', '{"a": "y", "b": 1}', '{"a": "y", "b": 2}', "not json"]
    voted = field_consensus(original, samples, 0.6)
    assert voted.completion == '{"b": 1, "a": "y"}' and voted.agreement == pytest.approx(0.6)
    assert field_consensus(original, samples, 0.7).reason == "no_consensus"
    assert field_consensus(original, [original, original], 0.6).completion == original


def test_labels_are_voted_and_outsiders_refused() -> None:
    """The majority label wins (a tie: the original's); a label outside the classes drops."""
    rule = LabelRule(json_path="$.category")
    out = label_consensus('{"category":"bug","why":"x"}', ['{"category":"billing"}'] * 3 +
                          ['{"category":"bug"}'], rule, ("bug", "billing"), 0.6)  # fmt: skip
    assert out.completion == '{"category":"billing","why":"x"}'
    tie = label_consensus('{"category":"bug"}', ['{"category":"billing"}'], rule, (), 0.5)
    assert tie.completion == '{"category":"bug"}'
    assert label_consensus('{"category":"x"}', ['{"category":"x"}'], rule, ("bug",),
                           0.6).reason == "unknown_label"  # fmt: skip


def test_the_answer_as_good_as_the_most_others_wins() -> None:
    """Pairwise: the candidate judged as good as the most others wins when it reaches the
    consensus; a missing verdict leaves it unjudged."""
    verdicts = {(i, j): "pass" if i == 2 or j == 1 else "fail"
                for i in range(3) for j in range(3) if i != j}  # fmt: skip
    assert pick(3, verdicts, 0.6) == (2, 1.0, None)
    assert pick(3, {**verdicts, (2, 0): "error"}, 0.6) == (None, 0.0, "unjudged")
    assert pick(3, {k: "fail" for k in verdicts}, 0.6)[2] == "no_consensus"


def test_free_text_is_chosen_by_the_pairwise_judge(tmp_path: Path) -> None:
    """Free text with the task's pairwise judge: an original answer the judge finds worse than
    the teacher's samples is replaced by one of them; an equal one stays as it was."""
    import asyncio

    from tests.fake_judge import FakeJudge, judged_answer
    from tests.fake_teacher import FakeTeacher

    text = CurationConfig(near_duplicate_distance=-1, test_fraction=0.2)
    said = {True: "a wrong answer", False: "a fine answer"}
    uri, _ = asyncio.run(built(tmp_path, 20, lambda t: said["number 1" in t], text))
    worse = FakeJudge(rule=lambda user: not judged_answer(user).startswith("a wrong"))
    with FakeTeacher() as teacher, worse as judge:
        judges = judges_for(uri, teacher.base_url, endpoint={"base_url": judge.base_url,
                            "model": "j"}, max_calls_per_s=10_000,
                            tasks={TASK: {"pairwise": True}})  # fmt: skip
        card = asyncio.run(relabel_snapshot(uri, TASK, text, judges, FAST, Options(samples=2)))
        _, after, _ = asyncio.run(load_snapshot(uri, TASK, card.snapshot))
    counts = card.relabel["splits"]["train"]
    assert counts["changed"] == sum(e.source == RELABELLED for e in after["train"]) > 0
    assert all(e.completion.startswith("echo:") for e in after["train"] if e.source == RELABELLED)
    assert not any(e.completion == said[True] for e in after["train"])
    assert 0 < judge.calls <= 6 * len(after["train"]) and card.relabel["kind"] == "text"
