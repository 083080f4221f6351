"""The sidecar benchmark's numbers: rows, memory profile, targets and the printed table.

Everything here is pure: measurements in, numbers and text out.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final, NamedTuple

from report import Verdict
from sidecar_run import Sample

MIB: Final = 1024 * 1024
# Records/s to the local store on one core: ten times the gateway's 2,000 requests/s target.
MIN_LOCAL_RPS: Final = 20_000
# Peak RSS, whatever the backlog: the idle sidecar (interpreter, pyarrow, aiobotocore) plus one
# segment's row batches, pyarrow's buffers and one part read whole for an S3 upload.
MAX_PEAK_RSS_MIB: Final = 300
# Peak minus the RSS once the first segment was shipped: what shipping may add while under
# way. Holding a seventh of a 1 GiB backlog would exceed it.
MAX_GROWTH_MIB: Final = 150


@dataclass(frozen=True)
class Row:
    """One scenario: the read-only baseline, or the sidecar shipping to one store."""

    scenario: str
    records: int
    bytes: int  # spool segment bytes
    wall_s: float
    cpu_s: float
    peak_rss: int | None = None  # bytes; None for the baseline (it runs in this process)
    rss_start: int | None = None
    rss_mid: int | None = None
    rss_end: int | None = None

    @property
    def rps(self) -> float:
        return self.records / self.wall_s if self.wall_s else math.nan

    @property
    def mib_s(self) -> float:
        return self.bytes / MIB / self.wall_s if self.wall_s else math.nan

    @property
    def growth(self) -> int | None:
        """Peak RSS minus the RSS once shipping had begun."""
        if self.peak_rss is None or self.rss_start is None:
            return None
        return self.peak_rss - self.rss_start


class Profile(NamedTuple):
    """RSS once the first segment was shipped, at half the segments, and at the last look."""

    start: int | None
    mid: int | None
    end: int | None


def rss_profile(samples: Sequence[Sample], segments: int) -> Profile:
    if not samples:
        return Profile(None, None, None)
    shipping = [s for s in samples if s.segments_left < segments] or list(samples)
    half = [s for s in samples if s.segments_left <= segments // 2] or [samples[-1]]
    return Profile(shipping[0].rss, half[0].rss, samples[-1].rss)


@dataclass(frozen=True)
class Check:
    """After a run: the store holds every record once and the spool is empty."""

    scenario: str
    expected: int
    stored: int
    leftovers: tuple[str, ...]

    @property
    def passed(self) -> bool:
        return self.stored == self.expected and not self.leftovers


def _mib(value: int | None) -> float:
    return math.nan if value is None else value / MIB


def verdicts(local: Row, shipped: Sequence[Row]) -> list[Verdict]:
    """Throughput judged on the local store; memory on every shipping run."""
    out = [Verdict("records/s to local store, 1 core", local.rps, MIN_LOCAL_RPS, True, "rec/s")]
    for row in shipped:
        peak, growth, name = _mib(row.peak_rss), _mib(row.growth), row.scenario
        out.append(Verdict(f"peak RSS, {name}", peak, MAX_PEAK_RSS_MIB, False, "MiB"))
        out.append(Verdict(f"peak - start RSS, {name}", growth, MAX_GROWTH_MIB, False, "MiB"))
    return out


def _num(value: float, digits: int = 0) -> str:
    return "n/a" if math.isnan(value) else f"{value:,.{digits}f}"


def _rss(row: Row) -> str:
    parts = (row.rss_start, row.rss_mid, row.rss_end)
    return "/".join(_num(_mib(p)) for p in parts) if row.peak_rss is not None else "-"


def table(rows: Sequence[Row], baseline: Row) -> list[str]:
    lines = [
        f"{'scenario':<22}{'records':>10}{'MiB':>7}{'wall s':>8}{'rec/s':>10}{'MiB/s':>8}"
        f"{'CPU s':>7}{'peak RSS':>9}{'RSS start/mid/end':>19}{'vs read':>9}",
    ]
    for row in rows:
        ratio = row.rps / baseline.rps if baseline.rps else math.nan
        peak = _num(_mib(row.peak_rss)) if row.peak_rss is not None else "-"
        lines.append(
            f"{row.scenario:<22}{row.records:>10,}{_num(row.bytes / MIB):>7}"
            f"{_num(row.wall_s, 2):>8}{_num(row.rps):>10}{_num(row.mib_s, 1):>8}"
            f"{_num(row.cpu_s, 2):>7}{peak:>9}{_rss(row):>19}{_num(ratio, 3) + 'x':>9}"
        )
    return lines


def verdict_lines(results: Sequence[Verdict], checks: Sequence[Check]) -> list[str]:
    lines = ["Targets"]
    for v in results:
        sign = ">=" if v.at_least else "<="
        lines.append(
            f"  {'PASS' if v.passed else 'FAIL'}  {v.name:<40}{_num(v.value):>10} {v.unit}"
            f"  (target {sign} {v.limit:,g} {v.unit})"
        )
    for c in checks:
        left = f", left in the spool: {', '.join(c.leftovers[:3])}" if c.leftovers else ""
        lines.append(
            f"  {'PASS' if c.passed else 'FAIL'}  {c.scenario + ' verified':<40}"
            f"{c.stored:>10,} of {c.expected:,} records stored{left}"
        )
    return lines


def render(header: list[str], table_lines: list[str], targets: list[str], footer: list[str]) -> str:
    blocks = [header, table_lines, targets, footer]
    return "\n\n".join("\n".join(block) for block in blocks if block)
