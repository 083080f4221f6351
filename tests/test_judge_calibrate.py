"""``protege judge calibrate``: agreement with human labels, stored, and the flagged check."""

from __future__ import annotations

import asyncio
import csv
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
import yaml

from core.errors import JudgeError
from core.judging import (
    JudgeItem,
    Judgement,
    Labelled,
    load_judge_settings,
    measure,
    read_calibration,
    read_labels,
    standing,
    standing_of,
)
from core.keys import calibration_key
from core.store import open_store
from protege.cli import main
from tests.fake_judge import FakeJudge

# The fake judge passes an answer unless it says "wrong". Against these labels:
# human pass 6 -> judge pass 5 (p1..p5), judge fail 1 (p6): TPR 5/6
# human fail 4 -> judge fail 2 (f1, f2), judge pass 2 (f3, f4): TNR 2/4
# agreement 7/10
LABELS = [
    *({"id": f"p{i}", "answer": f"good answer {i}", "label": "pass"} for i in range(1, 6)),
    {"id": "p6", "answer": "wrong-footed but right", "label": "pass"},
    {"id": "f1", "answer": "wrong total", "label": "fail"},
    {"id": "f2", "answer": "WRONG date", "label": "fail"},
    {"id": "f3", "answer": "made-up fact", "label": "fail"},
    {"id": "f4", "answer": "another invention", "label": "fail"},
]
DISAGREE = {"p6", "f3", "f4"}


@pytest.fixture
def judge_server() -> Iterator[FakeJudge]:
    with FakeJudge() as fake:
        yield fake


def labels_file(tmp_path: Path, rows: list[dict[str, Any]] = LABELS, name: str = "l.jsonl") -> Path:
    path = tmp_path / name
    if name.endswith(".csv"):
        with path.open("w", newline="") as out:
            writer = csv.DictWriter(out, fieldnames=["id", "request", "answer", "label"])
            writer.writeheader()
            for row in rows:
                writer.writerow({"request": '[{"role": "user", "content": "Sum up"}]', **row})
    else:
        lines = [orjson.dumps({"request": [{"role": "user", "content": "Sum up"}], **r})
                 for r in rows]  # fmt: skip
        path.write_bytes(b"\n".join(lines) + b"\n")
    return path


def config_file(tmp_path: Path, fake: FakeJudge, **judges: Any) -> Path:
    path = tmp_path / "protege.yaml"
    section: dict[str, Any] = {
        "endpoint": {"base_url": fake.base_url, "model": "judge-1"},
        "max_calls_per_s": 1000,
        "retry_base_s": 0.01,
        "max_retries": 1,
        "tasks": {"t": {"criteria": [
            {"name": "faithful", "question": "Is it faithful?", "min_agreement": 0.8},
            {"name": "lenient", "question": "Is it roughly faithful?", "min_agreement": 0.6},
        ]}},
    }  # fmt: skip
    section.update(judges)
    path.write_text(yaml.safe_dump({"store": f"file://{tmp_path / 'store'}", "judges": section}))
    return path


def calibrate(config: Path, labels: Path, criterion: str = "faithful") -> int:
    return main(["judge", "calibrate", "--task", "t", "--criterion", criterion,
                 "--labels", str(labels), "--config", str(config)])  # fmt: skip


def stored(config: Path, criterion: str) -> Any:
    async def read() -> Any:
        async with open_store(load_judge_settings(config, env={}).store) as store:
            return await read_calibration(store, "t", criterion)

    return asyncio.run(read())


