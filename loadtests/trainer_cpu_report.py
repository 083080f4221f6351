"""The CPU benchmark's scenarios, their figures from ``run.json``, the table and the verdicts.

Everything here is pure: a finished run's files and measurements in, numbers and text out.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Final

GIB: Final = 1 << 30
DEFAULT: Final = "protege-default"
DEMO: Final = "protege-demo-settings"
PLAIN_FP32: Final = "plain-fp32"
PLAIN_BF16: Final = "plain-bf16"
RSS_LIMIT_GIB: Final = 8.0  # the default run's peak RSS, whole process
SPEEDUP_TARGET: Final = 1.5  # the default run's real tokens/s over plain-fp32's


@dataclass
class Scenario:
    """One scenario: a child process, what it measured, or why it has no figures."""

    name: str
    command: str = ""
    log: str = ""
    missing: str | None = None  # why there are no figures: skipped, or failed and how
    exit_code: int | None = None
    child_wall_s: float | None = None  # the whole child: start-up, loading, training, eval
    peak_rss_bytes: int | None = None  # the child and its children, sampled from outside
    tokens: int | None = None  # real (non-pad) tokens trained on (plain: in the window)
    train_s: float | None = None  # Protégé: training.wall_s; plain: the timed window
    steps: int | None = None  # optimizer steps (plain: in the window)
    examples: int | None = None  # training examples
    scores: dict[str, float] = field(default_factory=dict)  # test set -> student headline
    baseline_scores: dict[str, float] = field(default_factory=dict)  # test set -> baseline
    headline_metric: str | None = None
    train_peak_bytes: int | None = None  # Protégé: peak RSS measured inside training
    memory: dict[str, Any] = field(default_factory=dict)  # Protégé: the memory plan
    snapshot: str | None = None  # the dataset snapshot trained on
    notes: list[str] = field(default_factory=list)

    @property
    def tokens_per_s(self) -> float | None:
        if self.tokens is None or not self.train_s:
            return None
        return self.tokens / self.train_s


def from_run(scenario: Scenario, run: dict[str, Any]) -> Scenario:
    """``scenario`` with the figures of a ``protege train`` run's ``run.json``."""
    training, metrics = run.get("training", {}), run.get("metrics", {})
    student = metrics.get("student", "student")
    baselines = metrics.get("baselines", [])
    headline: dict[str, dict[str, float]] = metrics.get("headline", {})
    scenario.tokens = training.get("tokens")
    scenario.train_s = training.get("wall_s")
    scenario.steps = training.get("steps")
    scenario.examples = training.get("examples")
    scenario.train_peak_bytes = training.get("peak_memory_bytes")
    scenario.memory = training.get("memory", {})
    scenario.snapshot = run.get("dataset_snapshot")
    scenario.headline_metric = metrics.get("headline_metric")
    scenario.scores = {name: by[student] for name, by in headline.items() if student in by}
    scenario.baseline_scores = {
        name: max(by[b] for b in baselines if b in by)
        for name, by in headline.items()
        if any(b in by for b in baselines)
    }
    return scenario


def results(head: dict[str, Any], scenarios: Sequence[Scenario]) -> dict[str, Any]:
    """``results.json``: ``head`` (date, machine, options), every scenario, the verdicts."""
    return {
        **head,
        "scenarios": [{**asdict(s), "tokens_per_s": s.tokens_per_s} for s in scenarios],
        "verdicts": verdicts(scenarios),
    }


def render(scenarios: Sequence[Scenario]) -> list[str]:
    """The table, the baseline's scores, the scenarios' notes, a blank line, the verdicts."""
    lines = table(scenarios)
    default = next((s for s in scenarios if s.name == DEFAULT and s.baseline_scores), None)
    if default is not None:
        lines.append(f"base (zero-shot) {default.headline_metric}: "
                     f"{scores_text(default.baseline_scores)}")  # fmt: skip
    lines += [f"{s.name}: {note}" for s in scenarios for note in s.notes]
    return [*lines, "", *verdict_lines(verdicts(scenarios))]


