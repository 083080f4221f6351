"""A slow student in shadow mode: for 6 s it takes 5 s to answer (the shadow timeout is 1 s).

Shadow calls run beside the client's request and never delay it: client latency must hold,
no answer may take as long as the shadow timeout, shadow calls beyond the concurrency bound are
skipped, and the ones that time out are recorded as failed shadow records (status 504) with
their own ids, pointing at the client's request.
"""

from __future__ import annotations

import asyncio

from fakes import Student
from ledger import read_store
from mix import MODELS, Mix
from procs import metric
from scenario import Context, Scenario, judge, latency_held, wind_down, world
from traffic import Traffic
from verdict import Result

NAME = "slow-shadow"
TASK = MODELS[0]
TIMEOUT_S = 1.0


def routes(rollout: dict[str, object]) -> list[dict[str, object]]:
    """One route per task of the mix; the first one's task under ``rollout``."""
    first = {"alias": TASK, "task": TASK, "rollout": rollout}
    return [first, *({"alias": m, "task": m} for m in MODELS[1:])]


async def run(ctx: Context) -> Result:
    result = Result(NAME, 0, 0, 0, None)
    async with world(ctx, NAME) as (ws, teacher):
        with Student() as student:
            # Every request sampled, uncapped: the concurrency bound is what is under test.
            rollout = {"mode": "shadow", "adapter": f"{TASK}/v1", "shadow_percent": 100,
                       "shadow_max_per_s": None}  # fmt: skip
            config = ws.write_config(
                teacher.base_url,
                student={"base_url": student.base_url},
                routes=routes(rollout),
                rollouts={"shadow_concurrency": 8, "shadow_timeout_s": TIMEOUT_S},
            )
            gateway = await ws.start_gateway(config)
            sidecar = await ws.start_sidecar(config)
            traffic = Traffic(ws.gateway_url, Mix(seed=8, chat_only=True), rate=ctx.rate)
            async with traffic.running():
                await traffic.baseline(ctx.seconds(4))
                student.mode = "slow:5"
                await traffic.hold("during", ctx.seconds(6))
                traffic.phase = "after"
                student.mode = "ok"
                await traffic.hold("after", ctx.seconds(3))
                page = await ws.scrape(ws.gateway_url)
            await wind_down(result, ws, gateway, sidecar)
        view = await asyncio.to_thread(read_store, ws.store_uri)
    judge(result, traffic, view, "during")
    latency_held(result)
    during = result.during
    slowest = during.max_ms if during else float("nan")
    result.check(
        "no client waits for the student",
        slowest < TIMEOUT_S * 1000,
        f"slowest answer during {slowest:.0f} ms (shadow timeout {TIMEOUT_S * 1000:.0f})",
    )
    skipped = metric(page, "protege_shadow_requests_total", outcome="skipped")
    failed = metric(page, "protege_shadow_requests_total", outcome="failed")
    scored = metric(page, "protege_shadow_requests_total", outcome="scored")
    result.check("shadow calls beyond the bound are skipped", skipped > 0, f"{skipped:.0f} skipped")
    rows = [r for r in view.first().values() if r["shadow_of"]]
    timed_out = sum(r["status"] == 504 for r in rows)
    result.check(
        "timed-out shadow calls are recorded",
        timed_out > 0 and timed_out == failed,
        f"{timed_out} shadow records with 504, {failed:.0f} counted failed",
    )
    primaries = {o.request_id for o in traffic.outcomes}
    orphans = sum(r["shadow_of"] not in primaries for r in rows)
    result.check("shadow records point at client requests", orphans == 0, f"{orphans} do not")
    result.notes.append(f"{len(rows)} shadow records; {scored:.0f} scored, {failed:.0f} failed")
    return result


SCENARIO = Scenario(NAME, "the shadowed student takes 5 s to answer for 6 s", run)