@pytest.mark.parametrize("name", ["labels.jsonl", "labels.csv"])
def test_calibration_numbers_and_disagreements(
    judge_server: FakeJudge, tmp_path: Path, capsys: pytest.CaptureFixture[str], name: str
) -> None:
    """Known disagreements give exact agreement, TPR and TNR; below min_agreement exits 3."""
    config = config_file(tmp_path, judge_server)
    assert calibrate(config, labels_file(tmp_path, name=name)) == 3
    out = capsys.readouterr().out
    assert "agreement 70.0% (min 80%), TPR 83.3%, TNR 50.0%" in out
    assert "judge pass/human pass 5, judge fail/human fail 2" in out
    listed = {line.split("\t")[0].strip() for line in out.splitlines() if "\t" in line}
    assert listed == DISAGREE
    assert "  p6\tpass\tfail\trule says fail" in out
    saved = stored(config, "faithful")
    assert (saved.agreement, saved.tpr, saved.tnr) == (0.7, 5 / 6, 0.5)
    assert (saved.tp, saved.tn, saved.fp, saved.fn, saved.n) == (5, 2, 2, 1, 10)
    criterion = load_judge_settings(config, env={}).criterion("t", "faithful")
    assert standing(criterion, saved).state == "below" and standing(criterion, saved).flagged


def test_at_or_above_min_agreement_exits_0_and_is_not_flagged(
    judge_server: FakeJudge, tmp_path: Path
) -> None:
    """At or above min_agreement: exit 0, stored, and the criterion is not flagged."""
    config = config_file(tmp_path, judge_server)
    assert calibrate(config, labels_file(tmp_path), "lenient") == 0
    criterion = load_judge_settings(config, env={}).criterion("t", "lenient")
    assert not standing(criterion, stored(config, "lenient")).flagged


def test_a_second_calibration_asks_the_judge_nothing(
    judge_server: FakeJudge, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Re-calibrating goes through the cache: no calls, same numbers, reasons still shown."""
    config, labels = config_file(tmp_path, judge_server), labels_file(tmp_path)
    calibrate(config, labels)
    first = capsys.readouterr().out
    calls = judge_server.calls
    assert calls == 10
    assert calibrate(config, labels) == 3
    second = capsys.readouterr().out
    assert judge_server.calls == calls
    assert "judge calls 0 (cached 10" in second
    assert first.splitlines()[:4] == second.splitlines()[:4]
    assert "  p6\tpass\tfail\trule says fail" in second


def test_judge_errors_are_reported_per_item_and_exit_1(
    judge_server: FakeJudge, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Unreadable verdicts are each item's error; the calibration is shown, not stored."""
    judge_server.mode = "garbage"
    config = config_file(tmp_path, judge_server)
    assert calibrate(config, labels_file(tmp_path)) == 1
    out = capsys.readouterr().out
    assert "errors 10" in out and "not stored" in out
    assert stored(config, "faithful") is None


def test_a_failing_judge_mid_run_is_not_a_crash(
    judge_server: FakeJudge, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A judge failing one item mid-run is that item's error (exit 1), never a crash."""
    judge_server.failures = [500, 500]  # the first item's call and its one retry
    config = config_file(tmp_path, judge_server, max_concurrency=1)
    assert calibrate(config, labels_file(tmp_path)) == 1
    out = capsys.readouterr().out
    assert "errors 1" in out and "HTTP 500 (after 2 attempts)" in out


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ('{"answer": "a", "label": "maybe"}\n', "label must be pass or fail"),
        ('{"answer": 3, "label": "pass"}\n', "answer must be a string"),
        ("not json\n", "is not JSON"),
        ("\n", "holds no items"),
    ],
)
def test_a_bad_labels_file_exits_1_naming_the_line(
    judge_server: FakeJudge, tmp_path: Path, capsys: pytest.CaptureFixture[str],
    text: str, problem: str,
) -> None:  # fmt: skip
    """A bad labels file exits 1 with the problem named, before any judge call."""
    labels = tmp_path / "bad.jsonl"
    labels.write_text(text)
    assert calibrate(config_file(tmp_path, judge_server), labels) == 1
    assert problem in capsys.readouterr().err and judge_server.calls == 0


