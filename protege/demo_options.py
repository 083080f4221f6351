"""The options of ``protege demo`` and, from them, each stage's fate."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from protege.demo_cli import STAGES
from protege.demo_procs import DemoError

ROLLOUT: Final = ("shadow", "canary", "full")
# Training settings that teach SmolLM2-135M the task in a few minutes on two CPU cores.
TRAIN_SETTINGS: Final = (
    "epochs=3", "learning_rate=1e-3", "seq_len=256", "max_tokens_per_batch=1024",
    "eval_batch_size=32",
)  # fmt: skip


@dataclass
class DemoOptions:
    workdir: Path = Path(".protege/demo")
    requests: int = 200  # teacher-mode requests: the training data
    rollout_requests: int = 30  # requests in each of shadow, canary and full
    canary_percent: float = 50.0
    base_model: str = "smollm2"
    device: str | None = None  # None: cuda if present, else cpu
    teacher_url: str | None = None  # a real teacher instead of the demo teacher
    teacher_model: str | None = None  # the model asked of that teacher
    teacher_delay_ms: float = 0.0  # the demo teacher holds every answer back this long
    store: str | None = None  # default: file://<workdir>/store
    student_url: str | None = None  # a running LoRAX (or protege student) instead of starting one
    skip: frozenset[str] = frozenset()
    train_config: Path | None = None
    train_set: list[str] = field(default_factory=list)  # KEY=VALUE TrainConfig overrides
    allow_below_baseline: bool = False  # publish a student that lost to the baseline (smoke tests)
    judge: bool = False  # LLM judges on: the demo teacher also judges (pairwise), end to end
    seed: int = 0
    # --autopilot: the closed loop, nobody at the keyboard (``protege.demo_autopilot``)
    autopilot: bool = False
    window_s: float = 60.0  # the rollout's window: guardrails, auto-promotion, drift, challenge
    min_agreement: float = 0.8  # guardrails: mean shadow agreement a student needs
    max_check_failure_rate: float = 0.1  # guardrails: share of answers failing output checks
    champion_margin: float = 0.0  # offline: the retrained student's lead over the champion
    challenge_margin: float = 0.0  # live: the challenger's lead over the champion
    drift_threshold: float = 0.2  # live input drift that retrains at once
    phase_timeout_s: float = 3600.0  # a phase not done by then fails the demo
    say: Callable[[str], None] = print


def plan(opts: DemoOptions) -> dict[str, str]:
    """Each stage's fate: ``run``, ``skipped`` or ``external``; a ``DemoError`` for a plan that
    cannot work (a stage needing one that will not be there)."""
    fate = {name: "skipped" if name in opts.skip else "run" for name in STAGES}
    if opts.teacher_url:
        fate["teacher"] = "external"
    if opts.student_url:
        fate["student"] = "external"
    if fate["train"] == "skipped":
        fate["publish"] = "skipped"
    needs_gateway = [s for s in ("traffic", *ROLLOUT) if fate[s] == "run"]
    if needs_gateway and fate["gateway"] == "skipped":
        raise DemoError(f"--skip gateway leaves nothing to serve {', '.join(needs_gateway)}")
    if fate["gateway"] == "run" and fate["teacher"] == "skipped":
        raise DemoError("--skip teacher needs --teacher-url: the gateway needs a teacher")
    rollout = [s for s in ROLLOUT if fate[s] == "run"]
    if not rollout and fate["student"] == "run":
        fate["student"] = "skipped"  # nothing would ask it
    if rollout and fate["student"] == "skipped":
        raise DemoError(f"--skip student needs --student-url for {', '.join(rollout)}")
    return fate


def train_settings(opts: DemoOptions) -> list[str]:
    """The ``protege train`` options every training of the demo takes."""
    args = ["--device", opts.device] if opts.device else []
    if opts.train_config:
        args += ["--train-config", str(opts.train_config.resolve())]
    for item in (*TRAIN_SETTINGS, *opts.train_set):
        args += ["--set", item]
    return args
