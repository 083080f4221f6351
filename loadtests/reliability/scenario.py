"""What every scenario shares: its options, its set-up and wind-down, and its standard checks.

A scenario is an async function of a ``Context`` returning a ``verdict.Result``. The standard
checks, made on every scenario that sends traffic, are the suite's invariants: no whole answer
without its record in the store (``lost``), no request id stored twice (``dup``), and no stored
record contradicting the answer its client got.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from fakes import ScriptedTeacher
from ledger import StoreView, tally
from services import Child, Workspace
from traffic import Traffic, latency
from verdict import Result

from core.settings import writer_spools


@dataclass(frozen=True)
class Context:
    root: Path  # a temporary directory; each scenario works in its own folder under it
    cores: tuple[int, int]  # (gateway core, core of everything else)
    scale: float = 1.0  # multiplies every phase's length (--quick: shorter)
    rate: float = 200.0  # requests per second sent by the clients
    backlog_mib: int = 512  # the large-backlog scenario's spool backlog

    def seconds(self, s: float) -> float:
        return max(0.5, s * self.scale)


@dataclass(frozen=True)
class Scenario:
    name: str
    about: str
    run: Callable[[Context], Awaitable[Result]]


@contextlib.asynccontextmanager
async def world(ctx: Context, name: str) -> AsyncIterator[tuple[Workspace, ScriptedTeacher]]:
    """A workspace and a running fake teacher; both torn down on the way out."""
    ws = Workspace(ctx.root, name, ctx.cores)
    teacher = ScriptedTeacher().start()
    try:
        yield ws, teacher
    finally:
        ws.close()
        teacher.stop()


async def wind_down(result: Result, ws: Workspace, gateway: Child, sidecar: Child | None) -> None:
    """Stop the gateway (it seals its last segment), then the sidecar (it ships everything
    sealed and exits); check both exit cleanly and the spool (each worker's too) is left
    empty."""
    code = await ws.stop(gateway)
    result.check("gateway stops cleanly", code in (0, -15), f"exit code {code}")
    if sidecar is not None:
        code = await ws.stop(sidecar)
        result.check("sidecar drains and exits 0", code == 0, f"exit code {code}")
    left = [p.name for d in writer_spools(ws.spool) if d.exists() for p in d.iterdir()
            if p.is_file()]  # fmt: skip
    result.check("spool drained", not left, f"{len(left)} segments left {left[:3]}")
    work = ws.spool / ".work"
    scratch = sorted(p.name for p in work.rglob("*") if p.is_file()) if work.exists() else []
    result.check("no scratch parts left in .work", not scratch, f"{len(scratch)} {scratch[:3]}")


def judge(
    result: Result,
    traffic: Traffic,
    view: StoreView,
    fault: str,
    elsewhere: Iterable[str] = (),
    dropped: int = 0,
) -> Result:
    """Fill in the figures and the standard checks. ``elsewhere``: request ids whose records
    are accounted for outside the store; ``dropped``: records the gateway counted as not
    captured (the spool cap): that many may be missing, and no more."""
    outcomes = traffic.outcomes
    t = tally(outcomes, view, elsewhere)
    result.sent = len(outcomes)
    result.answered = sum(o.whole for o in outcomes)
    result.client_errors = sum(not o.whole and o.ended != "left" for o in outcomes)
    result.tally = t
    result.dropped = dropped
    result.before = latency(traffic.in_phase("before"))
    result.during = latency(traffic.in_phase(fault))
    if dropped:
        result.check(
            "every missing record is a counted drop",
            t.lost == dropped,
            f"{t.lost} of {t.expected} missing, {dropped} counted as dropped",
        )
    else:
        lost = f"{t.lost} of {t.expected} {t.lost_ids[:3]}"
        result.check("no answered exchange lost", t.lost == 0, lost)
    result.check("no duplicate record", t.duplicates == 0, f"{t.rows} rows, {t.distinct} ids")
    result.check(
        "records agree with the answers", t.disagree == 0, f"{t.disagree} {t.disagreeing[:3]}"
    )
    return result


def latency_held(result: Result, slack_ms: float = 100.0) -> None:
    """Check the answers during the fault were about as fast as before it: p99 at most twice
    the p99 before plus ``slack_ms``. The slack absorbs the stalls of a few tens of ms that a
    shared two-core machine shows now and then (the clients, the fakes and the sidecar share a
    core); a fault that reaches the clients costs them a retry, a timeout or an outage: a second
    or more."""
    before, during = result.before, result.during
    if before is None or during is None or not before.count or not during.count:
        result.check("latency held during the fault", False, "no answers to compare")
        return
    limit = 2 * before.p99_ms + slack_ms
    result.check(
        "latency held during the fault",
        during.p99_ms <= limit,
        f"p99 {during.p99_ms:.1f} ms during vs {before.p99_ms:.1f} ms before (limit {limit:.1f})",
    )
