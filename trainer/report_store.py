"""A training run's report in the store, for people (the console)::

    reports/<task>/<run>/*.png            the run directory's plots: scores, loss (and sweep)
    reports/<task>/<run>/sweep.json       a sweep's record (a sweep only)
    reports/<task>/<run>/mistakes.json    per test set, the student's worst answers
    reports/<task>/<run>/evaluation.json  the report's headline table, as data
    reports/<task>/<run>/run.json         the run's manifest
    reports/<task>/<run>/report.md        the report itself, uploaded last: the folder is complete

``<run>`` is the run's ``--run-id``, else its run directory's name (``core.keys.report_prefix``).
Only the run directory's top-level files go (a sweep's other runs, under ``sweep/``, stay
local); the two JSON files are written into the run directory first. ``mistakes.json`` is
``{"<test set>": [{"request_id", "prompt", "reference", "prediction", "score", "correct",
"reference_label", "predicted_label"}, ...]}``, worst first; ``request_id`` names the exchange.

Every run that wrote its report uploads it, published or not; a store that refuses it is
logged and said on stderr, never raised: the run's own outcome (its exit status, its record)
comes first.
"""

from __future__ import annotations

import asyncio
import os
import re
import sys
from collections.abc import Collection
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import orjson
import structlog

from core.keys import NAME, report_prefix
from core.store import open_store
from trainer.evaluate import EvalResult
from trainer.metrics import ExampleRecord
from trainer.report import headline_table
from trainer.sweep import SWEEP_FILE

if TYPE_CHECKING:
    from trainer.pipeline import RunOptions

REPORT: Final = "report.md"
MISTAKES: Final = "mistakes.json"
EVALUATION: Final = "evaluation.json"
# A Markdown image: ![alt](target)
_IMAGE = re.compile(r"(!\[[^\]]*\]\()([^)\s]+)(\))")

log = structlog.get_logger("trainer")


def run_name(run_id: str | None, run_dir: Path) -> str:
    """The run's name in the store: its run id, else its run directory's name."""
    return run_id or Path(os.path.abspath(run_dir)).name


def report_location(task: str, run_dir: Path, run_id: str | None) -> str | None:
    """The store folder of the run's report; None when its name is no key component (a run
    directory named with spaces, say: such a run needs ``--run-id``)."""
    name = run_name(run_id, run_dir)
    return report_prefix(task, name) if re.fullmatch(NAME, name) else None


def mistakes_data(evaluation: EvalResult) -> dict[str, list[dict[str, Any]]]:
    """``mistakes.json``: per test set, the student's worst answers, worst first."""
    return {name: [_mistake(r) for r in records] for name, records in evaluation.mistakes.items()}


def _mistake(record: ExampleRecord) -> dict[str, Any]:
    return {
        "request_id": record.request_id,
        "prompt": record.prompt,
        "reference": record.reference,
        "prediction": record.prediction,
        "score": record.score,
        "correct": record.correct,
        "reference_label": record.reference_label,
        "predicted_label": record.predicted_label,
    }


def local_links(markdown: str, names: Collection[str]) -> str:
    """``markdown`` with every image whose file is one of ``names`` linked by that bare name,
    so the link resolves in the folder the report is uploaded to."""

    def bare(m: re.Match[str]) -> str:
        name = m[2].rsplit("/", 1)[-1]
        return f"{m[1]}{name}{m[3]}" if name in names else m[0]

    return _IMAGE.sub(bare, markdown)


def store_report(opts: RunOptions, evaluation: EvalResult) -> None:
    """Upload the run's report (the module docstring's layout) and note in the run's record
    where it is; a failure is logged and said on stderr, not raised."""
    name = run_name(opts.run_id, opts.out_dir)
    prefix = report_location(opts.task, opts.out_dir, opts.run_id)
    try:
        files = report_files(opts.out_dir, evaluation, swept=opts.sweep is not None)
        if prefix is None:
            raise ValueError(f"{name!r} is no store key component: name the run with --run-id")
        asyncio.run(_upload(opts.store, prefix, files))
    except Exception as exc:  # logged and said: the run's own outcome comes first
        log.error("run report not uploaded", task=opts.task, run=name, error=repr(exc))
        print(f"protege: report of run {name} not uploaded: {exc}", file=sys.stderr)
        return
    opts.facts.report = prefix
    opts.say(f"[report] in the store: {prefix}")


def report_files(run_dir: Path, evaluation: EvalResult, *, swept: bool) -> list[Path]:
    """The run directory's files to upload, in order, ``report.md`` last; the JSON of the
    evaluation written first, and the report's image links made bare file names."""
    from trainer.pipeline import RUN_FILE  # (the pipeline imports this module)

    for file, data in ((MISTAKES, mistakes_data(evaluation)),
                       (EVALUATION, headline_table(evaluation))):  # fmt: skip
        (run_dir / file).write_bytes(orjson.dumps(data, option=orjson.OPT_INDENT_2))
    plots = sorted(run_dir.glob("*.png"))
    files = [*plots, *([run_dir / SWEEP_FILE] if swept else []), run_dir / MISTAKES,
             run_dir / EVALUATION, run_dir / RUN_FILE, run_dir / REPORT]  # fmt: skip
    missing = [f.name for f in files if not f.is_file()]
    if missing:
        raise FileNotFoundError(f"{run_dir} lacks {', '.join(missing)}")
    report = run_dir / REPORT
    text = report.read_text(encoding="utf-8")
    linked = local_links(text, {p.name for p in plots})
    if linked != text:
        report.write_text(linked, encoding="utf-8")
    return files


async def _upload(store_uri: str, prefix: str, files: list[Path]) -> None:
    async with open_store(store_uri) as store:
        for path in files:
            await store.put_file(prefix + path.name, path)
