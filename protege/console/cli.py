"""``protege console``: the web console over the store and the gateway's admin API."""

from __future__ import annotations

import argparse
from typing import Any


def register(sub: Any) -> None:
    p = sub.add_parser("console", help="the web console: traffic, disagreements, runs, rollouts")
    p.add_argument("--config", help="YAML settings file (console, store, rollouts.admin_token)")
    p.add_argument("--store", help="store URI (default: from config / PROTEGE_STORE)")
    p.add_argument("--gateway", help="the gateway's base URL (default: console.gateway_url)")
    p.add_argument("--host", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=int, help="port to listen on (default 8090)")
    p.set_defaults(run=_console)


def overrides(args: argparse.Namespace) -> dict[str, Any]:
    """The settings the command line gives."""
    section: dict[str, Any] = {}
    for arg, key in (("host", "host"), ("port", "port"), ("gateway", "gateway_url")):
        if getattr(args, arg, None) is not None:
            section[key] = getattr(args, arg)
    out: dict[str, Any] = {"console": section} if section else {}
    if args.store:
        out["store"] = args.store
    return out


def _console(args: argparse.Namespace) -> int:
    import uvicorn

    from core.logs import configure
    from protege.console.app import create_app
    from protege.console.settings import load_console_settings

    settings = load_console_settings(args.config, **overrides(args))
    configure("info")
    uvicorn.run(
        create_app(settings),
        host=settings.console.host,
        port=settings.console.port,
        access_log=False,
        server_header=False,
        proxy_headers=False,
        log_level="warning",
        timeout_graceful_shutdown=5,
    )
    return 0
