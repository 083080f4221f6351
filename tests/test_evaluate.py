"""evaluate() with fake predictors, and the report it is written into."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from matplotlib.image import imread

from trainer.evaluate import EvalResult, evaluate, headline_metric
from trainer.examples import Example
from trainer.metrics import evaluate_predictions
from trainer.report import write_report
from trainer.settings import LabelRule

RULE = LabelRule(json_path="$.category")
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _ticket(i: int, category: str) -> Example:
    return Example(
        request_id=f"req-{i}",
        messages=[
            {"role": "system", "content": "Classify the ticket."},
            {"role": "user", "content": f"ticket {i}: my invoice | is wrong ```"},
        ],
        completion=json.dumps({"category": category}),
        group=f"user-{i}",
        label=category,
    )


INDIST = [_ticket(i, c) for i, c in enumerate(["billing"] * 6 + ["bug"] * 2)]
BALANCED = [_ticket(10 + i, c) for i, c in enumerate(["billing", "bug", "other"] * 2)]
SETS = {"test-indist": INDIST, "test-balanced": BALANCED}


def perfect(examples: list[Example]) -> list[str]:
    return [e.completion for e in examples]


def always_billing(examples: list[Example]) -> list[str]:
    return ['{"category": "billing"}'] * len(examples)


def test_a_perfect_student_beats_a_constant_baseline() -> None:
    """A student answering like the teacher beats the majority-class baseline on every set."""
    result = evaluate(SETS, {"student": perfect, "base": always_billing}, label_rule=RULE)
    assert result.kind == "classification"
    assert result.headline_metric == "accuracy"
    assert result.headline == {
        "test-indist": {"student": 1.0, "base": 6 / 8},
        "test-balanced": {"student": 1.0, "base": 2 / 6},
    }
    assert result.student_beats_baseline
    assert result.mistakes == {"test-indist": [], "test-balanced": []}


def test_a_constant_student_does_not_beat_a_perfect_baseline() -> None:
    """A student below the baseline on any set is not good enough to publish."""
    result = evaluate(SETS, {"student": always_billing, "base": perfect}, label_rule=RULE)
    assert not result.student_beats_baseline


def test_a_tie_is_good_enough() -> None:
    """The student only has to match the baseline's headline, not exceed it."""
    result = evaluate(SETS, {"student": perfect, "base": perfect}, label_rule=RULE)
    assert result.student_beats_baseline


def test_empty_sets_are_skipped_and_predictors_not_called_on_them() -> None:
    """An empty test set is left out of the decision; no data at all decides nothing."""
    calls: list[int] = []

    def counting(examples: list[Example]) -> list[str]:
        calls.append(len(examples))
        return perfect(examples)

    predictors = {"student": counting, "base": always_billing}
    result = evaluate({"test-indist": INDIST, "test-balanced": []}, predictors, label_rule=RULE)
    assert calls == [len(INDIST)]
    assert list(result.headline) == ["test-indist"] and result.student_beats_baseline
    nothing = evaluate({"test-indist": [], "test-balanced": []}, predictors, label_rule=RULE)
    assert not nothing.student_beats_baseline


def test_worst_mistakes_come_lowest_score_first() -> None:
    """The student's wrong answers are listed by per-example score, ties in test-set order."""
    examples = [
        Example(f"r{i}", [{"role": "user", "content": f"q{i}"}], ref, f"g{i}")
        for i, ref in enumerate(
            ["one two three four five six", "alpha beta gamma delta epsilon zeta", "a b c d e f"]
        )
    ]
    answers = ["one two three four five nine", "omega", "a b c x y z", "never"]

    def student(batch: list[Example]) -> list[str]:
        return answers[: len(batch)]

    result = evaluate({"test-indist": examples}, {"student": student, "base": student})
    assert result.headline_metric == "rouge_l"
    mistakes = result.mistakes["test-indist"]
    assert [m.request_id for m in mistakes] == ["r1", "r2", "r0"]
    assert [m.score for m in mistakes] == sorted(m.score for m in mistakes)
    limited = evaluate(
        {"test-indist": examples}, {"student": student, "base": student}, mistakes_per_set=1
    )
    assert [m.request_id for m in limited.mistakes["test-indist"]] == ["r1"]


