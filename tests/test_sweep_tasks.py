"""The trainer sweeps' pieces without a model: the invoice task, its store, the report tables.

The modules live in ``loadtests/`` (scripts, not a package the product may import), so they are
loaded here by path.
"""

from __future__ import annotations

import importlib.util
import re
import sys
from datetime import date
from pathlib import Path
from types import ModuleType
from typing import Any

import orjson
import pytest

from trainer.dataset import build_snapshot, load_snapshot
from trainer.settings import load_trainer_settings

LOADTESTS = Path(__file__).resolve().parent.parent / "loadtests"


def load(name: str) -> ModuleType:
    """The module ``loadtests/<name>.py``, imported once under its own name (as the scripts
    import their siblings)."""
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, LOADTESTS / f"{name}.py")
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


tasks = load("sweep_tasks")
report = load("sweep_report")
sweeps = load("trainer_sweeps")

MONTHS = ("January", "February", "March", "April", "May", "June", "July", "August",
          "September", "October", "November", "December")  # fmt: skip
SYMBOLS = {"USD": "$", "EUR": "€", "GBP": "£"}


def written_forms(iso: str) -> set[str]:
    """Every way an email may write the day ``iso``."""
    d = date.fromisoformat(iso)
    month = MONTHS[d.month - 1]
    return {iso, f"{d.day} {month} {d.year}", f"{month} {d.day}, {d.year}",
            f"{d.day:02}.{d.month:02}.{d.year}"}  # fmt: skip


def items_in(text: str) -> int:
    """Line items an email lists: ``- N x goods`` lines, or the ``Items: ...`` list."""
    listed = re.findall(r"^- \d+ x ", text, flags=re.MULTILINE)
    inline = re.search(r"Items: ([^.]*)\.", text)
    return len(listed) + (len(inline[1].split(", ")) if inline else 0)


def test_the_generator_is_deterministic_per_seed() -> None:
    """The same seed gives the same exchanges; another seed gives others."""
    assert tasks.exchanges(40, seed=3) == tasks.exchanges(40, seed=3)
    assert tasks.exchanges(40, seed=3) != tasks.exchanges(40, seed=4)
    assert len({text for _, text, _ in tasks.exchanges(200, seed=3)}) == 200


def test_teacher_answers_state_what_the_email_says() -> None:
    """Every answer is a JSON object of exactly the task's fields, each matching the email:
    names and number verbatim, dates in ISO form, the total and currency, the item count, and a
    null due date exactly when the email gives none."""
    for _, text, answer in tasks.exchanges(300, seed=7):
        fields: dict[str, Any] = orjson.loads(answer)
        assert tuple(fields) == tasks.FIELDS
        for key in ("vendor", "customer", "invoice_number"):
            assert fields[key] in text, (key, text)
        assert any(form in text for form in written_forms(fields["issue_date"])), text
        due_phrases = ("Payment is due by", "Please pay before", "Due date:")
        if fields["due_date"] is None:
            assert not any(p in text for p in due_phrases), text
        else:
            assert any(form in text for form in written_forms(fields["due_date"])), text
        total = fields["total"]
        assert isinstance(total, float) and (f"{total:.2f}" in text or f"{total:,.2f}" in text)
        currency = fields["currency"]
        assert currency in text or SYMBOLS.get(currency, currency) in text, text
        assert fields["line_items"] == items_in(text) >= 1, text


async def test_the_store_builds_a_snapshot_the_trainer_reads(tmp_path: Path) -> None:
    """The written store, curated with the written config as ``protege train --config`` reads
    it, gives train and test examples of every record (none dropped), grouped by user, whose
    completions are the task's JSON objects; free-form extraction has no balanced test set."""
    uri = f"file://{tmp_path / 'store'}"
    assert await tasks.write_store(uri, 240, seed=1) == 240
    config_file = tmp_path / "protege.yaml"
    config_file.write_bytes(orjson.dumps(tasks.config(uri)))  # JSON is YAML
    settings = load_trainer_settings(config_file)
    curation = settings.trainer.curation(tasks.TASK)
    assert settings.store == uri and curation.label is None

    card = await build_snapshot(uri, tasks.TASK, curation)
    assert card.records_in == 240 and card.drops == {}
    assert card.examples["train"] > 0 and card.examples["test-indist"] > 0
    assert card.examples["train"] + card.examples["test-indist"] == 240
    assert card.examples["test-balanced"] == 0

    _, splits, _ = await load_snapshot(uri, tasks.TASK, card.snapshot)
    examples = splits["train"] + splits["test-indist"]
    assert len({e.group for e in examples}) > 20
    for example in examples:
        assert [m["role"] for m in example.messages] == ["system", "user"]
        assert tuple(orjson.loads(example.completion)) == tasks.FIELDS
        assert re.fullmatch(r"[0-9a-f]{16}", example.group)


