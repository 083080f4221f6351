"""A service's own small HTTP server: ``GET /metrics`` (Prometheus) and ``GET /healthz``.

For the services that have no API of their own to carry them (the sidecar, the autopilot).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest


async def serve_metrics(
    registry: CollectorRegistry,
    host: str,
    port: int,
    refresh: Callable[[], Awaitable[None]] | None = None,
) -> web.AppRunner:
    """Serve ``registry`` on ``host:port`` until the returned runner is cleaned up;
    ``refresh`` runs before each scrape (gauges read on demand)."""

    async def metrics_page(_: web.Request) -> web.Response:
        if refresh is not None:
            await refresh()
        body = generate_latest(registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def healthz(_: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    app = web.Application()
    app.router.add_get("/metrics", metrics_page)
    app.router.add_get("/healthz", healthz)
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    await web.TCPSite(runner, host, port).start()
    return runner
