"""``protege train --sweep KEY=V1,V2,...``: reading the sweep, choosing the kept run, and one
sweep end to end on the tiny model (adapters, ``sweep.json``, report, publication)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest

from core.errors import ConfigError
from core.keys import ADAPTER_FILES, MANIFEST
from protege.cli import main
from tests.test_demo import tiny_base  # noqa: F401  (a fixture: a tiny base for ticket words)
from tests.ticket_runs import TASK, ticket_store, train_argv
from trainer.config import TrainConfig
from trainer.publish import list_versions
from trainer.sweep import Sweep, kept_run, parse_sweep, sweep_of, sweep_table


def test_values_are_read_like_set_and_the_rest_is_fixed() -> None:
    """Each value is a YAML scalar as ``--set`` reads it (``2e-4`` is a float), in the order
    given; every other field comes from the base config."""
    base = TrainConfig(max_steps=3, lora_r=8)
    sweep = parse_sweep("learning_rate=1e-3, 2e-4,1", base)
    assert sweep.key == "learning_rate" and sweep.values == (1e-3, 2e-4, 1.0)
    assert [c.learning_rate for c in sweep.configs] == [1e-3, 2e-4, 1.0]
    assert all(c.max_steps == 3 and c.lora_r == 8 for c in sweep.configs)
    assert [sweep.name(i) for i in range(3)] == [
        "learning_rate=0.001", "learning_rate=0.0002", "learning_rate=1.0",
    ]  # fmt: skip


@pytest.mark.parametrize(
    ("text", "values", "names"),
    [
        ("bf16=true,false,null", (True, False, None), ["bf16=true", "bf16=false", "bf16=null"]),
        ("schedule=constant,cosine", ("constant", "cosine"),
         ["schedule=constant", "schedule=cosine"]),
        ("lora_r=4,16", (4, 16), ["lora_r=4", "lora_r=16"]),
    ],
)  # fmt: skip
def test_values_of_every_type_name_a_safe_folder(
    text: str, values: tuple[Any, ...], names: list[str]
) -> None:
    """Booleans, null, strings and integers are read as their setting takes them, and each run
    gets its folder name ``KEY=value``."""
    sweep = parse_sweep(text, TrainConfig())
    assert sweep.values == values
    assert [sweep.name(i) for i in range(len(values))] == names


def test_the_sweep_wins_over_the_base_for_its_key() -> None:
    """A key also set in the base config (``--set``) takes the sweep's values."""
    sweep = parse_sweep("epochs=1,2", TrainConfig(epochs=5.0))
    assert [c.epochs for c in sweep.configs] == [1.0, 2.0]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("lr=1e-3", "config: --sweep lr: not a known training setting"),
        ("learning_rate", "must be KEY=V1,V2,..."),
        ("=1,2", "must be KEY=V1,V2,..."),
        ("lora_r=", "config: --sweep lora_r: give at least one value"),
        ("lora_r=4,,8", "config: --sweep lora_r: an empty value"),
        ("lora_r=0,8", "config: --sweep lora_r=0: lora_r must be >= 1, got 0"),
        ("lora_r=four", "config: --sweep lora_r=four: lora_r must be like 16, got 'four'"),
        ("learning_rate=fast", "config: --sweep learning_rate=fast: learning_rate must be a num"),
        ("data_fraction=0.5,2", "config: --sweep data_fraction=2: data_fraction must be in"),
        ("seq_len=16384", "config: --sweep seq_len=16384: max_tokens_per_batch must be >="),
        ("lora_r=8,8", "config: --sweep lora_r: 8 given twice"),
        ("schedule=[a", "config: --sweep schedule: cannot read '[a'"),
    ],
)
def test_a_bad_key_or_value_fails_naming_the_key(text: str, message: str) -> None:
    """An unknown key, a missing or empty value, an invalid config or a repeated value fails
    with a ConfigError naming the swept key."""
    with pytest.raises(ConfigError) as caught:
        parse_sweep(text, TrainConfig())
    assert message in str(caught.value)


