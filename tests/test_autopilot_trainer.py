"""What the autopilot asks of ``protege train``: ``--champion`` (measured on the same test sets,
published only when matched, its weights never reaching the student) and ``--run-id`` (the
run's record in the store, however the run ends)."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from structlog.testing import capture_logs

from core.errors import ConfigError
from core.runs import RunRecord, read_run
from core.store import open_store
from protege.cli import main
from tests.fake_judge import FakeJudge
from tests.refund_judging import TASK as REFUNDS
from tests.refund_judging import half_right, judge_settings, refund_rule, refund_tests
from tests.test_demo import tiny_base  # noqa: F401  (a fixture: a tiny base for ticket words)
from tests.ticket_runs import TASK, ticket_store, train_argv
from trainer import champion as champion_module
from trainer import cli
from trainer.champion import Champion, champion_version, measure, shortfalls, standing
from trainer.config import TrainConfig
from trainer.errors import BelowBaseline, BelowChampion
from trainer.evaluate import evaluate
from trainer.examples import Example
from trainer.judged import judge_evaluation
from trainer.model import attach_lora, save_adapter
from trainer.publish import list_versions, publish
from trainer.report_judged import judged_section
from trainer.run_record import RunFacts, ending, leave_record, record_of
from trainer.tiny import tiny_examples, tiny_model, tiny_tokenizer


def _record(store: str, run_id: str) -> RunRecord | None:
    async def read() -> RunRecord | None:
        async with open_store(store) as opened:
            return await read_run(opened, TASK, run_id)

    return asyncio.run(read())


# --- the publication rule, pure ---


@pytest.mark.parametrize(
    ("student", "champion", "margin", "judged", "short"),
    [
        ({"a": 0.8, "b": 0.5}, {"a": 0.8, "b": 0.5}, 0.0, None, []),  # a tie passes
        ({"a": 0.9}, {"a": 0.8}, 0.0, None, []),
        ({"a": 0.7, "b": 0.9}, {"a": 0.8, "b": 0.5}, 0.0, None,
         ["a: student 0.700 < champion 0.800"]),
        ({"a": 0.8}, {"a": 0.8}, 0.05, None, ["a: student 0.800 < champion 0.800 + margin 0.05"]),
        ({"a": 0.85}, {"a": 0.8}, 0.05, None, []),
        ({"a": 0.78}, {"a": 0.8}, -0.05, None, []),  # a margin may allow a small loss
        # an empty test set has no headline: nothing compared on it
        ({"a": 0.9}, {"a": 0.8, "b": 1.0}, 0.0, None, []),
        ({"a": 0.9, "b": 0.1}, {"a": 0.8}, 0.0, None, []),
        ({"a": 0.9}, {"a": 0.8}, 0.0, {"a": {"c": (0.6, 0.6), "d": (0.7, 0.5)}}, []),
        ({"a": 0.9}, {"a": 0.8}, 0.0, {"a": {"c": (0.5, 0.6)}},
         ["c on a: student pass rate 0.500 < champion 0.600"]),
        ({"a": 0.9}, {"a": 0.8}, 0.0, {"a": {"c": (None, 0.6)}},
         ["c on a: student pass rate not judged < champion 0.600"]),
        ({"a": 0.9}, {"a": 0.8}, 0.0, {"a": {"c": (0.1, None)}}, []),  # champion unjudged
        ({"a": 0.7}, {"a": 0.8}, 0.0, {"a": {"c": (0.5, 0.6)}},
         ["a: student 0.700 < champion 0.800",
          "c on a: student pass rate 0.500 < champion 0.600"]),
    ],
)  # fmt: skip
def test_autopilot_champion_rule(
    student: dict[str, float],
    champion: dict[str, float],
    margin: float,
    judged: Any,
    short: list[str],
) -> None:
    """The student needs the champion's headline plus the margin on every non-empty test set
    (a tie passes), and at least its pass rate of every criterion the champion was judged on."""
    assert shortfalls(student, champion, margin, judged) == short


@pytest.mark.parametrize(
    ("text", "version"),
    [("v20260101000000-abcdef", "v20260101000000-abcdef"),
     (f"{TASK}/v20260101000000-abcdef", "v20260101000000-abcdef")],
)  # fmt: skip
def test_autopilot_champion_is_a_version_or_the_tasks_adapter(text: str, version: str) -> None:
    """``--champion`` takes VERSION or TASK/VERSION of the task being trained."""
    assert champion_version(TASK, text) == version


@pytest.mark.parametrize(
    ("text", "message"),
    [("other/v1", "an adapter of task 'other'"), ("../v1", "not a version")],
)
def test_autopilot_champion_of_another_task_is_refused(text: str, message: str) -> None:
    """Another task's adapter, or a path, is no champion."""
    with pytest.raises(ConfigError, match=message):
        champion_version(TASK, text)


