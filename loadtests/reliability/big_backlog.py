"""A large spool backlog shipped with bounded memory (the sidecar benchmark's machinery).

``backlog.write_backlog`` fills a spool with sealed segments through the gateway's own writer
(512 MiB by default, ~230,000 records), then ``protege sidecar --once`` ships it to a local
store on one core while ``sidecar_run`` samples its memory. The store must hold every record
once, the spool must be empty, and memory must stay within the sidecar benchmark's bounds
(peak RSS, and growth once shipping began), however large the backlog.
"""

from __future__ import annotations

import asyncio
import time

from backlog import describe, read_spool, write_backlog
from ledger import Tally, read_store
from scenario import Context, Scenario
from sidecar_report import MAX_GROWTH_MIB, MAX_PEAK_RSS_MIB, MIB, rss_profile
from sidecar_run import leftovers, run_sidecar, sidecar_env, write_config
from verdict import Result

NAME = "large-backlog"


async def run(ctx: Context) -> Result:
    result = Result(NAME, 0, 0, 0, None)
    work = ctx.root / NAME
    spool, store = work / "spool", f"file://{work / 'store'}"
    work.mkdir(parents=True)
    began = time.monotonic()
    await asyncio.to_thread(write_backlog, spool, ctx.backlog_mib * MIB)
    written_s = time.monotonic() - began
    per_segment = (await asyncio.to_thread(read_spool, spool)).per_segment
    backlog = describe(spool, per_segment)
    config = write_config(work / "sidecar.yaml", spool, store)
    timeout = 120 + 2 * backlog.bytes / MIB
    shipped = await asyncio.to_thread(
        run_sidecar, config, spool, ctx.cores[0], sidecar_env({}), work / "sidecar.log", timeout
    )
    view = await asyncio.to_thread(read_store, store, None, ("request_id",))
    ids = view.ids
    tally = Tally(
        rows=len(view.rows),
        distinct=len(ids),
        duplicates=len(view.rows) - len(ids),
        shadow=0,
        expected=backlog.records,
        lost=max(0, backlog.records - len(ids)),
        set_aside=0,
        disagree=0,
    )
    result.sent = result.answered = backlog.records
    result.tally = tally
    result.check(
        "every record stored", len(ids) == backlog.records, f"{len(ids):,} of {backlog.records:,}"
    )
    result.check("no duplicate record", tally.duplicates == 0, f"{tally.rows:,} rows")
    left = leftovers(spool)
    result.check("spool drained", not left, f"{len(left)} files left {left[:3]}")
    profile = rss_profile(shipped.samples, len(backlog.segments))
    peak = max([shipped.max_rss, *(s.rss for s in shipped.samples)])
    growth = peak - (profile.start or peak)
    result.check(
        "peak memory bounded",
        peak <= MAX_PEAK_RSS_MIB * MIB,
        f"peak RSS {peak / MIB:.0f} MiB (limit {MAX_PEAK_RSS_MIB})",
    )
    result.check(
        "memory flat while shipping",
        growth <= MAX_GROWTH_MIB * MIB,
        f"peak - start {growth / MIB:.0f} MiB (limit {MAX_GROWTH_MIB});"
        f" RSS start/mid/end {_mib(profile.start)}/{_mib(profile.mid)}/{_mib(profile.end)} MiB",
    )
    result.notes.append(
        f"{backlog.bytes / MIB:,.0f} MiB in {len(backlog.segments)} segments written in"
        f" {written_s:.1f} s; shipped in {shipped.wall_s:.1f} s"
        f" ({backlog.records / shipped.wall_s:,.0f} records/s, CPU {shipped.cpu_s:.1f} s)"
    )
    return result


def _mib(value: int | None) -> str:
    return "-" if value is None else f"{value / MIB:.0f}"


SCENARIO = Scenario(NAME, "a 512 MiB spool backlog shipped with flat memory", run)
