"""The store goes away for 10 s under load, then comes back.

The gateway never waits for the store: its answers keep their latency while the sidecar's
uploads fail and are retried with backoff, and sealed segments pile up in the spool. Once the
store is back the backlog drains, and the store holds every record once.
"""

from __future__ import annotations

import asyncio
import time

from mix import Mix
from procs import metric
from s3store import s3_store
from scenario import Context, Scenario, judge, latency_held, wind_down, world
from services import Workspace
from traffic import Traffic
from verdict import Result

NAME = "store-outage"
OUTAGE_S = 10.0


async def run(ctx: Context) -> Result:
    result = Result(NAME, 0, 0, 0, None)
    async with world(ctx, NAME) as (ws, teacher):
        store = await s3_store(ws)
        try:
            _, gateway, sidecar = await ws.start_pair(teacher.base_url)
            traffic = Traffic(ws.gateway_url, Mix(seed=3), rate=ctx.rate)
            peak = 0.0
            async with traffic.running():
                await traffic.baseline(ctx.seconds(5))
                traffic.phase = "during"
                await store.gate.close()
                ends = time.monotonic() + ctx.seconds(OUTAGE_S)
                while time.monotonic() < ends:
                    await asyncio.sleep(1)
                    page = await ws.scrape(ws.sidecar_url)
                    peak = max(peak, metric(page, "protege_spool_backlog_segments"))
                errors = metric(await ws.scrape(ws.sidecar_url), "protege_upload_errors_total")
                await store.gate.open()
                traffic.phase = "after"
                drained = await _drained(ws)
                await traffic.hold("after", ctx.seconds(2))
            await wind_down(result, ws, gateway, sidecar)
            view = await asyncio.to_thread(store.read, ws.store_uri)
        finally:
            await store.gate.close()
    judge(result, traffic, view, "during")
    latency_held(result)
    failed = sum(not o.whole for o in traffic.outcomes)
    result.check("clients never notice", failed == 0, f"{failed} client errors")
    result.check("uploads failed during the outage", errors > 0, f"{errors:.0f} upload errors")
    result.check("the spool held the backlog", peak > 0, f"up to {peak:.0f} sealed segments")
    shown = "never" if drained is None else f"{drained:.1f} s"
    result.check("backlog drained once the store is back", drained is not None, shown)
    return result


async def _drained(ws: Workspace) -> float | None:
    """Seconds until the sidecar reports an empty backlog (load keeps running)."""
    started = time.monotonic()
    while time.monotonic() - started < 30:
        page = await ws.scrape(ws.sidecar_url)
        if page and metric(page, "protege_spool_backlog_segments") == 0:
            return time.monotonic() - started
        await asyncio.sleep(0.25)
    return None


SCENARIO = Scenario(NAME, "the S3 store unreachable for 10 s under load, then back", run)