@pytest.mark.parametrize("flag", [("--run-id", "a/b"), ("--run-id", ""), ("--champion", "a/b/c")])
def test_autopilot_bad_run_id_or_champion_is_an_argument_error(
    flag: tuple[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    """A run id that is not one store key component (or a champion of no adapter's shape) is
    refused by the parser, naming the flag, before anything runs."""
    with pytest.raises(SystemExit) as caught:
        main(["train", "--task", TASK, *flag])
    assert caught.value.code == 2
    assert f"argument {flag[0]}" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("error", "rejected", "published", "outcome", "reason"),
    [
        (None, None, f"{TASK}/v1", "published", None),
        (BelowChampion("below the champion"), None, None, "rejected", "below the champion"),
        (BelowBaseline("below the base"), None, None, "rejected", "below the base"),
        (None, "refused", None, "rejected", "refused"),
        (ValueError("no training example"), None, None, "failed",
         "ValueError: no training example"),
        (None, None, None, "rejected",
         "not published: the run was told not to publish (--no-publish)"),
    ],
)  # fmt: skip
def test_autopilot_run_ending_is_the_records_outcome(
    error: BaseException | None,
    rejected: str | None,
    published: str | None,
    outcome: str,
    reason: str | None,
) -> None:
    """A refusal (raised or noted) is rejected, any other error failed, a publication
    published; the record carries what the run knew."""
    facts = RunFacts(started_at=1.0, champion=f"{TASK}/v0", rejected=rejected, published=published)
    record = record_of(TASK, "r1", facts, error, now=2.0)
    assert ending(facts, error) == (outcome, reason)
    assert (record.outcome, record.reason, record.champion) == (outcome, reason, f"{TASK}/v0")
    assert (record.started_at, record.finished_at) == (1.0, 2.0)
    assert set(record.figures) == {"data", "training", "evaluation", "judged"}


def test_autopilot_a_record_the_store_refuses_is_logged_not_raised(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Writing the record into a store that cannot take it logs an error and says so on
    stderr; it raises nothing, so the run's own error is the one that comes out."""
    blocked = tmp_path / "blocked"
    blocked.write_text("a file where the store's folder should be")
    record = record_of(TASK, "r1", RunFacts(), ValueError("the run's error"), now=1.0)
    with capture_logs() as logs:
        assert not leave_record(f"file://{blocked}", record)
    (entry,) = [e for e in logs if e["event"] == "run record not written"]
    assert entry["log_level"] == "error" and entry["reason"] == "ValueError: the run's error"
    assert "run record r1 not written" in capsys.readouterr().err


def test_autopilot_the_champion_is_judged_and_its_pass_rates_are_the_bar(tmp_path: Path) -> None:
    """With judges, the champion's answers are judged like the student's: a champion right on
    every refund ticket out-rates a student right on half of them (pairwise), which the rule
    then refuses, though the student's headline is not below the champion's; the report's
    judges section shows the champion's rates."""
    tests = refund_tests()
    champion = Champion("file://unused", REFUNDS, "v1")

    def base(examples: list[Example]) -> list[str]:
        return ["I am not sure." for _ in examples]

    predictors = {"student": half_right(tests), "base": base,
                  champion.name: half_right(tests, wrong_every=0)}  # fmt: skip
    evaluation = evaluate(tests, predictors, contenders=[champion.name])
    assert evaluation.baselines == ["base"] and evaluation.contenders == (champion.name,)
    with FakeJudge(rule=refund_rule) as judge:
        judged = judge_evaluation(judge_settings(tmp_path, judge), REFUNDS, tests, evaluation)
    assert judged is not None
    rates = judged.rates["test-indist"]
    assert rates["as-good-as-teacher"]["champion"].rate == 1.0
    assert rates["as-good-as-teacher"]["student"].rate == 0.5
    assert rates["verdict-first"]["champion"].rate == 1.0 and "teacher" in rates["verdict-first"]

    verdict = standing(champion, evaluation, judged)
    assert verdict["beats_champion"] is False and verdict["champion"] == f"{REFUNDS}/v1"
    (short,) = [s for s in verdict["champion_shortfalls"] if "pass rate" in s]
    assert short == "as-good-as-teacher on test-indist: student pass rate 0.500 < champion 1.000"
    assert "| criterion | student | champion | teacher | not judged |" in judged_section(judged)


# --- the champion on the base ---


def test_autopilot_champion_leaves_no_trace_in_the_base(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The champion, attached to the base, changes its outputs while it answers; afterwards the
    base has exactly its own weights and modules again, and computes what it did before."""
    tokenizer = tiny_tokenizer()
    base = tiny_model(tokenizer)
    cfg = TrainConfig(eval_max_new_tokens=4)
    lora = attach_lora(tiny_model(tokenizer), cfg)
    with torch.no_grad():
        for name, param in lora.named_parameters():
            if "lora_B" in name:
                param.normal_(0.0, 0.5)  # a trained champion: its LoRA changes the outputs
    store = f"file://{tmp_path / 'store'}"
    folder = save_adapter(lora, tmp_path / "champion", config=cfg)
    version = asyncio.run(publish(store, TASK, folder, {})).version

    probe = tokenizer("Classify the sentiment", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        before_logits = base(probe).logits
    before = {k: v.clone() for k, v in base.state_dict().items()}
    seen: list[torch.Tensor] = []
    greedy = champion_module.greedy_predictor

    def spy(model: Any, tok: Any, max_new: int, config: TrainConfig) -> Any:
        with torch.no_grad():
            seen.append(model(probe).logits)
        return greedy(model, tok, max_new, config)

    monkeypatch.setattr(champion_module, "greedy_predictor", spy)
    tests = {"test-indist": tiny_examples(3), "test-balanced": []}
    answers, bare = measure(Champion(store, TASK, version), base, tokenizer, tests, 4, cfg)

    (name,) = answers
    assert name == f"champion {version}"
    assert len(answers[name](tests["test-indist"])) == 3
    assert not torch.allclose(seen[0], before_logits)  # the champion did answer
    assert bare is base and type(bare).__name__ == "LlamaForCausalLM"
    after = bare.state_dict()
    assert after.keys() == before.keys()
    assert all(torch.equal(after[k], before[k]) for k in before)
    assert not any("lora" in n for n, _ in bare.named_modules())
    with torch.no_grad():
        assert torch.equal(bare(probe).logits, before_logits)


# --- whole runs on the tiny base ---


def _perfect_champion(monkeypatch: pytest.MonkeyPatch) -> None:
    """The champion answers every test example as the teacher did (attached and unloaded
    for real; only its answers are the references)."""

    def teacher(*_: Any) -> Any:
        return lambda examples: [e.completion for e in examples]

    monkeypatch.setattr(champion_module, "greedy_predictor", teacher)


def _publish_champion(tmp_path: Path, base: Path) -> tuple[str, Path, str]:
    """A first run, published: the store, the config, and the champion's version."""
    store, config = ticket_store(tmp_path)
    assert main(train_argv(store, config, tmp_path / "first", base, "--run-id", "first")) == 0
    (version,) = asyncio.run(list_versions(store, TASK))
    return store, config, version


@pytest.mark.timeout(300)
@pytest.mark.usefixtures("one_torch_thread")
def test_autopilot_a_student_that_ties_the_champion_is_published_and_recorded(
    tmp_path: Path, tiny_base: Path  # noqa: F811
) -> None:
    """A student that ties its champion (both score 0 on the tiny base) is published with its
    run id and the champion's figures in protege.json; its record says published, names the
    champion and the adapter, and has every figure; the report compares the two. The student,
    trained on the base the champion was attached to and unloaded from, is the very student
    trained without a champion."""
    store, config, version = _publish_champion(tmp_path, tiny_base)
    out = tmp_path / "second"
    argv = train_argv(store, config, out, tiny_base, "--champion", f"{TASK}/{version}",
                      "--run-id", "second")  # fmt: skip
    assert main(argv) == 0

    (second,) = set(asyncio.run(list_versions(store, TASK))) - {version}
    adapters = tmp_path / "store" / "adapters" / TASK
    manifest = json.loads((adapters / second / "protege.json").read_text())
    assert manifest["run_id"] == "second" and manifest["champion"] == f"{TASK}/{version}"
    assert manifest["beats_champion"] is True and manifest["champion_shortfalls"] == []
    sets = set(manifest["metrics"]["headline"])
    assert set(manifest["champion_metrics"]) == sets
    assert manifest["metrics"]["contenders"] == [f"champion {version}"]
    assert manifest["metrics"]["baselines"] == ["base (zero-shot)"]
    report = (out / "report.md").read_text()
    assert "## Against the champion" in report and "| test set | champion | student |" in report

    record = _record(store, "second")
    assert record is not None and record.outcome == "published" and record.reason is None
    assert record.published == f"{TASK}/{second}" and record.champion == f"{TASK}/{version}"
    assert record.snapshot == manifest["dataset_snapshot"]
    assert record.started_at is not None and record.started_at <= record.finished_at
    figures = record.figures
    assert figures["data"]["records_in"] == 48
    assert figures["data"]["train"] >= manifest["training"]["examples"] > 0
    assert set(figures["data"]) == {"records_in", "train", "test-indist", "test-balanced"}
    assert figures["training"]["steps"] == 2 and figures["training"]["seconds"] > 0
    assert figures["training"]["final_loss"] > 0 and figures["training"]["tokens_per_s"] > 0
    evaluation = figures["evaluation"]
    assert set(evaluation["student"]) == set(evaluation["champion"]) == set(evaluation["base"])
    assert evaluation["champion"] == manifest["champion_metrics"]
    assert figures["judged"] is None

    first_record = _record(store, "first")
    assert first_record is not None and first_record.champion is None
    assert first_record.figures["evaluation"]["champion"] is None
    assert json.loads((adapters / version / "protege.json").read_text())["champion"] is None
    weights = "adapter/adapter_model.safetensors"  # the champion's weights never reached it
    assert (out / weights).read_bytes() == (tmp_path / "first" / weights).read_bytes()


@pytest.mark.timeout(300)
@pytest.mark.usefixtures("one_torch_thread")
def test_autopilot_a_student_below_the_champion_is_rejected_and_recorded(
    tmp_path: Path,
    tiny_base: Path,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Against a champion that answers every test example right, the two-step student is
    refused: exit status 3, nothing new under adapters/<task>/, run.json and the record say
    rejected with both scores per test set."""
    store, config, version = _publish_champion(tmp_path, tiny_base)
    _perfect_champion(monkeypatch)
    out = tmp_path / "second"
    argv = train_argv(store, config, out, tiny_base, "--champion", version, "--run-id", "r2")
    assert main(argv) == 3
    assert "does not match the champion" in capsys.readouterr().out

    assert asyncio.run(list_versions(store, TASK)) == [version]
    assert [p.name for p in (tmp_path / "store/adapters" / TASK).iterdir()] == [version]
    manifest = json.loads((out / "run.json").read_text())
    assert manifest["beats_champion"] is False and manifest["run_id"] == "r2"
    assert set(manifest["champion_metrics"].values()) == {1.0}
    record = _record(store, "r2")
    assert record is not None and record.outcome == "rejected" and record.published is None
    assert record.reason is not None and record.champion == f"{TASK}/{version}"
    for name, student in record.figures["evaluation"]["student"].items():
        assert f"{name}: student {student:.3f} < champion 1.000" in record.reason
    assert "**not** match the champion" in (out / "report.md").read_text()


@pytest.mark.timeout(120)
def test_autopilot_a_failed_run_still_leaves_its_record(
    tmp_path: Path, tiny_base: Path  # noqa: F811
) -> None:
    """A run with no data fails as before (the error comes out) and its record says failed,
    why, and what the run knew: the snapshot it built and its empty splits."""
    store, config = f"file://{tmp_path / 'store'}", tmp_path / "protege.yaml"
    config.write_text("trainer: {}\n")
    with pytest.raises(ValueError, match="no training example"):
        main(train_argv(store, config, tmp_path / "run", tiny_base, "--run-id", "empty"))
    record = _record(store, "empty")
    assert record is not None and record.outcome == "failed" and record.published is None
    assert record.reason is not None and "no training example" in record.reason
    assert record.snapshot is not None and record.snapshot in record.reason
    assert record.figures["data"]["records_in"] == 0 and record.figures["data"]["train"] == 0
    assert record.figures["training"] is None and record.figures["evaluation"] is None


@pytest.mark.parametrize(("status", "written"), [(1, None), (3, "rejected")])
def test_autopilot_run_id_and_champion_reach_the_torchrun_ranks(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, status: int, written: str | None
) -> None:
    """``--nproc`` relaunches the same command line, --run-id and --champion included; when
    the ranks end without a record (one died first) the launcher writes "failed", and a
    record rank 0 wrote is left as it is."""
    store = f"file://{tmp_path / 'store'}"
    launched: list[list[str]] = []

    def ranks(args: Any) -> int:
        launched.append(list(args.argv))
        if written:  # rank 0 got as far as its record
            rejected = record_of(TASK, "r1", RunFacts(rejected="below"), None, now=1.0)
            leave_record(store, rejected)
        return status

    monkeypatch.setattr(cli, "_launch", ranks)
    argv = ["train", "--task", TASK, "--store", store, "--device", "cpu", "--nproc", "2",
            "--champion", "v1", "--champion-margin", "0.01", "--run-id", "r1"]  # fmt: skip
    assert main(argv) == status
    (relaunched,) = launched
    assert relaunched == argv
    record = _record(store, "r1")
    assert record is not None
    if written:
        assert record.outcome == written and record.reason == "below"
    else:
        assert record.outcome == "failed" and record.champion == f"{TASK}/v1"
        assert record.reason is not None and "torchrun exited with status 1" in record.reason


@pytest.mark.timeout(300)
def test_autopilot_a_sharded_run_on_two_ranks_measures_the_champion_and_records_once(
    tmp_path: Path, tiny_base: Path  # noqa: F811
) -> None:
    """``--nproc 2`` with ``sharding=fsdp``: the relaunched ranks get --champion and --run-id;
    rank 0 evaluates the champion on the whole base it loads after training, publishes, and
    writes the one record."""
    store, config, version = _publish_champion(tmp_path, tiny_base)
    out = tmp_path / "ranked"
    argv = train_argv(store, config, out, tiny_base, "--nproc", "2", "--set", "sharding=fsdp",
                      "--champion", version, "--run-id", "ranked")  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).parents[1])}
    done = subprocess.run([sys.executable, "-m", "protege.cli", *argv], env=env, timeout=240,
                          capture_output=True, text=True)  # fmt: skip
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]

    manifest = json.loads((out / "run.json").read_text())
    assert manifest["training"]["memory"]["sharded"] and manifest["run_id"] == "ranked"
    assert manifest["champion"] == f"{TASK}/{version}" and manifest["beats_champion"] is True
    assert manifest["metrics"]["contenders"] == [f"champion {version}"]
    record = _record(store, "ranked")
    assert record is not None and record.outcome == "published"
    assert record.figures["evaluation"]["champion"] == manifest["champion_metrics"]
    assert record.figures["training"]["steps"] == 2
    assert len(asyncio.run(list_versions(store, TASK))) == 2
