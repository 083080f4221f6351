"""kill -9 of one gateway worker of two (``protege gateway --workers 2``) under load, twice.

The parent restarts the killed worker on its own spool directory (the new worker recovers the
segment the killed one left open); the other worker keeps serving meanwhile. Every exchange
answered must reach the store once; clients see errors only for the requests the killed worker
held. The gateway is pinned to one core like every scenario's: the two workers share it.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time

import psutil
from ledger import read_store
from mix import Mix
from scenario import Context, Scenario, judge, wind_down, world
from traffic import Traffic
from verdict import Result

NAME = "kill-worker"
KILLS = 2
WORKERS = 2


def workers_of(pid: int) -> list[int]:
    """The gateway parent's live worker processes."""
    try:
        return sorted(c.pid for c in psutil.Process(pid).children() if c.is_running())
    except psutil.NoSuchProcess:
        return []


async def kill_one_worker(parent: int) -> float:
    """SIGKILL the youngest worker; seconds until the parent has a full set again."""
    before = workers_of(parent)
    victim = max(before)
    os.kill(victim, signal.SIGKILL)
    killed = time.monotonic()
    while time.monotonic() - killed < 30:
        now = workers_of(parent)
        if len(now) == WORKERS and victim not in now:
            return time.monotonic() - killed
        await asyncio.sleep(0.05)
    raise RuntimeError(f"worker {victim} was not replaced within 30 s")


async def run(ctx: Context) -> Result:
    result = Result(NAME, 0, 0, 0, None)
    async with world(ctx, NAME) as (ws, teacher):
        config = ws.write_config(teacher.base_url)
        gateway = await ws.start_gateway(config, workers=WORKERS)
        sidecar = await ws.start_sidecar(config)
        traffic = Traffic(ws.gateway_url, Mix(seed=1), rate=ctx.rate)
        back: list[float] = []
        async with traffic.running():
            await traffic.baseline(ctx.seconds(5))
            traffic.phase = "during"
            for _ in range(KILLS):
                back.append(await kill_one_worker(gateway.pid))
                await traffic.hold("during", ctx.seconds(3))
            await traffic.hold("after", ctx.seconds(4))
        await wind_down(result, ws, gateway, sidecar)
        view = read_store(ws.store_uri)
    judge(result, traffic, view, "during")
    during = traffic.in_phase("during")
    served = sum(o.whole for o in during)
    result.check("the other worker kept serving", served > len(during) // 2,
                 f"{served} of {len(during)} whole during the kills")  # fmt: skip
    calm = [o for o in traffic.in_phase("before", "after") if not o.whole]
    result.check("clients fail only around the kills", not calm, f"{len(calm)} errors outside")
    result.notes.append(
        f"{KILLS} kills of one worker of {WORKERS}; replaced after "
        f"{', '.join(f'{d:.1f}' for d in back)} s"
    )
    return result


SCENARIO = Scenario(NAME, "kill -9 of one gateway worker of two under load; restarted", run)