def _rows(*means: tuple[float, float]) -> list[dict[str, Any]]:
    return [{"scores": {"test-indist": a, "test-balanced": b}} for a, b in means]


@pytest.mark.parametrize(
    ("rows", "kept"),
    [
        (_rows((0.5, 0.5), (0.9, 0.7), (0.6, 0.6)), 1),
        (_rows((0.8, 0.4), (0.4, 0.8)), 1),  # equal means: the later run
        (_rows((0.7, 0.7), (0.7, 0.7), (0.7, 0.7)), 2),
        (_rows((0.9, 0.9), (0.1, 0.1)), 0),
        (_rows((0.9, 0.9), (float("nan"), 1.0)), 0),  # a NaN never wins
        ([{"scores": {}}, {"scores": {}}], 1),  # no test data: the later run
    ],
)
def test_the_kept_run_has_the_best_mean_headline_ties_to_the_later(
    rows: list[dict[str, Any]], kept: int
) -> None:
    """The kept run is the best mean headline over the test sets; a tie goes to the later run."""
    assert kept_run(rows) == kept


def test_the_table_shows_every_run_and_marks_the_kept_one() -> None:
    """The printed table has a line per run with its value, examples, scores and a kept mark."""
    row = {"train_examples": 40, "train_s": 2.5, "tokens_per_s": 1234.0, "peak_memory_gb": 0.5,
           "scores": {"test-indist": 0.25, "test-balanced": 0.5}}  # fmt: skip
    sweep = {"key": "lora_r", "kept": 1, "rows": [{**row, "value": 4}, {**row, "value": 16}]}
    lines = sweep_table(sweep).splitlines()
    assert lines[0].split() == ["lora_r", "examples", "test-indist", "test-balanced", "train_s",
                                "tokens/s", "peak_GiB", "kept"]  # fmt: skip
    assert lines[1].split() == ["4", "40", "0.250", "0.500", "2.5", "1,234", "0.50"]
    assert lines[2].split() == ["16", "40", "0.250", "0.500", "2.5", "1,234", "0.50", "*"]


def test_data_fractions_are_a_sweep_of_data_fraction() -> None:
    """``--data-fractions`` is the sweep of ``data_fraction`` (the CLI sorts it ascending)."""
    sweep = sweep_of("data_fraction", [0.1, 0.5, 1], TrainConfig())
    assert sweep == Sweep(
        "data_fraction", (0.1, 0.5, 1.0),
        tuple(TrainConfig(data_fraction=f) for f in (0.1, 0.5, 1.0)),
    )  # fmt: skip


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--sweep", "nope=1"], "protege: config: --sweep nope: not a known training setting"),
        (["--sweep", "lora_r=0"], "protege: config: --sweep lora_r=0: lora_r must be >= 1"),
        (["--sweep", "lora_r=4", "--sweep", "lora_r=8"], "one --sweep per run, got 2"),
    ],
)
def test_cli_refuses_a_bad_sweep_before_loading_anything(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    args: list[str],
    message: str,
) -> None:
    """``protege train --sweep`` with a bad key or value exits 2 naming it; no data, model or
    run directory is touched."""
    import trainer.pipeline

    def never(*_: Any, **__: Any) -> None:
        raise AssertionError("the pipeline ran")

    monkeypatch.setattr(trainer.pipeline, "run", never)
    out = tmp_path / "run"
    code = main(["train", "--task", TASK, "--store", f"file://{tmp_path}", "--out", str(out),
                 *args])  # fmt: skip
    assert code == 2
    assert message in capsys.readouterr().err
    assert not out.exists()


def test_cli_refuses_sweep_with_data_fractions(capsys: pytest.CaptureFixture[str]) -> None:
    """``--sweep`` and ``--data-fractions`` together are refused by the parser (exit 2)."""
    with pytest.raises(SystemExit) as caught:
        main(["train", "--task", TASK, "--sweep", "lora_r=4", "--data-fractions", "0.5,1"])
    assert caught.value.code == 2
    assert "not allowed with argument" in capsys.readouterr().err


