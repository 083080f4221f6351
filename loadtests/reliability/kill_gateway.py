"""kill -9 of the gateway under load, twice, each time restarted at once on the same spool.

Every exchange answered before a kill must reach the store (its record was written before the
end of its answer was sent); the restarted gateway, or the sidecar, recovers the segment the
killed one left open. Clients see errors only for the requests in flight at the kill and while
the gateway is down.
"""

from __future__ import annotations

import time

from ledger import read_store
from mix import Mix
from scenario import Context, Scenario, judge, wind_down, world
from traffic import Traffic
from verdict import Result

NAME = "kill-gateway"
KILLS = 2


async def run(ctx: Context) -> Result:
    result = Result(NAME, 0, 0, 0, None)
    async with world(ctx, NAME) as (ws, teacher):
        config, gateway, sidecar = await ws.start_pair(teacher.base_url)
        traffic = Traffic(ws.gateway_url, Mix(seed=1), rate=ctx.rate)
        downtimes: list[float] = []
        async with traffic.running():
            await traffic.baseline(ctx.seconds(5))
            traffic.phase = "during"
            for _ in range(KILLS):
                await ws.kill(gateway)
                killed = time.monotonic()
                gateway = await ws.start_gateway(config)
                downtimes.append(time.monotonic() - killed)
                await traffic.hold("during", ctx.seconds(3))
            await traffic.hold("after", ctx.seconds(4))
        await wind_down(result, ws, gateway, sidecar)
        view = read_store(ws.store_uri)
    judge(result, traffic, view, "during")
    calm = [o for o in traffic.in_phase("before", "after") if not o.whole]
    result.check("clients fail only around the kills", not calm, f"{len(calm)} errors outside")
    result.notes.append(
        f"{KILLS} kills; down {', '.join(f'{d:.1f}' for d in downtimes)} s until healthy again"
    )
    return result


SCENARIO = Scenario(NAME, "kill -9 of the gateway under load, restarted on its spool", run)