@pytest.mark.parametrize(
    ("completions", "rule", "expected"),
    [
        (['{"category": "bug"}'], RULE, "accuracy"),
        (['{"a": 1}', '{"b": "long text here with many words"}'], None, "field_agreement"),
        (["Paris", "42", "New York City"], None, "normalized_match"),
        (["Paris", "a much longer answer of several words"], None, "rouge_l"),
    ],
)
def test_headline_metric_rule(
    completions: list[str], rule: LabelRule | None, expected: str
) -> None:
    """The headline follows the task kind, and short free-text answers are matched exactly."""
    examples = [Example(f"r{i}", [], c, "g") for i, c in enumerate(completions)]
    scores = evaluate_predictions(examples, completions, label_rule=rule)
    assert headline_metric(scores.kind, examples) == expected


def test_predictor_contract_is_checked() -> None:
    """A missing student, a missing baseline or a short answer list fails naming the culprit."""
    with pytest.raises(ValueError, match="no 'student'"):
        evaluate(SETS, {"base": perfect})
    with pytest.raises(ValueError, match="at least one baseline"):
        evaluate(SETS, {"student": perfect})
    with pytest.raises(ValueError, match=r"'base' gave 1 answers .* 'test-indist'"):
        evaluate(SETS, {"student": perfect, "base": lambda batch: ["x"]}, label_rule=RULE)


def test_to_dict_is_plain_json_without_examples() -> None:
    """The metrics for protege.json round-trip through JSON and hold no example text."""
    result = evaluate(SETS, {"student": perfect, "base": always_billing}, label_rule=RULE)
    data = json.loads(json.dumps(result.to_dict()))
    assert data["student_beats_baseline"] is True
    assert data["sets"]["test-balanced"]["base"]["confusion"]["bug"] == {
        "billing": 2,
        "bug": 0,
        "other": 0,
        "(other)": 0,
    }
    assert "ticket 1" not in json.dumps(data)


def _assert_png(path: Path) -> None:
    data = path.read_bytes()
    assert data.startswith(PNG_MAGIC) and len(data) > 5_000
    assert imread(path).shape[0] > 100


def _constant_result() -> EvalResult:
    def wrong(examples: list[Example]) -> list[str]:
        return ["```json\n" + "x" * 2_000 + "\n```"] * len(examples)

    return evaluate(SETS, {"student": wrong, "base": always_billing}, label_rule=RULE)


def test_report_writes_markdown_and_valid_pngs(tmp_path: Path) -> None:
    """The report, scores, loss and sweep plots are written; the PNGs are real images."""
    result = _constant_result()
    sweep = {
        "key": "data_fraction",
        "kept": 1,
        "rows": [
            {"value": 0.1, "train_examples": 10,
             "scores": {"test-indist": 0.3, "test-balanced": 0.2},
             "train_s": 4.0, "tokens_per_s": 900.0, "peak_memory_gb": 0.5},
            {"value": 1.0, "train_examples": 100,
             "scores": {"test-indist": 0.6, "test-balanced": 0.4},
             "train_s": 40.0, "tokens_per_s": 1000.0, "peak_memory_gb": 0.75},
        ],
    }  # fmt: skip
    loss = [(step, 2.0 / step) for step in range(1, 101)]
    path = write_report(
        result,
        tmp_path / "out",
        task="tickets",
        snapshot="20260101T000000Z-abcd1234",
        adapter_version="v3",
        loss_curve=loss,
        sweep=sweep,
    )
    assert path == tmp_path / "out" / "report.md"
    for name in ("scores.png", "loss.png", "sweep.png"):
        _assert_png(tmp_path / "out" / name)
    text = path.read_text()
    assert "# Evaluation: tickets" in text and "`v3`" in text
    assert "## Training loss" in text and "| 100 | 0.0200 |" in text
    assert "## Sweep: data_fraction" in text
    assert "| 1.0 | 100 | 0.600 | 0.400 | 40.0 | 1,000 | 0.75 | kept |" in text
    assert "Kept: `data_fraction=1.0` (run 2 of 2)" in text and "chosen on these same test" in text


def test_report_shows_mistakes_readably(tmp_path: Path) -> None:
    """Mistakes are truncated and fenced so that backticks inside cannot break the Markdown."""
    text = write_report(_constant_result(), tmp_path, task="tickets", snapshot="s").read_text()
    assert "student `student` at least as good as every baseline" in text and "**no**" in text
    assert "#### 1. `req-0`, score 0.000, label 'billing' predicted as None" in text
    assert "````text\nticket 0: my invoice | is wrong ```\n````" in text
    assert "… (+" in text and "x" * 601 not in text
    assert "## Classes: test-balanced (student)" in text
    assert "| `bug` | 0 | 0 | 0 | 2 |" in text  # confusion row: every bug answer unreadable
    assert not (tmp_path / "loss.png").exists() and not (tmp_path / "sweep.png").exists()
