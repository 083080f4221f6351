"""The teacher cuts its streams mid-way for 5 s (three events, then the connection drops).

Each stream the teacher cut must end, for its client, with an SSE error event and no
``[DONE]`` (never a silent end that looks complete), and be stored with ``complete=false``
(the standard check that records agree with answers); plain requests meanwhile are unaffected.
"""

from __future__ import annotations

import asyncio

from ledger import read_store
from mix import Mix
from procs import metric
from scenario import Context, Scenario, judge, latency_held, wind_down, world
from traffic import Traffic
from verdict import Result

NAME = "stream-cut"


async def run(ctx: Context) -> Result:
    result = Result(NAME, 0, 0, 0, None)
    async with world(ctx, NAME) as (ws, teacher):
        _, gateway, sidecar = await ws.start_pair(teacher.base_url)
        traffic = Traffic(ws.gateway_url, Mix(seed=6, stream_share=0.6), rate=ctx.rate)
        async with traffic.running():
            await traffic.baseline(ctx.seconds(4))
            teacher.mode = "cut"
            await traffic.hold("during", ctx.seconds(5))
            traffic.phase = "after"  # before the teacher heals: "during" stays all cut
            teacher.mode = "ok"
            await traffic.hold("after", ctx.seconds(3))
            page = await ws.scrape(ws.gateway_url)
        await wind_down(result, ws, gateway, sidecar)
        view = await asyncio.to_thread(read_store, ws.store_uri)
    judge(result, traffic, view, "during")
    streams = [o for o in traffic.outcomes if o.stream and o.status == 200]
    cut = [o for o in streams if o.ended == "error_event"]
    silent = [o for o in streams if o.ended not in ("done", "error_event")]
    during = [o for o in traffic.in_phase("during") if o.stream and o.status == 200]
    result.check(
        "every stream ends with [DONE] or an error event", not silent, f"{len(silent)} did not"
    )
    result.check(
        "streams cut during the fault end with an error event",
        bool(during) and all(o.ended == "error_event" for o in during),
        f"{sum(o.ended == 'error_event' for o in during)} of {len(during)}",
    )
    counted = metric(page, "protege_incomplete_streams_total", reason="upstream_cut")
    result.check("cut streams are counted", counted == len(cut), f"{counted:.0f} for {len(cut)}")
    plain = [o for o in traffic.in_phase("during") if not o.stream]
    bad = sum(o.status != 200 or not o.whole for o in plain)
    result.check("plain requests unaffected", bad == 0, f"{bad} of {len(plain)} failed")
    latency_held(result)
    return result


SCENARIO = Scenario(NAME, "the teacher cuts every stream mid-way for 5 s", run)
