"""A student degrading in canary: the rollout steps back to shadow on its own.

The task starts in shadow; the admin API moves it to a 50 % canary (the adapter is published
in the store first). Then the student starts answering 500: each failed student call is
answered by the teacher instead (``route=fallback``), so clients still get 200, and once the
guardrail's error rate breaks (20 calls, 5 %) the gateway steps the task back to shadow,
says so in its metrics and writes it to ``rollouts/routes.json`` in the store.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import httpx
from fakes import Student
from ledger import read_store
from mix import MODELS, Mix
from procs import metric
from scenario import Context, Scenario, judge, wind_down, world
from services import Workspace
from slow_shadow import routes
from traffic import Traffic
from verdict import Result

NAME = "student-stepback"
TASK = MODELS[0]
ADAPTER = f"{TASK}/v1"
TOKEN = "admin-secret"


def publish(store: Path) -> None:
    """What the gateway needs of a published adapter: its manifest."""
    manifest = store / "adapters" / ADAPTER / "protege.json"
    manifest.parent.mkdir(parents=True)
    manifest.write_text(json.dumps({"task": TASK, "version": "v1"}))


async def admin(ws: Workspace, method: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
    headers = {"authorization": f"Bearer {TOKEN}"}
    async with httpx.AsyncClient(timeout=5, trust_env=False) as client:
        resp = await client.request(
            method, f"{ws.gateway_url}/admin/routes/{TASK}", json=body, headers=headers
        )
    resp.raise_for_status()
    out: dict[str, Any] = resp.json()
    return out


async def run(ctx: Context) -> Result:
    result = Result(NAME, 0, 0, 0, None)
    async with world(ctx, NAME) as (ws, teacher):
        with Student() as student:
            publish(ws.dir / "store")
            guardrails = {"min_samples": 20, "max_error_rate": 0.05}
            rollout = {
                "mode": "shadow",
                "adapter": ADAPTER,
                "window_s": 10,
                "guardrails": guardrails,
            }
            config = ws.write_config(
                teacher.base_url,
                student={"base_url": student.base_url},
                routes=routes(rollout),
                rollouts={"admin_token": TOKEN, "sync_interval_s": 1},
            )
            gateway = await ws.start_gateway(config)
            sidecar = await ws.start_sidecar(config)
            traffic = Traffic(ws.gateway_url, Mix(seed=9, chat_only=True), rate=ctx.rate)
            async with traffic.running():
                await traffic.hold("warm-up", 1)
                await traffic.hold("shadow", ctx.seconds(2))
                canary = await admin(ws, "PUT", {"mode": "canary", "percent": 50})
                await traffic.hold("before", ctx.seconds(3))
                student.mode = "status:500"
                traffic.phase = "during"
                took, state = await _step_back(ws, traffic)
                await traffic.hold("after", ctx.seconds(3))
                page = await ws.scrape(ws.gateway_url)
            await wind_down(result, ws, gateway, sidecar)
        view = await asyncio.to_thread(read_store, ws.store_uri)
        shared = json.loads((ws.dir / "store" / "rollouts" / "routes.json").read_text())
    judge(result, traffic, view, "during")
    _verdict(result, canary, took, state)
    count = metric(page, "protege_rollout_stepbacks_total", task=TASK, reason="error_rate")
    result.check("counted in protege_rollout_stepbacks_total", count >= 1, f"{count:.0f}")
    entry = shared.get("tasks", {}).get(TASK, {})
    result.check(
        "written to rollouts/routes.json",
        entry.get("policy", {}).get("mode") == "shadow" and entry.get("source") == "guardrail",
        f"{entry.get('policy', {}).get('mode')} by {entry.get('source')}",
    )
    failed = sum(not o.whole or o.status != 200 for o in traffic.outcomes)
    result.check("clients never notice (the teacher falls back)", failed == 0, f"{failed} failed")
    fallbacks = sum(r["route"] == "fallback" for r in view.first().values())
    result.notes.append(f"{fallbacks} answers from the teacher in the student's place")
    return result


async def _step_back(ws: Workspace, traffic: Traffic) -> tuple[float | None, dict[str, Any]]:
    """(seconds until the admin API shows the task in shadow again, its last state)."""
    state: dict[str, Any] = {}

    def stepped_back() -> bool:
        return state.get("mode") == "shadow"

    async def poll() -> None:
        while not stepped_back():
            state.update(await admin(ws, "GET"))
            await asyncio.sleep(0.05)

    poller = asyncio.create_task(poll())
    try:
        return await traffic.wait_until(stepped_back, 15), state
    finally:
        poller.cancel()


def _verdict(
    result: Result, canary: dict[str, Any], took: float | None, state: dict[str, Any]
) -> None:
    result.check(
        "the admin API set the canary", canary.get("mode") == "canary", f"{canary.get('mode')}"
    )
    shown = "never" if took is None else f"{took:.2f} s"
    result.check("stepped back to shadow within 5 s", took is not None and took <= 5, shown)
    result.check(
        "by the guardrail",
        state.get("source") == "guardrail" and state.get("reason") == "error_rate",
        f"source {state.get('source')}, reason {state.get('reason')}",
    )


SCENARIO = Scenario(NAME, "the canary's student fails; the rollout steps back by itself", run)