def test_an_unknown_criterion_is_a_config_error(judge_server: FakeJudge, tmp_path: Path) -> None:
    """An unknown criterion is a config error (exit 2), before any judge call."""
    assert calibrate(config_file(tmp_path, judge_server), labels_file(tmp_path), "nope") == 2
    assert judge_server.calls == 0


def test_a_tasks_only_criterion_needs_no_name(
    judge_server: FakeJudge, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``--criterion`` may be left out when the task has one criterion; with several it is
    asked for, naming them (exit 2)."""
    labels = labels_file(tmp_path)
    several = config_file(tmp_path, judge_server)
    args = ["judge", "calibrate", "--task", "t", "--labels", str(labels)]
    assert main([*args, "--config", str(several)]) == 2
    captured = capsys.readouterr()
    assert "--criterion is needed" in captured.err + captured.out
    one = config_file(tmp_path, judge_server, tasks={"t": {"criteria": [
        {"name": "lenient", "question": "Is it roughly faithful?", "min_agreement": 0.6}]}})
    assert main([*args, "--config", str(one)]) == 0
    assert stored(one, "lenient").agreement == 0.7


def test_standing_is_uncalibrated_then_stale_when_the_question_changes(
    judge_server: FakeJudge, tmp_path: Path
) -> None:
    """No calibration: flagged as uncalibrated; a changed question makes the stored one stale."""
    config = config_file(tmp_path, judge_server)
    settings = load_judge_settings(config, env={})
    criterion = settings.criterion("t", "lenient")

    async def state(c: Any) -> str:
        async with open_store(settings.store) as store:
            return (await standing_of(store, c)).state

    assert asyncio.run(state(criterion)) == "uncalibrated"
    calibrate(config, labels_file(tmp_path), "lenient")
    assert asyncio.run(state(criterion)) == "calibrated"
    changed = load_judge_settings(config, env={}, judges={"tasks": {"t": {"criteria": [
        {"name": "lenient", "question": "Another question?", "min_agreement": 0.6}]}}})
    assert asyncio.run(state(changed.criterion("t", "lenient"))) == "stale"  # fmt: skip
    assert (tmp_path / "store" / calibration_key("t", "lenient")).is_file()


def test_measure_leaves_errors_out_of_the_rates() -> None:
    """Errors and skipped items count apart; agreement is over the judged ones (pure)."""
    settings = load_judge_settings(env={}, judges={"endpoint": {"model": "m"}, "tasks": {
        "t": {"criteria": [{"name": "c", "question": "q"}]}}})  # fmt: skip
    labelled = [Labelled(JudgeItem("a", id=str(i)), lab)
                for i, lab in enumerate(["pass", "pass", "fail", "fail"])]  # fmt: skip
    judged = [Judgement("pass", ""), Judgement("error", "x"), Judgement("fail", ""),
              Judgement("skipped", "budget")]  # fmt: skip
    result = measure(settings.criterion("t", "c"), labelled, judged)
    assert (result.agreement, result.tpr, result.tnr) == (1.0, 1.0, 1.0)
    assert (result.errors, result.skipped, result.complete) == (1, 1, False)
    assert [d.id for d in result.disagreements] == ["1", "3"]


def test_read_labels_csv_with_a_string_request_and_default_ids(tmp_path: Path) -> None:
    """CSV cells: a non-JSON request stays a string, labels any case, ids default to lines."""
    path = tmp_path / "l.csv"
    path.write_text('request,answer,reference,label\n"[not json",a,r,PASS\nplain,"b, c",,fail\n')
    rows = read_labels(path)
    seen = [(r.item.request, r.item.answer, r.item.reference, r.label, r.item.id) for r in rows]
    assert seen == [("[not json", "a", "r", "pass", "2"), ("plain", "b, c", None, "fail", "3")]
    with pytest.raises(JudgeError, match="cannot read"):
        read_labels(tmp_path / "missing.jsonl")