def _train(tmp_path: Path, base: Path, *args: str) -> tuple[str, Path]:
    """``protege train`` of 48 logged tickets on the tiny base, two steps a run; returns the
    store and the run directory."""
    store, config = ticket_store(tmp_path)
    out = tmp_path / "run"
    assert main(train_argv(store, config, out, base, "--no-publish", *args)) == 0
    return store, out


@pytest.mark.timeout(300)
@pytest.mark.usefixtures("one_torch_thread")
def test_a_sweep_trains_each_value_keeps_the_best_and_publishes_it(
    tmp_path: Path, tiny_base: Path, capsys: pytest.CaptureFixture[str]  # noqa: F811
) -> None:
    """Two learning rates on the tiny base: one adapter per run, ``sweep.json`` and run.json's
    ``sweep`` agree, the kept run's adapter and config are the run's, the report has the
    sweep, and ``protege publish --run`` publishes the kept adapter."""
    store, out = _train(
        tmp_path, tiny_base, "--set", "learning_rate=5", "--sweep", "learning_rate=1e-3,2e-4"
    )
    printed = capsys.readouterr().out

    sweep = json.loads((out / "sweep.json").read_text())
    assert sweep["key"] == "learning_rate" and [r["value"] for r in sweep["rows"]] == [1e-3, 2e-4]
    assert sweep["kept"] == kept_run(sweep["rows"])
    for row in sweep["rows"]:
        assert set(row["scores"]) == {"test-indist", "test-balanced"}
        assert row["steps"] == 2 and row["train_examples"] > 0 and row["peak_memory_gb"] > 0
        assert row["train_s"] > 0 and row["tokens_per_s"] > 0 and row["final_loss"] > 0
    assert [r["adapter"] for r in sweep["rows"]] == [
        "sweep/learning_rate=0.001/adapter", "sweep/learning_rate=0.0002/adapter",
    ]  # fmt: skip

    kept = out / sweep["rows"][sweep["kept"]]["adapter"]
    files = sorted(p.name for p in kept.iterdir())
    assert files == sorted(p.name for p in (out / "adapter").iterdir())
    for name in files:
        assert (out / "adapter" / name).read_bytes() == (kept / name).read_bytes()

    manifest = json.loads((out / "run.json").read_text())
    assert manifest["sweep"] == sweep
    assert manifest["hyperparameters"]["learning_rate"] == sweep["rows"][sweep["kept"]]["value"]
    assert manifest["training"]["steps"] == 2
    report = (out / "report.md").read_text()
    assert "## Sweep: learning_rate" in report and "chosen on these same test sets" in report
    assert (out / "sweep.png").stat().st_size > 1000
    assert "learning_rate  examples" in printed  # the table, on stdout

    # Neither the tiny base nor a two-step student answers a ticket right: a tie at 0, which
    # is "at least as good as the baseline", so the run is publishable.
    assert manifest["beats_baseline"], manifest["metrics"]
    assert main(["publish", "--task", TASK, "--store", store, "--run", str(out)]) == 0
    (version,) = asyncio.run(list_versions(store, TASK))
    published = tmp_path / "store" / "adapters" / TASK / version
    for name in ADAPTER_FILES:
        assert (published / name).read_bytes() == (kept / name).read_bytes()
    assert json.loads((published / MANIFEST).read_text())["sweep"] == sweep


@pytest.mark.timeout(300)
@pytest.mark.usefixtures("one_torch_thread")
def test_data_fractions_run_ascending_and_a_tie_keeps_the_largest(
    tmp_path: Path, tiny_base: Path  # noqa: F811
) -> None:
    """``--data-fractions 1,0.5`` sweeps data_fraction smallest first; with equal scores the
    largest share is kept, as the size ablation always did."""
    _, out = _train(tmp_path, tiny_base, "--data-fractions", "1,0.5")
    sweep = json.loads((out / "sweep.json").read_text())
    assert sweep["key"] == "data_fraction" and [r["value"] for r in sweep["rows"]] == [0.5, 1.0]
    assert sweep["rows"][0]["train_examples"] < sweep["rows"][1]["train_examples"]
    assert sweep["rows"][0]["scores"] == sweep["rows"][1]["scores"]  # both 0 on the tiny base
    assert sweep["kept"] == 1
    assert json.loads((out / "run.json").read_text())["hyperparameters"]["data_fraction"] == 1.0


