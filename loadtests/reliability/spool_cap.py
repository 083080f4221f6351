"""The spool reaches its cap: the sidecar stops for 6 s under load, with a 1 MiB cap.

With ``on_full: drop`` (the default) the gateway keeps answering and stops capturing, counting
every record it drops (``protege_spool_dropped_total``): the store may miss exactly that many
answered exchanges, no more. With ``on_full: reject`` it answers 503 in the OpenAI error shape
(and ``/readyz`` says 503) until the sidecar drains the spool; every exchange it answered is
stored. Either way the spool stays near its cap, and capture resumes once the sidecar is back.
"""

from __future__ import annotations

import asyncio
import time

import httpx
from ledger import read_store
from mix import Mix
from procs import metric
from scenario import Context, Scenario, judge, wind_down, world
from services import Workspace
from traffic import Traffic
from verdict import Result

from core.segment import spool_bytes

CAP = 1024 * 1024
FULL_S = 6.0
RESUMED_AFTER_S = 3.0  # the sidecar's start, its first pass and the gateway's rescan


async def _watch_full(ws: Workspace, seconds: float) -> tuple[int, set[int]]:
    """Sample the spool's size and ``/readyz`` for ``seconds``: (largest size, statuses)."""
    peak, ready = 0, set()
    ends = time.monotonic() + seconds
    async with httpx.AsyncClient(timeout=2, trust_env=False) as client:
        while time.monotonic() < ends:
            peak = max(peak, await asyncio.to_thread(spool_bytes, ws.spool))
            ready.add((await client.get(ws.gateway_url + "/readyz")).status_code)
            await asyncio.sleep(0.25)
    return peak, ready


async def run_policy(ctx: Context, name: str, on_full: str) -> Result:
    result = Result(name, 0, 0, 0, None)
    async with world(ctx, name) as (ws, teacher):
        spool = {"max_bytes": CAP, "segment_max_bytes": 64 * 1024, "segment_max_age_s": 0.5}
        config = ws.write_config(teacher.base_url, spool={**spool, "on_full": on_full})
        gateway = await ws.start_gateway(config)
        sidecar = await ws.start_sidecar(config)
        traffic = Traffic(ws.gateway_url, Mix(seed=5), rate=ctx.rate)
        async with traffic.running():
            await traffic.baseline(ctx.seconds(3))
            traffic.phase = "during"
            await ws.stop(sidecar)
            peak, ready = await _watch_full(ws, ctx.seconds(FULL_S))
            sidecar = await ws.start_sidecar(config)
            traffic.phase = "after"
            resumed = time.monotonic() + RESUMED_AFTER_S
            await traffic.hold("after", RESUMED_AFTER_S + ctx.seconds(3))
            page = await ws.scrape(ws.gateway_url)
        await wind_down(result, ws, gateway, sidecar)
        view = await asyncio.to_thread(read_store, ws.store_uri)
    dropped = int(metric(page, "protege_spool_dropped_total"))
    judge(result, traffic, view, "during", dropped=dropped)
    result.check(
        "the spool stays near its cap",
        peak <= 2 * CAP,
        f"up to {peak / 1024:.0f} KiB of {CAP // 1024}",
    )
    stored = view.ids
    late = [o for o in traffic.in_phase("after") if o.started >= resumed and o.request_id]
    uncaptured = sum(o.request_id not in stored for o in late if o.status == 200)
    ok = all(o.status == 200 for o in late) and not uncaptured
    result.check(
        "capture resumes once the sidecar is back", ok, f"{uncaptured} of {len(late)} late"
    )
    during = traffic.in_phase("during")
    if on_full == "drop":
        failed = sum(not o.whole or o.status != 200 for o in traffic.outcomes)
        result.check("clients never notice", failed == 0, f"{failed} not answered 200")
        result.check("drops are counted", dropped > 0, f"{dropped} dropped")
    else:
        refused = [o for o in during if o.status == 503]
        shaped = all(o.shaped and o.code == "capture_unavailable" for o in refused)
        result.check(
            "full: 503 in the OpenAI error shape", bool(refused) and shaped, f"{len(refused)} 503s"
        )
        result.check("full: /readyz says 503", 503 in ready, f"statuses seen {sorted(ready)}")
        other = sum(not o.whole or o.status not in (200, 503) for o in traffic.outcomes)
        result.check("no other client error", other == 0, f"{other}")
    result.notes.append(f"{len(during)} requests while the sidecar was away")
    return result


async def run_drop(ctx: Context) -> Result:
    return await run_policy(ctx, "spool-cap-drop", "drop")


async def run_reject(ctx: Context) -> Result:
    return await run_policy(ctx, "spool-cap-reject", "reject")


DROP = Scenario("spool-cap-drop", "spool cap reached with on_full: drop (keep serving)", run_drop)
REJECT = Scenario("spool-cap-reject", "spool cap reached with on_full: reject (503)", run_reject)
