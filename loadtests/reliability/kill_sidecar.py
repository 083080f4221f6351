"""kill -9 of the sidecar under load, three times, each time restarted at once.

The store is S3 (moto), so uploads take long enough for a kill to land in the middle of one. A
segment leaves the spool only once all its parts are stored, so a killed sidecar ships it again
on restart, and since a part's key derives from its segment the second upload overwrites the
first: the store must hold every record exactly once. The gateway never waits for the sidecar,
so its latency should not move.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from mix import Mix
from s3store import s3_store
from scenario import Context, Scenario, judge, latency_held, wind_down, world
from traffic import Traffic
from verdict import Result

NAME = "kill-sidecar"
KILLS = 3


async def run(ctx: Context) -> Result:
    result = Result(NAME, 0, 0, 0, None)
    async with world(ctx, NAME) as (ws, teacher):
        store = await s3_store(ws)
        try:
            config, gateway, sidecar = await ws.start_pair(teacher.base_url)
            traffic = Traffic(ws.gateway_url, Mix(seed=2), rate=ctx.rate)
            mid_ship = 0
            async with traffic.running():
                await traffic.baseline(ctx.seconds(5))
                traffic.phase = "during"
                for _ in range(KILLS):
                    await asyncio.sleep(ctx.seconds(1))
                    mid_ship += await _part_in_flight(ws.spool / ".work", 3.0)
                    await ws.kill(sidecar)
                    sidecar = await ws.start_sidecar(config)
                await traffic.hold("during", ctx.seconds(2))
                await traffic.hold("after", ctx.seconds(3))
            await wind_down(result, ws, gateway, sidecar)
            view = await asyncio.to_thread(store.read, ws.store_uri)
        finally:
            await store.gate.close()
    judge(result, traffic, view, "during")
    latency_held(result)
    errors = sum(not o.whole for o in traffic.outcomes)
    result.check("clients never notice", errors == 0, f"{errors} client errors")
    result.notes.append(f"{KILLS} kills, {mid_ship} of them while a part was on its way")
    return result


async def _part_in_flight(work: Path, timeout_s: float) -> bool:
    """Wait (polling every 2 ms) until the sidecar has a Parquet part on its way to the store:
    a kill then lands between making a segment's parts and deleting the segment."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if await asyncio.to_thread(_has_part, work):
            return True
        await asyncio.sleep(0.002)
    return False


def _has_part(work: Path) -> bool:
    try:
        return any(p.suffix == ".parquet" for p in work.iterdir())
    except FileNotFoundError:
        return False


SCENARIO = Scenario(NAME, "kill -9 of the sidecar while it ships to S3, restarted", run)
