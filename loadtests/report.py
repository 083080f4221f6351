"""Turn the benchmark's measurements into comparisons, target verdicts and a printed table.

Everything here is pure: measurements in, numbers and text out.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from ttfb import TtfbResult
from wrk_runner import WrkResult


@dataclass(frozen=True)
class Scenario:
    name: str  # "chat" (non-streaming) or "stream"
    stream: bool
    connections: int


@dataclass(frozen=True)
class Measurement:
    scenario: Scenario
    mode: str  # "direct" (client -> fake upstream) or "gateway" (client -> gateway -> upstream)
    wrk: WrkResult
    gateway_cpu_s: float  # gateway CPU time spent during the run
    warmup_requests: int  # requests completed during the warm-up before it


@dataclass(frozen=True)
class Comparison:
    """One scenario measured both ways; latencies in milliseconds."""

    scenario: Scenario
    direct_rps: float
    gateway_rps: float
    direct_p50_ms: float
    gateway_p50_ms: float
    direct_p99_ms: float
    gateway_p99_ms: float
    gateway_cpu_us_per_req: float  # gateway CPU time / requests it completed
    gateway_core_busy: float  # gateway CPU time / wall time (1.0 = its core is saturated)
    errors_direct: int
    errors_gateway: int
    rps_ratio: float = field(init=False)
    added_p50_ms: float = field(init=False)
    added_p99_ms: float = field(init=False)
    p50_ratio: float = field(init=False)

    def __post_init__(self) -> None:
        set_ = object.__setattr__
        set_(self, "rps_ratio", _ratio(self.gateway_rps, self.direct_rps))
        set_(self, "added_p50_ms", self.gateway_p50_ms - self.direct_p50_ms)
        set_(self, "added_p99_ms", self.gateway_p99_ms - self.direct_p99_ms)
        set_(self, "p50_ratio", _ratio(self.gateway_p50_ms, self.direct_p50_ms))


@dataclass(frozen=True)
class TtfbComparison:
    direct: TtfbResult
    gateway: TtfbResult

    @property
    def added_p50_ms(self) -> float:
        return self.gateway.p50_ms - self.direct.p50_ms

    @property
    def p50_ratio(self) -> float:
        return _ratio(self.gateway.p50_ms, self.direct.p50_ms)


@dataclass(frozen=True)
class Verdict:
    name: str
    value: float
    limit: float
    at_least: bool  # True: value must be >= limit; False: value must be <= limit
    unit: str
    errors: int = 0  # errors in the runs behind the value; any error fails the target

    @property
    def passed(self) -> bool:
        if math.isnan(self.value) or self.errors:
            return False
        return self.value >= self.limit if self.at_least else self.value <= self.limit


def _ratio(num: float, den: float) -> float:
    return num / den if den else math.nan


def compare(direct: Measurement, gateway: Measurement) -> Comparison:
    g = gateway.wrk
    return Comparison(
        scenario=gateway.scenario,
        direct_rps=direct.wrk.rps,
        gateway_rps=g.rps,
        direct_p50_ms=direct.wrk.p50_us / 1000,
        gateway_p50_ms=g.p50_us / 1000,
        direct_p99_ms=direct.wrk.p99_us / 1000,
        gateway_p99_ms=g.p99_us / 1000,
        gateway_cpu_us_per_req=_ratio(gateway.gateway_cpu_s * 1e6, g.requests),
        gateway_core_busy=_ratio(gateway.gateway_cpu_s, g.duration_s),
        errors_direct=direct.wrk.errors,
        errors_gateway=g.errors,
    )


def verdicts(comparisons: list[Comparison], ttfb: TtfbComparison) -> list[Verdict]:
    """The gateway's targets, each judged on this run's numbers."""
    by_key = {(c.scenario.name, c.scenario.connections): c for c in comparisons}
    chat64, stream16, chat1 = by_key[("chat", 64)], by_key[("stream", 16)], by_key[("chat", 1)]
    return [
        Verdict(
            "throughput, 64 connections",
            chat64.gateway_rps,
            2000,
            True,
            "req/s",
            chat64.errors_gateway,
        ),
        Verdict(
            "streams, 16 connections",
            stream16.gateway_rps,
            1200,
            True,
            "streams/s",
            stream16.errors_gateway,
        ),
        Verdict(
            "added p50 latency, 1 connection",
            chat1.added_p50_ms,
            1.0,
            False,
            "ms",
            chat1.errors_gateway,
        ),
        Verdict(
            "added stream TTFB p50, 1 connection",
            ttfb.added_p50_ms,
            1.5,
            False,
            "ms",
            ttfb.gateway.errors,
        ),
    ]


def _num(value: float, digits: int = 0) -> str:
    return "n/a" if math.isnan(value) else f"{value:,.{digits}f}"


def _signed(value: float) -> str:
    return "n/a" if math.isnan(value) else f"{value:+.3f}"


def throughput_table(comparisons: list[Comparison]) -> list[str]:
    lines = [
        "Throughput (chat: requests/s, stream: whole streams/s)",
        f"{'scenario':<9}{'conns':>6}{'direct/s':>11}{'gateway/s':>11}{'gw/direct':>11}"
        f"{'gw CPU/req':>12}{'gw core':>9}{'errors d/g':>12}",
    ]
    for c in comparisons:
        cpu, busy = _num(c.gateway_cpu_us_per_req) + " us", _num(c.gateway_core_busy * 100) + "%"
        lines.append(
            f"{c.scenario.name:<9}{c.scenario.connections:>6}{_num(c.direct_rps):>11}"
            f"{_num(c.gateway_rps):>11}{_num(c.rps_ratio, 2) + 'x':>11}{cpu:>12}{busy:>9}"
            f"{f'{c.errors_direct}/{c.errors_gateway}':>12}"
        )
    return lines


def latency_table(comparisons: list[Comparison]) -> list[str]:
    lines = [
        "Latency, ms (stream: to the end of the stream)",
        f"{'scenario':<9}{'conns':>6}{'direct p50':>11}{'gw p50':>9}{'added':>9}{'gw/direct':>10}"
        f"{'direct p99':>12}{'gw p99':>9}{'added':>9}",
    ]
    for c in comparisons:
        lines.append(
            f"{c.scenario.name:<9}{c.scenario.connections:>6}{_num(c.direct_p50_ms, 3):>11}"
            f"{_num(c.gateway_p50_ms, 3):>9}{_signed(c.added_p50_ms):>9}"
            f"{_num(c.p50_ratio, 2) + 'x':>10}{_num(c.direct_p99_ms, 3):>12}"
            f"{_num(c.gateway_p99_ms, 3):>9}{_signed(c.added_p99_ms):>9}"
        )
    return lines


def ttfb_lines(ttfb: TtfbComparison) -> list[str]:
    d, g = ttfb.direct, ttfb.gateway
    return [
        f"Streaming time to first byte, 1 connection ({d.requests}/{g.requests} requests, "
        f"errors {d.errors}/{g.errors})",
        f"  p50: direct {_num(d.p50_ms, 3)} ms, gateway {_num(g.p50_ms, 3)} ms, "
        f"added {_signed(ttfb.added_p50_ms)} ms ({_num(ttfb.p50_ratio, 2)}x)",
        f"  p99: direct {_num(d.p99_ms, 3)} ms, gateway {_num(g.p99_ms, 3)} ms, "
        f"added {_signed(g.p99_ms - d.p99_ms)} ms",
    ]


def verdict_lines(results: list[Verdict]) -> list[str]:
    lines = ["Targets"]
    for v in results:
        sign = ">=" if v.at_least else "<="
        digits = 0 if v.at_least else 3
        note = f", {v.errors} gateway errors" if v.errors else ""
        lines.append(
            f"  {'PASS' if v.passed else 'FAIL'}  {v.name:<38}{_num(v.value, digits):>10} {v.unit}"
            f"  (target {sign} {v.limit:,g} {v.unit}{note})"
        )
    return lines


def render(
    header: list[str],
    comparisons: list[Comparison],
    ttfb: TtfbComparison,
    results: list[Verdict],
    footer: list[str],
) -> str:
    blocks = [
        header,
        throughput_table(comparisons),
        latency_table(comparisons),
        ttfb_lines(ttfb),
        verdict_lines(results),
        footer,
    ]
    return "\n\n".join("\n".join(block) for block in blocks if block)
