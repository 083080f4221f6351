"""The ``protege demo`` command line; the demo itself loads only when it runs."""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import FrameType
from typing import Any, Final

# The demo's stages, in order (see ``protege.demo``).
STAGES: Final = (
    "teacher", "gateway", "traffic", "train", "publish", "student", "shadow", "canary", "full",
)  # fmt: skip


def register(sub: Any) -> None:
    """Add ``demo`` to the ``protege`` parser's subparsers."""
    p = sub.add_parser(
        "demo", help="the whole loop offline on one machine: teacher -> logs -> student -> rollout"
    )
    p.add_argument(
        "--workdir",
        type=Path,
        default=Path(".protege/demo"),
        help="config, logs, spool, store and training runs (default .protege/demo)",
    )
    p.add_argument(
        "--requests",
        type=_positive,
        default=200,
        help="teacher-mode requests: the training data (default 200)",
    )
    p.add_argument(
        "--rollout-requests",
        type=_positive,
        default=30,
        help="requests in each of the shadow, canary and full stages (default 30)",
    )
    p.add_argument(
        "--canary-percent",
        type=float,
        default=50.0,
        help="share of users the canary sends to the student (default 50)",
    )
    p.add_argument(
        "--base-model",
        default="smollm2",
        help="smollm2 (default), a Hugging Face model dir or a .gguf",
    )
    p.add_argument("--device", help="cpu, cuda, ... (default: cuda if present, else cpu)")
    _components(p)
    _training(p)
    p.add_argument("--seed", type=int, default=0, help="seeds the simulated traffic")
    p.set_defaults(run=_run)


def _components(p: argparse.ArgumentParser) -> None:
    """Where the real components come in instead of the demo's, and stages left out."""
    p.add_argument(
        "--teacher-url",
        help="a real OpenAI-compatible teacher instead of the demo "
        "teacher (its key from PROTEGE_TEACHER_API_KEY)",
    )
    p.add_argument("--teacher-model", help="the model asked of --teacher-url")
    p.add_argument(
        "--teacher-delay-ms",
        type=float,
        default=0.0,
        help="the demo teacher holds each answer back this long, like a remote API",
    )
    p.add_argument(
        "--store",
        help="store URI: file://DIR or s3://bucket/prefix (default file://<workdir>/store)",
    )
    p.add_argument(
        "--student-url",
        help="a running LoRAX (or protege student) server instead "
        "of the local one, e.g. http://lorax:8080",
    )
    p.add_argument(
        "--skip",
        type=_stages,
        default=frozenset(),
        metavar="STAGE,...",
        help=f"stages to leave out: {','.join(STAGES)}",
    )


def _training(p: argparse.ArgumentParser) -> None:
    p.add_argument("--train-config", type=Path, help="YAML/JSON of TrainConfig fields")
    p.add_argument(
        "--set",
        dest="train_set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override one TrainConfig field, e.g. --set epochs=2",
    )
    p.add_argument(
        "--judge",
        action="store_true",
        help="turn the LLM judges on: the trainer judges the test sets and the gateway the "
        "shadow pairs (as-good-as-teacher), asked of the demo teacher, which judges by the "
        "known answers (with --teacher-url: of that teacher's --teacher-model)",
    )
    p.add_argument(
        "--allow-below-baseline",
        action="store_true",
        help="publish the student even if it loses to the zero-shot base model: "
        "for smoke tests with a tiny model only",
    )


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _stages(text: str) -> frozenset[str]:
    names = frozenset(s.strip() for s in text.split(",") if s.strip())
    unknown = sorted(names - set(STAGES))
    if unknown:
        known = ", ".join(STAGES)
        raise argparse.ArgumentTypeError(f"unknown stage {unknown[0]!r}; stages: {known}")
    return names


def _run(args: argparse.Namespace) -> int:
    from protege.demo import DemoOptions, run_demo
    from protege.demo_procs import DemoError

    fields = {k: v for k, v in vars(args).items() if k in DemoOptions.__dataclass_fields__}
    opts = DemoOptions(**fields, say=lambda line: print(line, flush=True))
    with _sigterm_interrupts():
        try:
            run_demo(opts)
        except DemoError as exc:
            print(f"protege demo: {exc}", file=sys.stderr, flush=True)
            return exc.exit_code
        except KeyboardInterrupt:
            print("protege demo: interrupted; the processes it started are stopped",
                  file=sys.stderr, flush=True)  # fmt: skip
            return 130
    return 0


@contextmanager
def _sigterm_interrupts() -> Iterator[None]:
    """SIGTERM ends the demo as Ctrl-C does: its children are stopped on the way out."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(_signum: int, _frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