@pytest.mark.timeout(300)
@pytest.mark.usefixtures("one_torch_thread")
def test_without_a_sweep_there_is_one_run_and_no_sweep_output(
    tmp_path: Path, tiny_base: Path  # noqa: F811
) -> None:
    """No --sweep and no --data-fractions: one run, its adapter at ``adapter``, and no sweep
    folder, sweep.json, sweep plot or report section."""
    _, out = _train(tmp_path, tiny_base)
    assert (out / "adapter" / "adapter_model.safetensors").is_file()
    assert not (out / "sweep").exists() and not (out / "sweep.json").exists()
    assert not (out / "sweep.png").exists()
    assert json.loads((out / "run.json").read_text())["sweep"] is None
    assert "## Sweep" not in (out / "report.md").read_text()


@pytest.mark.timeout(300)
@pytest.mark.usefixtures("one_torch_thread")
def test_a_run_publishes_its_decoding_policy_and_learned_output_schema(
    tmp_path: Path, tiny_base: Path  # noqa: F811
) -> None:
    """run.json (so protege.json) carries ``decoding`` chosen from the greedy and sampled
    scores and the schema of the teacher's JSON answers; the report shows both scores, and
    publishing names the version in it instead of "unpublished"."""
    store, out = _train(tmp_path, tiny_base)
    manifest = json.loads((out / "run.json").read_text())
    decoding = manifest["decoding"]
    assert decoding["temperature"] == 0.0  # the tiny student scores 0 either way: a tie
    assert decoding["max_tokens"] > decoding["basis"]["longest_answer_tokens"] > 0
    assert set(decoding["basis"]["sampled"]) == set(manifest["metrics"]["headline"])
    assert decoding["basis"]["traffic"]["temperature_unset"] == 1.0
    assert manifest["metrics"]["student_sampled"] == decoding["basis"]["sampled"]
    schema = manifest["output_schema"]
    assert schema["required"] == ["category"] and schema["additionalProperties"] is False
    assert manifest["output_schema_fit"]["share"] == 1.0
    report = (out / "report.md").read_text()
    assert "## Serving: decoding policy and output schema" in report
    assert "sampled as the traffic" in report and "adapter version: `unpublished`" in report

    assert main(["publish", "--task", TASK, "--store", store, "--run", str(out)]) == 0
    (version,) = asyncio.run(list_versions(store, TASK))
    folder = tmp_path / "store" / "adapters" / TASK / version
    published = json.loads((folder / MANIFEST).read_text())
    assert published["decoding"] == decoding and published["output_schema"] == schema
    assert f"adapter version: `{version}`" in (out / "report.md").read_text()


@pytest.mark.timeout(300)
@pytest.mark.usefixtures("one_torch_thread")
def test_eval_scores_an_adapter_greedy_and_sampled_and_reports_both(
    tmp_path: Path, tiny_base: Path  # noqa: F811
) -> None:
    """``protege eval`` of a trained adapter on the snapshot's test sets: the report has the
    greedy-vs-sampled table, the decoding policy and the learned schema."""
    store, out = _train(tmp_path, tiny_base)
    report_dir = tmp_path / "eval"
    code = main([
        "eval", "--task", TASK, "--store", store, "--adapter", str(out / "adapter"),
        "--base-model", str(tiny_base), "--device", "cpu", "--out", str(report_dir),
        "--set", "eval_max_new_tokens=8",
    ])  # fmt: skip
    assert code == 0  # a tie at 0 with the zero-shot base is "at least as good"
    report = (report_dir / "report.md").read_text()
    serving = report.split("## Serving: decoding policy and output schema", 1)[1]
    assert "| test set | n | greedy | sampled as the traffic | difference |" in serving
    assert "temperature when the client sets none: `0`" in serving
    assert '"additionalProperties": false' in serving