SWEEP_OK = {
    "task": "demo-tickets", "key": "learning_rate", "values": ["5e-4", "1e-3"],
    "log": "logs/demo-tickets-learning_rate.log", "exit_code": 0, "seconds": 400.0,
    "sweep": {"key": "learning_rate", "kept": 1, "rows": [
        {"value": 0.0005, "train_examples": 700, "scores": {"test-indist": 0.8123,
         "test-balanced": 0.75}, "train_s": 180.04, "tokens_per_s": 1234.4,
         "peak_memory_gb": 1.5, "steps": 88, "final_loss": 0.12345},
        {"value": 0.001, "train_examples": 700, "test-indist": 0.9, "test-balanced": None,
         "train_s": 181.0, "tokens_per_s": 1250.0, "peak_memory_gb": 1.52, "steps": 88,
         "final_loss": 0.1},
    ]},
}  # fmt: skip
SWEEP_FAILED = {
    "task": "demo-tickets", "key": "lora_r", "values": ["8", "16"],
    "log": "logs/demo-tickets-lora_r.log", "exit_code": 1, "seconds": 12.0, "sweep": None,
}  # fmt: skip


@pytest.mark.parametrize(
    ("sweep", "rows"),
    [
        (SWEEP_OK, [
            "| 0.0005 | 700 | 0.812 | 0.750 | 180.0 | 1,234 | 1.50 | 88 | 0.1235 |  |",
            "| 0.001 | 700 | 0.900 | — | 181.0 | 1,250 | 1.52 | 88 | 0.1000 | ✓ |",
        ]),
        (SWEEP_FAILED, [
            "| 8 | **failed**: exit code 1, log `logs/demo-tickets-lora_r.log` |  |  |  |  |  |  "
            "|  |  |",
            "| 16 | **failed**: exit code 1, log `logs/demo-tickets-lora_r.log` |  |  |  |  |  |  "
            "|  |  |",
        ]),
    ],
)  # fmt: skip
def test_a_sweep_renders_as_a_markdown_table(sweep: dict[str, Any], rows: list[str]) -> None:
    """A sweep's runs become one row per value (scores per test set, kept run marked, an empty
    test set as a dash); a failed sweep's values are rows naming the exit code and the log."""
    heads = ("| value | examples | test-indist | test-balanced | train s | tokens/s | peak GiB "
             "| steps | final loss | kept |")  # fmt: skip
    assert report.sweep_table(sweep) == [heads, "|---|" + "---:|" * 8 + ":---:|", *rows]


def test_the_report_has_the_machine_settings_and_every_sweep() -> None:
    """The report names the date, machine and fixed settings, then each task's sweeps."""
    text = report.render({
        "date": "2025-01-02T03:04:05+00:00", "examples": 1000, "fixed": ["epochs=1"],
        "machine": {"cpu": "Some CPU", "cores": 2, "usable_cores": 2, "device": "cpu",
                    "torch": "2.5.0", "python": "3.11.7"},
        "tasks": [{"task": "demo-tickets", "store": "file:///s", "config": "/c.yaml",
                   "error": None}],
        "sweeps": [SWEEP_OK, SWEEP_FAILED],
    })  # fmt: skip
    assert "Date: 2025-01-02T03:04:05+00:00" in text
    assert "Machine: Some CPU, 2 cores (2 usable), device cpu, torch 2.5.0" in text
    assert "`epochs=1`" in text and "## demo-tickets" in text
    assert text.index("### `learning_rate`") < text.index("### `lora_r`")
    assert "**failed**: exit code 1" in text


def test_each_sweep_command_fixes_everything_but_its_key() -> None:
    """A sweep's command sets every fixed setting except the swept one, which it sweeps; a
    --set given on the command line replaces the default of its key."""
    fixed = sweeps.fixed_settings(["lora_r=8", "warmup_ratio=0.1"])
    assert "lora_r=8" in fixed and "lora_r=16" not in fixed and fixed[-1] == "warmup_ratio=0.1"
    data = sweeps.Data("extract", "invoice-extract", "file:///s", Path("/c.yaml"))
    command = sweeps.train_command(data, "lora_r", ["8", "32"], fixed, Path("/out/x"))
    assert command[1:5] == ["-m", "protege.cli", "train", "--task"]
    at = command.index("--sweep")
    assert command[at : at + 2] == ["--sweep", "lora_r=8,32"]
    sets = [command[i + 1] for i, arg in enumerate(command) if arg == "--set"]
    assert sets == [item for item in fixed if not item.startswith("lora_r=")]
    assert "--no-publish" in command


def test_a_run_reads_its_own_sweep_json_only(tmp_path: Path) -> None:
    """A finished sweep's ``sweep.json`` is read with its exit code and the output logged; one
    left by an earlier run is removed first, so a run that writes none has no result."""
    write = "import pathlib, sys; pathlib.Path(sys.argv[1]).write_text('{\"kept\": 0}')"
    run = sweeps.Run("t", "k", ["1"], [sys.executable, "-c", write, str(tmp_path / "sweep.json")],
                     tmp_path, tmp_path / "logs" / "t-k.log")  # fmt: skip
    sweeps.run_sweep(run)
    assert (run.exit_code, run.sweep) == (0, {"kept": 0})
    assert run.log.read_text().startswith("$ ")

    run = sweeps.Run("t", "k", ["1"], [sys.executable, "-c", "raise SystemExit(4)"], tmp_path,
                     tmp_path / "logs" / "t-k.log")  # fmt: skip
    sweeps.run_sweep(run)
    assert (run.exit_code, run.sweep) == (4, None)
    assert sweeps.outcome(run).startswith("FAILED (exit code 4)")
