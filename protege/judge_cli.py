"""The judges' commands: ``protege judge calibrate``.

Registering them imports nothing of judging; it loads only when a command runs.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path
from typing import Any


def register(sub: Any) -> None:
    """Add ``judge`` and its subcommands to the ``protege`` parser's subparsers."""
    judge = sub.add_parser("judge", help="LLM judges of free-text answers")
    commands = judge.add_subparsers(dest="judge_command", required=True)
    cal = commands.add_parser(
        "calibrate",
        help="measure a criterion's agreement with human labels; exit 0 when at or above its "
        "min_agreement, 3 when below, 1 when items could not be judged",
    )
    cal.add_argument("--task", required=True)
    cal.add_argument(
        "--criterion",
        help="a criterion name of judges.tasks.<task> (default: the task's only criterion)",
    )
    cal.add_argument(
        "--labels", required=True, type=Path,
        help="JSONL or CSV: request, answer, [reference], label (pass|fail), [id]",
    )  # fmt: skip
    cal.add_argument("--config", help="YAML settings file (judges, teacher, store)")
    cal.add_argument("--store", help="store URI (default: from config / PROTEGE_STORE)")
    cal.set_defaults(run=_calibrate)


def _calibrate(args: argparse.Namespace) -> int:
    from core.errors import JudgeError, StoreError
    from core.judging import load_judge_settings, read_labels
    from core.judging.calibration import report_lines

    settings = load_judge_settings(args.config, **({"store": args.store} if args.store else {}))
    criterion = _criterion(settings, args.task, args.criterion)
    try:
        labelled = read_labels(args.labels)
        calibration, stats = asyncio.run(_run(settings, criterion, labelled))
    except (JudgeError, StoreError) as exc:
        print(f"protege: {exc}", file=sys.stderr)
        return 1
    print("\n".join(report_lines(calibration)))
    print(
        f"judge calls {stats.total_calls} (cached {stats.cached}, retries {stats.retries}), "
        f"tokens {stats.tokens}, estimated cost {stats.cost:.4f}"
    )
    if not calibration.complete:
        return 1
    return 0 if calibration.calibrated else 3


def _criterion(settings: Any, task: str, name: str | None) -> Any:
    """The criterion asked for, or the task's only one; a ``ConfigError`` naming the choices."""
    from core.errors import ConfigError

    if name is not None:
        return settings.criterion(task, name)
    criteria = settings.criteria(task)
    if len(criteria) != 1:
        names = ", ".join(c.name for c in criteria) or "none"
        raise ConfigError(
            f"--criterion is needed: judges.tasks.{task} has {len(criteria)} criteria ({names})"
        )
    return criteria[0]


async def _run(settings: Any, criterion: Any, labelled: Any) -> tuple[Any, Any]:
    from core.judging import calibrate, opened

    async with opened(settings) as judge:
        return await calibrate(judge, criterion, labelled), judge.stats
