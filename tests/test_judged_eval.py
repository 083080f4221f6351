"""Judged evaluation (trainer.judged): on a free-text task where character similarity prefers
wrong near-copies, the judges' pairwise rate is the right one; cached, flagged, reported, and
a publish rule that stops publication."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.fake_judge import FakeJudge
from tests.refund_judging import TASK, half_right, judge_settings, refund_rule, refund_tests
from trainer.evaluate import evaluate
from trainer.examples import Example
from trainer.judged import judge_evaluation, judge_for_publication
from trainer.pipeline import RUN_FILE, BelowBaseline, publish_run
from trainer.report import write_report


@pytest.fixture
def judge() -> Iterator[FakeJudge]:
    with FakeJudge(rule=refund_rule) as fake:
        yield fake


def _evaluation(tests: dict[str, list[Example]]) -> Any:
    """The student paraphrases the even tickets (right) and flips the odd ones (wrong)."""

    def base(examples: list[Example]) -> list[str]:
        return ["I am not sure." for _ in examples]

    return evaluate(tests, {"student": half_right(tests), "base": base})


def test_the_judge_rates_what_similarity_gets_wrong(tmp_path: Path, judge: FakeJudge) -> None:
    """Half the student's answers are right paraphrases and half wrong near-copies: ROUGE-L
    scores the wrong ones higher, the pairwise judge passes exactly the right half; the
    teacher's answers all start with a verdict, and so do the student's."""
    tests = refund_tests()
    evaluation = _evaluation(tests)
    records = {r.request_id: r for r in evaluation.scores["test-indist"]["student"].records}
    wrong = [r.score for i, r in records.items() if int(i[1:]) % 2]
    right = [r.score for i, r in records.items() if not int(i[1:]) % 2]
    assert min(wrong) > max(right)  # similarity prefers every wrong answer to every right one

    judged = judge_evaluation(judge_settings(tmp_path, judge), TASK, tests, evaluation)
    assert judged is not None
    assert judged.criteria == ["verdict-first", "as-good-as-teacher"]
    assert list(judged.rates) == ["test-indist"]  # the empty set is not judged
    assert judged.student_rate("test-indist", "as-good-as-teacher") == 0.5
    rates = judged.rates["test-indist"]
    assert rates["verdict-first"]["teacher"].rate == 1.0
    assert rates["verdict-first"]["student"].rate == 1.0
    assert "teacher" not in rates["as-good-as-teacher"]
    # Two answer sets for the criterion and one pairwise, each distinct judgement asked once.
    assert 0 < judge.calls <= 20 * 3 and judged.usage["calls"] == judge.calls
    assert judged.flagged == {"verdict-first": "uncalibrated", "as-good-as-teacher": "uncalibrated"}


def test_judging_again_costs_nothing(tmp_path: Path, judge: FakeJudge) -> None:
    """The same answers judged a second time come from the store's cache."""
    tests, settings = refund_tests(), judge_settings(tmp_path, judge)
    evaluation = _evaluation(tests)
    first = judge_evaluation(settings, TASK, tests, evaluation)
    calls = judge.calls
    second = judge_evaluation(settings, TASK, tests, evaluation)
    assert judge.calls == calls and first is not None and second is not None
    assert second.rates == first.rates
    assert second.usage["cached"] == 60 and second.usage["calls"] == 0  # every item


def test_a_garbage_judge_never_passes(tmp_path: Path, judge: FakeJudge) -> None:
    """Verdicts in no valid form are errors: no rate, counted apart."""
    judge.mode = "garbage"
    tests = refund_tests()
    judged = judge_evaluation(judge_settings(tmp_path, judge), TASK, tests, _evaluation(tests))
    assert judged is not None
    rate = judged.rates["test-indist"]["as-good-as-teacher"]["student"]
    assert (rate.rate, rate.passed, rate.errors) == (None, 0, 20)
    assert judged.meets({"as-good-as-teacher": 0.1}) == [
        "as-good-as-teacher on test-indist: not judged < 0.1"
    ]


def test_no_judges_no_calls(tmp_path: Path, judge: FakeJudge) -> None:
    """A task without judges is not judged."""
    tests = refund_tests()
    settings = judge_settings(tmp_path, judge)
    assert judge_evaluation(settings, "another-task", tests, _evaluation(tests)) is None
    assert judge.calls == 0


def test_the_publish_rule_is_reported_and_stops_publication(
    tmp_path: Path, judge: FakeJudge
) -> None:
    """publish_min below the student's pairwise rate: the report says not met, and a run
    whose run.json carries the shortfall is refused by publish_run."""
    tests = refund_tests()
    settings = judge_settings(tmp_path, judge, publish_min={"as-good-as-teacher": 0.9})
    evaluation = _evaluation(tests)
    lines: list[str] = []
    judged, shortfalls = judge_for_publication(settings, TASK, tests, evaluation, lines.append)
    assert shortfalls == ["as-good-as-teacher on test-indist: 0.500 < 0.9"]
    assert "as-good-as-teacher 0.500" in lines[0]
    report = write_report(
        evaluation, tmp_path / "run", task=TASK, snapshot="s", judged=judged, shortfalls=shortfalls
    ).read_text()
    section = report.split("## Judges", 1)[1]
    assert "`as-good-as-teacher` (flagged)" in section and "0.500 (10/20)" in section
    assert "**not met**" in section and "not calibrated" in section

    run = tmp_path / "run"
    manifest = {"beats_baseline": True, "judged_shortfalls": shortfalls}
    (run / RUN_FILE).write_text(json.dumps(manifest))
    with pytest.raises(BelowBaseline, match="misses the judges' publish rule"):
        publish_run(run, f"file://{tmp_path / 'store'}", TASK)
