"""Clients that go away: one request in five leaves early for 6 s, among normal traffic.

Half of the leavers stream and close the connection after the first event while the teacher
stalls; the other half make a plain call and give up before its (slow) answer. A stream whose
client left must cancel the teacher's call and be stored with ``complete=false`` and the error
"client disconnected"; a plain call whose client left is still answered by the teacher and
recorded (found in the store by a marker in its prompt). The other clients must not notice.
"""

from __future__ import annotations

import asyncio

from ledger import read_store
from mix import Mix
from procs import metric
from scenario import Context, Scenario, judge, latency_held, wind_down, world
from traffic import Traffic
from verdict import Result

NAME = "client-disconnect"
LEAVE_EVERY = 5


async def run(ctx: Context) -> Result:
    result = Result(NAME, 0, 0, 0, None)
    async with world(ctx, NAME) as (ws, teacher):
        _, gateway, sidecar = await ws.start_pair(teacher.base_url)
        traffic = Traffic(ws.gateway_url, Mix(seed=7), rate=ctx.rate)
        async with traffic.running():
            await traffic.baseline(ctx.seconds(4))
            traffic.leave_every = LEAVE_EVERY
            await traffic.hold("during", ctx.seconds(6))
            traffic.leave_every = 0
            await traffic.hold("after", ctx.seconds(3))
            await asyncio.sleep(1)  # the last plain leavers' answers arrive (0.6 s)
            page = await ws.scrape(ws.gateway_url)
        await wind_down(result, ws, gateway, sidecar)
        view = await asyncio.to_thread(read_store, ws.store_uri)
    judge(result, traffic, view, "during")
    left = [o for o in traffic.outcomes if o.ended == "left"]
    streams = [o for o in left if o.stream]
    plain = [o for o in left if not o.stream]
    stored = view.first()
    marked = [
        r
        for o in streams
        if (r := stored.get(o.request_id or "")) is not None
        and not r["complete"]
        and r["error"] == "client disconnected"
    ]
    result.check(
        "streams left: stored incomplete, 'client disconnected'",
        bool(streams) and len(marked) == len(streams),
        f"{len(marked)} of {len(streams)}",
    )
    result.check(
        "streams left: the teacher's call is cancelled",
        teacher.disconnects == len(streams),
        f"{teacher.disconnects} cancelled for {len(streams)}",
    )
    counted = metric(page, "protege_incomplete_streams_total", reason="client_disconnect")
    result.check(
        "streams left: counted", counted == len(streams), f"{counted:.0f} for {len(streams)}"
    )
    found = sum(len(view.with_text(o.nonce)) == 1 for o in plain if o.nonce)
    result.check(
        "plain calls left: still recorded once",
        bool(plain) and found == len(plain),
        f"{found} of {len(plain)}",
    )
    others = [o for o in traffic.outcomes if o.ended != "left"]
    failed = sum(not o.whole or o.status != 200 for o in others)
    result.check("the other clients never notice", failed == 0, f"{failed} of {len(others)}")
    crashes = ws.log_lines("Exception in ASGI application") + ws.log_lines("unhandled error")
    result.check("no unhandled error in the gateway", crashes == 0, f"{crashes} in its log")
    latency_held(result)
    return result


SCENARIO = Scenario(NAME, "one client in five goes away mid-stream or mid-call", run)
