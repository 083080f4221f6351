"""``protege sidecar``: ship the spool continuously (or once), serve /metrics and /healthz.

Continuous mode: ship what is sealed, wait ``poll_interval_s`` (or less when told to stop),
again. On SIGTERM it waits for the gateway beside it to seal its last segment
(``shutdown_wait_s``), ships everything sealed with bounded retries, and exits; whatever could
not be shipped stays in the spool for the next start. Compaction runs on its own timer.

Two spools are shipped, each pass in turn: the exchanges (the spool directory) and the
feedback (its ``feedback/`` sub-directory, ``core.feedback``), each to its own table; and the
same two of every worker of ``protege gateway --workers N``, in ``worker-<i>/`` sub-directories
found again on every pass (``sidecar.spools``).
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time
from datetime import UTC, datetime, timedelta

import structlog
from aiohttp import web

from core.errors import StoreError
from core.metrics_page import serve_metrics
from core.store import open_store
from sidecar.config import SidecarSettings
from sidecar.metrics import SidecarMetrics
from sidecar.ship import GaveUp
from sidecar.spools import Spools

log = structlog.get_logger("sidecar")

_FINAL_ATTEMPTS = 3


async def run(
    settings: SidecarSettings,
    *,
    once: bool,
    metrics: SidecarMetrics | None = None,
    stop: asyncio.Event | None = None,
) -> int:
    """Run the sidecar; returns the process exit code.

    It stops on SIGTERM/SIGINT, or — when ``stop`` is given (embedding, tests) — once ``stop``
    is set.
    """
    metrics = metrics or SidecarMetrics()
    cfg = settings.sidecar
    async with open_store(settings.store) as store:
        spools = Spools(settings, store, metrics, stop)
        await asyncio.to_thread(spools.clean_workdir)
        if once:
            return await _drain(spools, cfg.once_max_attempts)
        runner = await _serve_metrics(settings, metrics, spools)
        loop = asyncio.get_running_loop()
        signals = (signal.SIGTERM, signal.SIGINT) if stop is None else ()
        for sig in signals:
            loop.add_signal_handler(sig, spools.stopping.set)
        log.info("sidecar started", spool=str(settings.spool.dir), store=store.uri)
        try:
            async with asyncio.TaskGroup() as tasks:
                tasks.create_task(_ship_forever(spools, cfg.poll_interval_s))
                if cfg.compaction.enabled:
                    tasks.create_task(_compact_forever(spools, settings, metrics))
            await _wait_for_writers(spools, cfg.shutdown_wait_s)
            spools.stopping.clear()  # the final pass retries within its own bound
            return await _drain(spools, _FINAL_ATTEMPTS)
        finally:
            for sig in signals:
                loop.remove_signal_handler(sig)
            await runner.cleanup()
            log.info("sidecar stopped")


async def _drain(spools: Spools, attempts: int) -> int:
    """Ship everything sealed with bounded retries: 0 when the spools are drained, else 1."""
    shipped = 0
    try:
        for shipper in await spools.shippers():
            shipped += await shipper.ship_all(max_attempts=attempts)
    except GaveUp as exc:
        log.error("store unavailable, segments kept in the spool", error=str(exc))
        return 1
    log.info("spool drained", segments=shipped)
    return 0


async def _ship_forever(spools: Spools, interval: float) -> None:
    stopping = spools.stopping
    while not stopping.is_set():
        for shipper in await spools.shippers():
            try:
                await shipper.ship_all()
            except GaveUp:
                pass  # raised only once stopping: the final pass takes over
            except Exception:  # the loop's one boundary: log, wait, try again, never crash-loop
                log.exception("shipping pass failed; will try again", spool=str(shipper.spool))
        await asyncio.to_thread(spools.observe_backlog)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stopping.wait(), interval)


async def _compact_forever(
    spools: Spools, settings: SidecarSettings, metrics: SidecarMetrics
) -> None:
    from sidecar.compact import compact

    cfg = settings.sidecar.compaction
    while not spools.stopping.is_set():
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(spools.stopping.wait(), cfg.interval_s)
        if spools.stopping.is_set():
            return
        try:
            report = await compact(
                spools.store, settings.workdir,
                now=datetime.now(UTC), grace=timedelta(seconds=cfg.grace_s),
            )  # fmt: skip
            metrics.compacted_parts.inc(report.parts_merged)
        except StoreError as exc:
            log.warning("compaction failed; will try again", error=str(exc))


async def _wait_for_writers(spools: Spools, wait_s: float) -> None:
    """Give a gateway that is shutting down time to seal its open segments."""
    deadline = time.monotonic() + wait_s
    alive = spools.writers_alive
    # Polling: the writer is another process, whose file lock no event of ours can watch.
    while time.monotonic() < deadline and await asyncio.to_thread(alive):  # noqa: ASYNC110
        await asyncio.sleep(0.1)


async def _serve_metrics(
    settings: SidecarSettings, metrics: SidecarMetrics, spools: Spools
) -> web.AppRunner:
    async def refresh() -> None:
        await asyncio.to_thread(spools.observe_backlog)

    cfg = settings.sidecar
    return await serve_metrics(metrics.registry, cfg.metrics_host, cfg.metrics_port, refresh)
