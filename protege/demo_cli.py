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
    _closed_loop(p)
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


def _closed_loop(p: argparse.ArgumentParser) -> None:
    """``--autopilot`` and the thresholds a tiny model needs to flow through every step."""
    p.add_argument(
        "--autopilot",
        action="store_true",
        help="the closed loop, nobody at the keyboard: protege up --autopilot trains v1 after "
        "--requests new exchanges, the gateway promotes it shadow -> canary, the traffic then "
        "shifts to long e-mail threads and the autopilot retrains for the drift; v2 is "
        "proven against v1 on live traffic and takes over (stages teacher, student, gateway, "
        "learn, shift; --rollout-requests is the size of each batch of traffic)",
    )
    p.add_argument(
        "--window-s",
        type=_window,
        default=60.0,
        help="--autopilot: the rollout's window (guardrails, auto-promotion, challenge, live "
        "drift; the drift needs 200 prompts in it), at least 10 (default 60)",
    )
    p.add_argument(
        "--min-agreement",
        type=_share,
        default=0.8,
        help="--autopilot: the guardrails' minimum mean shadow agreement (default 0.8; 0 "
        "for smoke tests with a tiny model)",
    )
    p.add_argument(
        "--max-check-failure-rate",
        type=_share,
        default=0.1,
        help="--autopilot: the guardrails' maximum share of student answers failing the "
        "output checks (default 0.1; 1 for smoke tests with a tiny model)",
    )
    p.add_argument(
        "--champion-margin",
        type=_margin,
        default=0.0,
        help="--autopilot: the lead over the champion a retrained student needs offline to be "
        "published (default 0: a tie passes; -1 for smoke tests)",
    )
    p.add_argument(
        "--challenge-margin",
        type=_margin,
        default=0.0,
        help="--autopilot: the lead over the champion the challenger needs on live traffic "
        "(default 0; -1 for smoke tests)",
    )
    p.add_argument(
        "--drift-threshold",
        type=float,
        default=0.2,
        help="--autopilot: the live input drift that retrains at once (default 0.2)",
    )
    p.add_argument(
        "--phase-timeout-s",
        type=float,
        default=3600.0,
        help="--autopilot: a phase (learn, shift) not done by then fails the demo (default 3600)",
    )


def _bounded(low: float, high: float) -> Any:
    def parse(text: str) -> float:
        value = float(text)
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"must be {low:g}..{high:g}, got {value:g}")
        return value

    return parse


_share, _margin, _window = _bounded(0, 1), _bounded(-1, 1), _bounded(10, 86400)


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
    from protege.demo import run_demo
    from protege.demo_options import DemoOptions
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
