"""A scenario's outcome: its figures, the checks it made, and the suite's verdict table."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from ledger import Tally
from traffic import Latency


@dataclass(frozen=True)
class Check:
    """One thing a scenario requires, and what it found."""

    name: str
    ok: bool
    detail: str


@dataclass
class Result:
    """What one scenario reports; it passes when every check holds."""

    name: str
    sent: int  # requests sent (the backlog scenario: records written to the spool)
    answered: int  # answers the clients received whole (the backlog scenario: records)
    client_errors: int  # requests without a whole answer: refused, reset, timed out
    tally: Tally | None
    before: Latency | None = None
    during: Latency | None = None
    seconds: float = 0.0
    dropped: int = 0  # records the gateway did not capture on purpose, and counted
    checks: list[Check] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return bool(self.checks) and all(c.ok for c in self.checks)

    def check(self, name: str, ok: bool, detail: str) -> None:
        self.checks.append(Check(name, bool(ok), detail))

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        out["passed"] = self.passed
        return out


def _latency(lat: Latency | None) -> str:
    if lat is None or lat.count == 0:
        return "-"
    return f"{lat.p50_ms:.1f} / {lat.p99_ms:.1f}"


_HEAD = (
    "scenario",
    "sent",
    "answered",
    "client errors",
    "stored (distinct)",
    "dup",
    "counted drops",
    "lost",
    "p50/p99 ms before",
    "p50/p99 ms during",
    "s",
    "verdict",
)


def row(result: Result) -> tuple[str, ...]:
    t = result.tally
    return (
        result.name,
        f"{result.sent:,}",
        f"{result.answered:,}",
        f"{result.client_errors:,}",
        "-" if t is None else f"{t.distinct:,}",
        "-" if t is None else f"{t.duplicates:,}",
        f"{result.dropped:,}",
        "-" if t is None else f"{max(0, t.lost - result.dropped):,}",
        _latency(result.before),
        _latency(result.during),
        f"{result.seconds:.0f}",
        "PASS" if result.passed else "FAIL",
    )


def table(results: list[Result]) -> str:
    """The verdict table (Markdown)."""
    lines = ["| " + " | ".join(_HEAD) + " |", "|" + "---|" * len(_HEAD)]
    lines += ["| " + " | ".join(row(r)) + " |" for r in results]
    return "\n".join(lines)


def details(result: Result) -> str:
    """The checks and notes of one scenario, one per line."""
    lines = [f"{result.name}: {'PASS' if result.passed else 'FAIL'}"]
    for c in result.checks:
        lines.append(f"  [{'ok' if c.ok else 'FAIL'}] {c.name}: {c.detail}")
    lines += [f"  - {note}" for note in result.notes]
    return "\n".join(lines)