def table(scenarios: Sequence[Scenario]) -> list[str]:
    """One line per scenario, the header first."""
    by = {s.name: s for s in scenarios}
    fp32, bf16 = _speed(by.get(PLAIN_FP32)), _speed(by.get(PLAIN_BF16))
    lines = [
        f"{'scenario':<22}{'tokens/s':>9}{'x fp32':>8}{'x bf16':>8}{'peak RSS GiB':>13}"
        f"{'train peak GiB':>15}{'plan GiB':>9}{'train s':>9}{'steps':>7}  scores"
    ]
    for s in scenarios:
        if s.missing is not None:
            lines.append(f"{s.name:<22}{'-':>9}  {s.missing}")
            continue
        speed = s.tokens_per_s
        plan = s.memory.get("estimate_bytes")
        lines.append(
            f"{s.name:<22}{_num(speed, ',.0f'):>9}{_num(_ratio(speed, fp32), '.2f'):>8}"
            f"{_num(_ratio(speed, bf16), '.2f'):>8}{_num(_gib(s.peak_rss_bytes), '.2f'):>13}"
            f"{_num(_gib(s.train_peak_bytes), '.2f'):>15}{_num(_gib(plan), '.2f'):>9}"
            f"{_num(s.train_s, ',.1f'):>9}{_num(s.steps, 'd'):>7}  {scores_text(s.scores)}"
        )
    return lines


def scores_text(scores: dict[str, float]) -> str:
    return ", ".join(f"{name} {value:.3f}" for name, value in scores.items()) or "-"


def verdicts(scenarios: Sequence[Scenario]) -> list[dict[str, str]]:
    """The three checks on the default run: memory, speed, and scores and time."""
    by = {s.name: s for s in scenarios if s.missing is None}
    default, fp32, demo = by.get(DEFAULT), by.get(PLAIN_FP32), by.get(DEMO)
    return [
        _memory_verdict(default),
        _speed_verdict(default, fp32),
        _demo_verdict(default, demo, next((s for s in scenarios if s.name == DEMO), None)),
    ]


def _memory_verdict(default: Scenario | None) -> dict[str, str]:
    check = f"default peak RSS <= {RSS_LIMIT_GIB:g} GiB"
    peak = _gib(default.peak_rss_bytes) if default else None
    if peak is None:
        return _verdict(check, None, "the default run has no figures")
    return _verdict(check, peak <= RSS_LIMIT_GIB, f"{peak:.2f} GiB")


def _speed_verdict(default: Scenario | None, fp32: Scenario | None) -> dict[str, str]:
    check = f"default tokens/s >= {SPEEDUP_TARGET:g}x plain-fp32"
    ratio = _ratio(_speed(default), _speed(fp32))
    if ratio is None:
        return _verdict(check, None, "the default run or plain-fp32 has no figures")
    return _verdict(check, ratio >= SPEEDUP_TARGET, f"{ratio:.2f}x")


def _demo_verdict(
    default: Scenario | None, demo: Scenario | None, asked: Scenario | None
) -> dict[str, str]:
    check = "default scores >= demo-settings' on every test set, train s <= demo-settings'"
    if default is None or demo is None:
        why = asked.missing if asked is not None and asked.missing else "no figures"
        return _verdict(check, None, f"{DEMO}: {why}" if default else "the default run failed")
    behind = [n for n, v in demo.scores.items() if default.scores.get(n, float("-inf")) < v]
    slower = (default.train_s or 0.0) > (demo.train_s or 0.0)
    detail = (
        f"scores {scores_text(default.scores)} vs {scores_text(demo.scores)}; "
        f"train {_num(default.train_s, ',.1f')} s vs {_num(demo.train_s, ',.1f')} s"
    )
    return _verdict(check, not behind and not slower and bool(demo.scores), detail)


def _verdict(check: str, passed: bool | None, detail: str) -> dict[str, str]:
    result = "not judged" if passed is None else "PASS" if passed else "FAIL"
    return {"check": check, "result": result, "detail": detail}


def verdict_lines(judged: Sequence[dict[str, str]]) -> list[str]:
    return [f"{v['result']:<10} {v['check']}: {v['detail']}" for v in judged]


def _speed(scenario: Scenario | None) -> float | None:
    return None if scenario is None or scenario.missing else scenario.tokens_per_s


def _ratio(value: float | None, base: float | None) -> float | None:
    return None if value is None or not base else value / base


def _gib(value: int | None) -> float | None:
    return None if value is None else value / GIB


def _num(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)
