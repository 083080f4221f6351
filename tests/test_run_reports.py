"""Every training run's report in the store, for the console (``trainer.report_store``):
``reports/<task>/<run>/`` gets the plots, mistakes.json, evaluation.json, run.json and, last,
report.md; the run's record and the published protege.json point at it; a store that refuses
it changes nothing of the run's outcome."""

from __future__ import annotations

import asyncio
import json
import re
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs

from core.keys import report_prefix
from core.read import read_exchanges
from core.runs import RunRecord, read_run
from core.store import Store, open_store
from protege.cli import main
from tests.test_demo import tiny_base  # noqa: F401  (a fixture: a tiny base for ticket words)
from tests.ticket_runs import TASK, ticket_store, train_argv
from trainer import pipeline, report_store
from trainer.evaluate import evaluate
from trainer.examples import Example
from trainer.publish import list_versions
from trainer.report import write_report
from trainer.report_store import local_links, mistakes_data
from trainer.tiny import tiny_examples

REPORT_FILES = ["loss.png", "scores.png", "mistakes.json", "evaluation.json", "run.json",
                "report.md"]  # fmt: skip


class _Recording:
    """The store, recording the keys ``put_file`` writes, in order (it has nothing else)."""

    def __init__(self, inner: Store, keys: list[str]) -> None:
        self.inner, self.keys = inner, keys

    async def __aenter__(self) -> _Recording:
        await self.inner.__aenter__()
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.inner.__aexit__(*exc)

    async def put_file(self, key: str, path: Path) -> None:
        self.keys.append(key)
        await self.inner.put_file(key, path)


