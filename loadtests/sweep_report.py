"""The trainer sweeps' report: ``sweeps.json``'s content as Markdown. Pure: data in, text out.

A report (what ``trainer_sweeps.py`` writes to ``sweeps.json``)::

    {"date": "...", "machine": {"cpu": ..., "cores": 2, "torch": ...}, "examples": 1000,
     "fixed": ["epochs=1", ...], "tasks": [{"name": "demo", "task": "demo-tickets",
     "store": "file://...", "config": "...", "error": null}],
     "sweeps": [{"task": "demo-tickets", "key": "lora_r", "values": ["8", "16", "32"],
                 "command": "...", "log": "logs/demo-tickets-lora_r.log", "exit_code": 0,
                 "seconds": 640.2, "sweep": <the run's sweep.json, or null>}]}

Each sweep becomes a table of its runs: value, training examples, the student's headline score
per test set, training time, tokens/s, peak memory, steps, final loss, and the kept run marked.
A run that failed (the command's exit code was not 0, or it left no row for a value) is a row
saying so, with the exit code and the log to read.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any, Final

from trainer.examples import TEST_SPLITS

MISSING: Final = "—"
KEPT: Final = "✓"


def render(report: Mapping[str, Any]) -> str:
    """The whole report: what ran where, then per task and setting one table."""
    lines = ["# Trainer sweeps", "", *_preamble(report)]
    for task in report.get("tasks", []):
        lines += ["", f"## {task['task']}", ""]
        if task.get("error"):
            lines.append(f"Store not built: {task['error']}")
        sweeps = [s for s in report.get("sweeps", []) if s["task"] == task["task"]]
        for sweep in sweeps:
            lines += [f"### `{sweep['key']}`", "", *sweep_table(sweep), ""]
    return "\n".join(lines).rstrip() + "\n"


def _preamble(report: Mapping[str, Any]) -> list[str]:
    machine = report.get("machine", {})
    fixed = ", ".join(f"`{item}`" for item in report.get("fixed", [])) or "(none)"
    stores = [f"- `{t['task']}`: {t['store']} (config `{t['config']}`)" for t in report["tasks"]]
    return [
        f"Date: {report.get('date', MISSING)}",
        "",
        f"Machine: {machine.get('cpu', MISSING)}, {machine.get('cores', MISSING)} cores "
        f"({machine.get('usable_cores', MISSING)} usable), device {machine.get('device', 'cpu')}, "
        f"torch {machine.get('torch', MISSING)}, Python {machine.get('python', MISSING)}",
        "",
        f"Fixed settings (every run; the swept setting wins): {fixed}",
        "",
        f"Data: {report.get('examples', MISSING)} exchanges per task; every run of a task is "
        "scored on the same frozen test sets. Scores: the student's headline metric per test set "
        "(accuracy for a classification task, mean per-field agreement for JSON answers); "
        f"{MISSING} where the test set is empty. {KEPT}: the run `protege train` kept.",
        "",
        "Stores:",
        *stores,
    ]


def sweep_table(sweep: Mapping[str, Any]) -> list[str]:
    """One sweep's runs as a Markdown table (header, rule, one row per value)."""
    heads = ["value", "examples", *TEST_SPLITS, "train s", "tokens/s", "peak GiB", "steps",
             "final loss", "kept"]  # fmt: skip
    lines = ["| " + " | ".join(heads) + " |", "|---|" + "---:|" * (len(heads) - 2) + ":---:|"]
    result = sweep.get("sweep") or {}
    rows: Sequence[Mapping[str, Any]] = result.get("rows", [])
    for index, row in enumerate(rows):
        lines.append(_row(row, kept=index == result.get("kept")))
    for value in sweep.get("values", [])[len(rows) :]:
        lines.append(_failed(value, sweep, len(heads)))
    return lines


def _row(row: Mapping[str, Any], *, kept: bool) -> str:
    scores = row.get("scores") or {}
    cells = [
        shown(row.get("value")),
        _number(row.get("train_examples"), "{:,.0f}"),
        *(_number(scores.get(name, row.get(name)), "{:.3f}") for name in TEST_SPLITS),
        _number(row.get("train_s"), "{:,.1f}"),
        _number(row.get("tokens_per_s"), "{:,.0f}"),
        _number(row.get("peak_memory_gb"), "{:.2f}"),
        _number(row.get("steps"), "{:,.0f}"),
        _number(row.get("final_loss"), "{:.4f}"),
        KEPT if kept else "",
    ]
    return "| " + " | ".join(cells) + " |"


def _failed(value: Any, sweep: Mapping[str, Any], width: int) -> str:
    """The row of a value the sweep has no result for."""
    code = sweep.get("exit_code")
    if code is None:
        why = "not run"
    elif code == 0:
        why = "no result in sweep.json"
    else:
        why = f"**failed**: exit code {code}, log `{sweep.get('log', MISSING)}`"
    return "| " + " | ".join([shown(value), why, *[""] * (width - 2)]) + " |"


def shown(value: Any) -> str:
    """A setting's value as a person writes it: 0.001, 16, true."""
    if isinstance(value, bool) or value is None:
        return {True: "true", False: "false", None: "null"}[value]
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, list | tuple):
        return ",".join(shown(v) for v in value)
    return str(value)


def _number(value: Any, form: str) -> str:
    if not isinstance(value, int | float) or isinstance(value, bool) or math.isnan(value):
        return MISSING
    return form.format(value)
