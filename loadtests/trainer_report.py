"""The training benchmark's results, their ratios to the HF Trainer baseline, and the table.

Everything here is pure: measurements in, numbers and text out.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Final

BASELINE: Final = "hf-trainer-defaults"
TARGET_TOKENS_PER_S: Final = 250_000.0
TARGET_RATIO: Final = 70.0
# Measured earlier on an H100 for SmolLM2-135M with LoRA r=16 on every linear layer.
REFERENCE_H100: Final = {
    "hf-trainer-defaults": 3_600.0,
    "naive-padded": 8_400.0,
    "protege": 96_000.0,
    "protege-compile": 157_000.0,
}


@dataclass(frozen=True)
class Measured:
    """One scenario's timed window: the steps after its warm-up."""

    tokens: int  # real (non-pad) tokens through the model in the window
    seconds: float  # wall time of the window
    steps: int  # optimizer steps in the window
    final_loss: float | None  # mean loss of the last steps (see each scenario)
    warmup_s: float = 0.0  # wall time before the window: set-up, warm-up steps, compilation
    loop_tokens_per_s: float | None = None  # Protégé only: TrainResult.tokens_per_s of its run
    compile_s: float | None = None  # Protégé compile only: time spent compiling, all runs
    notes: tuple[str, ...] = ()

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.seconds if self.seconds > 0 else 0.0


@dataclass(frozen=True)
class ScenarioResult:
    name: str
    measured: Measured | None  # None when skipped
    wall_s: float  # the whole scenario: model built, warm-up, window, clean-up
    peak_mem_gib: float | None = None  # torch.cuda.max_memory_allocated, CUDA only
    skipped: str | None = None  # why it was not measured: skipped, or "failed: <error>"
    extra: dict[str, Any] = field(default_factory=dict)  # settings worth recording

    @property
    def tokens_per_s(self) -> float | None:
        return None if self.measured is None else self.measured.tokens_per_s


@dataclass(frozen=True)
class Verdict:
    scenario: str | None  # the fastest Protégé scenario, judged
    tokens_per_s: float | None
    ratio: float | None  # against the baseline measured in the same run
    passed: bool


def ratio(result: ScenarioResult, results: Sequence[ScenarioResult]) -> float | None:
    """The scenario's tokens/s over the HF Trainer baseline's, when both ran."""
    base = next((r.tokens_per_s for r in results if r.name == BASELINE), None)
    own = result.tokens_per_s
    return own / base if own is not None and base else None


def verdict(results: Sequence[ScenarioResult]) -> Verdict:
    """Judge the fastest Protégé scenario against both targets."""
    ran = [r for r in results if r.name.startswith("protege") and r.tokens_per_s is not None]
    if not ran:
        return Verdict(None, None, None, False)
    best = max(ran, key=lambda r: r.tokens_per_s or 0.0)
    speed, times = best.tokens_per_s or 0.0, ratio(best, results)
    passed = speed >= TARGET_TOKENS_PER_S and times is not None and times >= TARGET_RATIO
    return Verdict(best.name, speed, times, passed)


def table(results: Sequence[ScenarioResult]) -> list[str]:
    lines = [
        f"{'scenario':<21}{'tokens/s':>11}{'x HF':>8}{'H100 ref':>10}{'loop tok/s':>12}"
        f"{'peak GiB':>10}{'loss':>8}{'steps':>7}{'window s':>10}{'warm-up s':>11}"
    ]
    for r in results:
        lines.append(_row(r, ratio(r, results)))
    return lines


def verdict_lines(v: Verdict, *, gpu: bool) -> list[str]:
    target = f">= {TARGET_TOKENS_PER_S:,.0f} tokens/s and >= {TARGET_RATIO:.0f}x {BASELINE}"
    if v.scenario is None:
        return [f"Target {target}: FAIL (no Protégé scenario ran)"]
    times = "ratio n/a (baseline not run)" if v.ratio is None else f"{v.ratio:.1f}x the baseline"
    status = "PASS" if v.passed else "FAIL"
    if not gpu:
        status += " (informational: not a GPU run)"
    return [
        f"Target {target}: {status}",
        f"  judged on {v.scenario}: {v.tokens_per_s:,.0f} tokens/s, {times}",
    ]


def notes_lines(results: Sequence[ScenarioResult]) -> list[str]:
    lines = []
    for r in results:
        if r.skipped:
            lines.append(f"{r.name}: not measured, {r.skipped}")
        elif r.measured is not None:
            lines.extend(f"{r.name}: {note}" for note in r.measured.notes)
    return lines


def to_json(results: Sequence[ScenarioResult]) -> list[dict[str, Any]]:
    out = []
    for r in results:
        row = asdict(r)
        row["tokens_per_s"] = r.tokens_per_s
        row["ratio_vs_baseline"] = ratio(r, results)
        row["reference_h100_tokens_per_s"] = REFERENCE_H100.get(r.name)
        out.append(row)
    return out


def _row(r: ScenarioResult, times: float | None) -> str:
    ref = _num(REFERENCE_H100.get(r.name), ",.0f")
    if r.measured is None:
        status = "failed" if (r.skipped or "").startswith("failed") else "skipped"
        return f"{r.name:<21}{status:>11}{'':>8}{ref:>10}"
    m = r.measured
    return (
        f"{r.name:<21}{m.tokens_per_s:>11,.0f}{_num(times, '.1f'):>8}{ref:>10}"
        f"{_num(m.loop_tokens_per_s, ',.0f'):>12}{_num(r.peak_mem_gib, '.2f'):>10}"
        f"{_num(m.final_loss, '.3f'):>8}{m.steps:>7}{m.seconds:>10.1f}{m.warmup_s:>11.1f}"
    )


def _num(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)