@pytest.fixture
def uploads(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The keys the report upload writes, in order."""
    keys: list[str] = []
    monkeypatch.setattr(report_store, "open_store", lambda uri: _Recording(open_store(uri), keys))
    return keys


def _record(store: str, run_id: str) -> RunRecord | None:
    async def read() -> RunRecord | None:
        async with open_store(store) as opened:
            return await read_run(opened, TASK, run_id)

    return asyncio.run(read())


def _perfect_baseline(monkeypatch: pytest.MonkeyPatch) -> None:
    """The zero-shot base answers every test example as the teacher did: the student loses."""

    def teacher(*_: Any) -> Any:
        return lambda examples: [e.completion for e in examples]

    monkeypatch.setattr(pipeline, "cached", teacher)


# --- whole runs on the tiny base ---


@pytest.mark.timeout(300)
@pytest.mark.usefixtures("one_torch_thread")
def test_a_published_run_uploads_its_report_with_report_md_last(
    tmp_path: Path, tiny_base: Path, uploads: list[str]  # noqa: F811
) -> None:
    """A run with --run-id puts its plots, mistakes.json, evaluation.json, run.json and then
    report.md under reports/<task>/<run-id>/, each a copy of the run directory's file; the
    mistakes name exchanges of the store, the record and protege.json point at the folder."""
    store, config = ticket_store(tmp_path)
    out = tmp_path / "run"
    assert main(train_argv(store, config, out, tiny_base, "--run-id", "r1")) == 0

    prefix = report_prefix(TASK, "r1")
    assert uploads == [prefix + name for name in REPORT_FILES]
    folder = tmp_path / "store" / prefix
    assert sorted(p.name for p in folder.iterdir()) == sorted(REPORT_FILES)
    for name in REPORT_FILES:
        assert (folder / name).read_bytes() == (out / name).read_bytes(), name

    mistakes = json.loads((folder / "mistakes.json").read_text())
    assert set(mistakes) == {"test-indist", "test-balanced"}
    shown = [m for records in mistakes.values() for m in records]
    assert shown, "a two-step student gets tickets wrong"
    assert all(set(m) == {"request_id", "prompt", "reference", "prediction", "score", "correct",
                          "reference_label", "predicted_label"} for m in shown)  # fmt: skip
    logged = set(read_exchanges(store, columns=["request_id"]).column("request_id").to_pylist())
    assert {m["request_id"] for m in shown} <= logged

    manifest = json.loads((folder / "run.json").read_text())
    evaluation = json.loads((folder / "evaluation.json").read_text())
    assert evaluation["models"] == [{"name": "student", "role": "student"},
                                    {"name": "base (zero-shot)", "role": "base"}]  # fmt: skip
    headline = {name: row["scores"] for name, row in evaluation["sets"].items() if row["n"]}
    assert headline == manifest["metrics"]["headline"]
    report = (folder / "report.md").read_text()
    assert all(link in REPORT_FILES for link in re.findall(r"!\[[^\]]*\]\(([^)]+)\)", report))

    record = _record(store, "r1")
    assert record is not None and record.outcome == "published"
    assert record.figures["report"] == prefix
    (version,) = asyncio.run(list_versions(store, TASK))
    assert f"adapter version: `{version}`" in report  # uploaded once published
    published = tmp_path / "store" / "adapters" / TASK / version / "protege.json"
    assert json.loads(published.read_text())["report"] == prefix


@pytest.mark.timeout(300)
@pytest.mark.usefixtures("one_torch_thread")
def test_a_run_without_run_id_is_named_by_its_directory(
    tmp_path: Path, tiny_base: Path, uploads: list[str]  # noqa: F811
) -> None:
    """Without --run-id (and with --no-publish) the report goes to reports/<task>/<the run
    directory's name>/, report.md last."""
    store, config = ticket_store(tmp_path)
    out = tmp_path / "runs" / "20260101T000000Z"
    assert main(train_argv(store, config, out, tiny_base, "--no-publish")) == 0
    prefix = report_prefix(TASK, "20260101T000000Z")
    assert uploads == [prefix + name for name in REPORT_FILES]
    uploaded = tmp_path / "store" / prefix / "report.md"
    assert uploaded.read_bytes() == (out / "report.md").read_bytes()


@pytest.mark.timeout(300)
@pytest.mark.usefixtures("one_torch_thread")
def test_a_rejected_run_uploads_its_report_too(
    tmp_path: Path,
    tiny_base: Path,  # noqa: F811
    uploads: list[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A student below the baseline is refused (status 3, nothing published), and its report
    still reaches the store, its record pointing at it."""
    _perfect_baseline(monkeypatch)
    store, config = ticket_store(tmp_path)
    assert main(train_argv(store, config, tmp_path / "run", tiny_base, "--run-id", "r2")) == 3
    prefix = report_prefix(TASK, "r2")
    assert uploads == [prefix + name for name in REPORT_FILES]
    assert asyncio.run(list_versions(store, TASK)) == []
    record = _record(store, "r2")
    assert record is not None and record.outcome == "rejected"
    assert record.figures["report"] == prefix


@pytest.mark.timeout(300)
@pytest.mark.usefixtures("one_torch_thread")
def test_a_sweep_uploads_the_kept_runs_report_and_sweep_json(
    tmp_path: Path, tiny_base: Path, uploads: list[str]  # noqa: F811
) -> None:
    """A sweep uploads the run directory's top-level report (its sweep plot included) and
    sweep.json, none of the swept runs' folders."""
    store, config = ticket_store(tmp_path)
    argv = train_argv(store, config, tmp_path / "run", tiny_base, "--no-publish", "--run-id",
                      "s1", "--sweep", "learning_rate=1e-3,2e-4")  # fmt: skip
    assert main(argv) == 0
    prefix = report_prefix(TASK, "s1")
    names = ["loss.png", "scores.png", "sweep.png", "sweep.json", *REPORT_FILES[2:]]
    assert uploads == [prefix + name for name in names]


@pytest.mark.timeout(300)
@pytest.mark.usefixtures("one_torch_thread")
@pytest.mark.parametrize(("baseline", "status", "outcome"),
                         [("zero-shot", 0, "published"), ("perfect", 3, "rejected")])  # fmt: skip
def test_a_store_that_refuses_the_report_leaves_the_outcome_unchanged(
    tmp_path: Path,
    tiny_base: Path,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    baseline: str,
    status: int,
    outcome: str,
) -> None:
    """With reports/ blocked in the store, the run ends with its own status and record (no
    ``report`` in it); the failure is logged as an error and said on stderr."""
    if baseline == "perfect":
        _perfect_baseline(monkeypatch)
    store, config = ticket_store(tmp_path)
    (tmp_path / "store" / "reports").write_text("a file where the reports' folder should be")
    with capture_logs() as logs:
        code = main(train_argv(store, config, tmp_path / "run", tiny_base, "--run-id", "r3"))
    assert code == status
    record = _record(store, "r3")
    assert record is not None and record.outcome == outcome and "report" not in record.figures
    assert record.figures["evaluation"] is not None
    (entry,) = [e for e in logs if e["event"] == "run report not uploaded"]
    assert entry["log_level"] == "error" and entry["run"] == "r3"
    assert "report of run r3 not uploaded" in capsys.readouterr().err
    assert len(asyncio.run(list_versions(store, TASK))) == (1 if status == 0 else 0)


@pytest.mark.timeout(120)
def test_a_run_failing_before_its_report_uploads_nothing(
    tmp_path: Path, tiny_base: Path, uploads: list[str]  # noqa: F811
) -> None:
    """A run with no data fails before any report: nothing goes to reports/, its record has
    no ``report``."""
    store, config = f"file://{tmp_path / 'store'}", tmp_path / "protege.yaml"
    config.write_text("trainer: {}\n")
    with pytest.raises(ValueError, match="no training example"):
        main(train_argv(store, config, tmp_path / "run", tiny_base, "--run-id", "empty"))
    assert uploads == [] and not (tmp_path / "store" / "reports").exists()
    record = _record(store, "empty")
    assert record is not None and record.outcome == "failed" and "report" not in record.figures


# --- the uploaded data, pure ---


def _evaluation() -> Any:
    """Three tiny sentiment examples and an empty set; a student right on two, a base on none,
    a champion on all."""
    tests: dict[str, list[Example]] = {"test-indist": tiny_examples(3), "test-balanced": []}

    def student(examples: list[Example]) -> list[str]:
        return [e.completion if i else "neutral" for i, e in enumerate(examples)]

    predictors = {"student": student, "base": lambda xs: ["?" for _ in xs],
                  "champion v1": lambda xs: [e.completion for e in xs]}  # fmt: skip
    return evaluate(tests, predictors, contenders=["champion v1"])


def test_evaluation_json_is_the_reports_headline_table(tmp_path: Path) -> None:
    """evaluation.json holds each model with its role, and per test set its size, headlines
    and the student's lead over the best baseline, the numbers report.md's table shows (an
    empty set: no scores)."""
    evaluation = _evaluation()
    files = report_store.report_files(_report(tmp_path, evaluation), evaluation, swept=False)
    table = json.loads((tmp_path / "evaluation.json").read_text())
    assert [f.name for f in files] == ["scores.png", "mistakes.json", "evaluation.json",
                                       "run.json", "report.md"]  # fmt: skip
    assert table["models"] == [{"name": "student", "role": "student"},
                               {"name": "base", "role": "base"},
                               {"name": "champion v1", "role": "champion"}]  # fmt: skip
    assert table["headline_metric"] == "normalized_match" and table["student_beats_baseline"]
    indist = table["sets"]["test-indist"]
    assert indist["n"] == 3 and indist["scores"]["champion v1"] == 1.0
    assert indist["scores"]["base"] == 0.0
    assert indist["student_minus_best_baseline"] == pytest.approx(2 / 3)
    assert table["sets"]["test-balanced"] == {"n": 0, "scores": None,
                                              "student_minus_best_baseline": None}  # fmt: skip
    row = "| test-indist | 3 | 0.667 | 0.000 | 1.000 | +0.667 |"
    assert row in (tmp_path / "report.md").read_text()


def test_mistakes_json_holds_the_students_worst_answers() -> None:
    """mistakes.json: per test set, every field of each of the student's wrong answers."""
    mistakes = mistakes_data(_evaluation())
    assert mistakes["test-balanced"] == []
    (wrong,) = mistakes["test-indist"]
    assert wrong["request_id"] == "tiny-0" and wrong["prediction"] == "neutral"
    assert wrong["correct"] is False and wrong["score"] == 0.0
    assert list(wrong) == ["request_id", "prompt", "reference", "prediction", "score", "correct",
                           "reference_label", "predicted_label"]  # fmt: skip


def _report(run_dir: Path, evaluation: Any) -> Path:
    write_report(evaluation, run_dir, task=TASK, snapshot="s1")
    (run_dir / "run.json").write_text("{}")
    return run_dir


@pytest.mark.parametrize(
    ("markdown", "expected"),
    [
        ("![a](scores.png)", "![a](scores.png)"),
        ("![a](/runs/r1/scores.png) ![b](runs/loss.png)", "![a](scores.png) ![b](loss.png)"),
        ("![a](other.png) [scores](scores.png)", "![a](other.png) [scores](scores.png)"),
        ("![](file:///tmp/run/scores.png)", "![](scores.png)"),
    ],
)
def test_image_links_become_bare_names_of_the_uploaded_plots(markdown: str, expected: str) -> None:
    """An image link to an uploaded plot, by any path, becomes its bare name; other links and
    images stay as they are."""
    assert local_links(markdown, {"scores.png", "loss.png"}) == expected
