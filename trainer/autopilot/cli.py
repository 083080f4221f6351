"""``protege autopilot`` (the service, or ``--once``) and ``protege events --task T``."""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
from typing import Any


def register(sub: Any) -> None:
    auto = sub.add_parser(
        "autopilot", help="retrain students on new data or drift and prove them on live traffic"
    )
    auto.add_argument("--config", help="YAML settings file (store, autopilot, rollouts)")
    auto.add_argument("--store", help="store URI (default: from config / PROTEGE_STORE)")
    auto.add_argument("--gateway-url", help="gateway base URL (default: autopilot.gateway_url)")
    auto.add_argument("--once", action="store_true",
                      help="one pass over every task (a run it starts is waited for), then exit")
    auto.set_defaults(run=_autopilot)  # fmt: skip

    events = sub.add_parser("events", help="a task's timeline: retrains, rollouts, step-backs")
    events.add_argument("--task", required=True)
    events.add_argument("--config", help="YAML settings file (store)")
    events.add_argument("--store", help="store URI (default: from config / PROTEGE_STORE)")
    events.add_argument("--limit", type=int, default=None, help="only the last N events")
    events.add_argument("--json", action="store_true", help="one JSON object per line")
    events.set_defaults(run=_events)


def _settings(args: argparse.Namespace) -> Any:
    from trainer.autopilot.config import load_autopilot_settings

    overrides: dict[str, Any] = {"store": args.store} if args.store else {}
    if getattr(args, "gateway_url", None):
        overrides["autopilot"] = {"gateway_url": args.gateway_url}
    return load_autopilot_settings(args.config, **overrides)


def _autopilot(args: argparse.Namespace) -> int:
    import uvloop

    from core.logs import configure

    configure("info")
    settings = _settings(args)
    return uvloop.run(serve(settings, args.config, once=args.once))


async def serve(settings: Any, config_path: str | None, once: bool = False) -> int:
    """The autopilot until SIGTERM/SIGINT (or one pass with ``once``)."""
    from core.errors import ConfigError
    from core.metrics_page import serve_metrics
    from core.store import open_store
    from trainer.autopilot.gateway import GatewayAdmin
    from trainer.autopilot.metrics import AutopilotMetrics
    from trainer.autopilot.service import Autopilot

    cfg = settings.autopilot
    if not cfg.tasks:
        raise ConfigError("config: autopilot.tasks names no task: nothing to do")
    token = settings.rollouts.admin_token
    gateway = GatewayAdmin(cfg.gateway_url, token.get_secret_value() if token else None)
    metrics = AutopilotMetrics()
    page = None
    if cfg.metrics_port is not None and not once:
        page = await serve_metrics(metrics.registry, cfg.metrics_host, cfg.metrics_port)
    runner = runner_of(settings, config_path)
    holder = os.environ.get("PROTEGE_POD_NAME") or None
    try:
        async with open_store(settings.store) as store:
            pilot = Autopilot(settings, store, runner, gateway, metrics, holder)
            if once:
                outcomes = await pilot.once()
                print("\n".join(f"{task}: {why}" for task, why in outcomes.items()))
                return 1 if "error" in outcomes.values() else 0
            stopping = asyncio.Event()
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(sig, stopping.set)
            await pilot.run_forever(stopping)
            return 0
    finally:
        await runner.aclose()
        await gateway.aclose()
        if page is not None:
            await page.cleanup()


def runner_of(settings: Any, config_path: str | None) -> Any:
    """The runner the config names."""
    from pathlib import Path

    cfg = settings.autopilot
    if cfg.runner == "kubernetes":
        from trainer.autopilot.kube import KubernetesRunner

        return KubernetesRunner.from_config(cfg.kubernetes)
    from trainer.autopilot.runners import LocalRunner

    config = str(Path(config_path).resolve()) if config_path else None
    return LocalRunner(cfg.run_dir, config, settings.store, cfg.keep_runs)


def _events(args: argparse.Namespace) -> int:
    return asyncio.run(_print_events(_settings(args).store, args.task, args.limit, args.json))


async def _print_events(store_uri: str, task: str, limit: int | None, as_json: bool) -> int:
    from core.events import render, timeline
    from core.store import open_store
    from trainer.autopilot.status import read_status

    async with open_store(store_uri) as store:
        events = await timeline(store, task, limit)
        status = await read_status(store, task)
    if as_json:
        for event in events:
            print(event.encode().decode())
        return 0
    if not events and status.why is None:
        print(f"no events for task {task!r} in {store_uri}")
        return 1
    print("\n".join(render(events)))
    if status.why is not None:
        now = "running " + status.current.run_id if status.current else status.why
        print(f"\nnow: {now} — {status.detail}")
    return 0
