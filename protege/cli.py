"""The ``protege`` command: one entry point for every service and tool."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from gateway.errors import ConfigError


def _gateway_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", help="YAML settings file (environment overrides it)")
    p.add_argument("--host", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=int, help="port to listen on (default 8080)")


def _run_gateway(args: argparse.Namespace) -> int:
    import uvicorn

    from gateway.app import create_app
    from gateway.config import load_settings
    from gateway.logs import configure

    server: dict[str, object] = {}
    if args.host is not None:
        server["host"] = args.host
    if args.port is not None:
        server["port"] = args.port
    settings = load_settings(args.config, **({"server": server} if server else {}))
    configure(settings.logging.level)
    uvicorn.run(
        create_app(settings),
        host=settings.server.host,
        port=settings.server.port,
        loop="uvloop",
        http="httptools",
        access_log=False,
        server_header=False,
        proxy_headers=False,
        log_level="warning",
        timeout_graceful_shutdown=30,
    )
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="protege",
        description="Distil the LLM traffic your apps already send into cheap student models.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    gw = sub.add_parser("gateway", help="run the OpenAI-compatible gateway")
    _gateway_args(gw)
    gw.set_defaults(run=_run_gateway)
    up = sub.add_parser("up", help="run the main job with embedded defaults")
    _gateway_args(up)
    up.set_defaults(run=_run_gateway)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        code: int = args.run(args)
    except ConfigError as exc:
        print(f"protege: {exc}", file=sys.stderr)
        return 2
    return code


if __name__ == "__main__":
    sys.exit(main())
