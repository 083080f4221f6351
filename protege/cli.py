"""The ``protege`` command: one entry point for every service and tool."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from core.errors import ConfigError


def _run_gateway(args: argparse.Namespace) -> int:
    import uvicorn

    from core.logs import configure
    from gateway.app import create_app
    from gateway.config import load_settings
    from gateway.heap import settle
    from gateway.workers import SERVING, available_cores, run_workers, serve_worker

    server: dict[str, object] = {}
    if args.host is not None:
        server["host"] = args.host
    if args.port is not None:
        server["port"] = args.port
    if args.workers is not None:
        server["workers"] = args.workers
    overrides: dict[str, Any] = {"server": server} if server else {}
    settings = load_settings(args.config, None, **overrides)
    configure(settings.logging.level)
    workers = settings.server.workers or available_cores()
    if args.worker is not None:  # one of the processes run_workers starts
        return serve_worker(settings, args.worker, workers, args.worker_restart)
    if workers > 1:
        return run_workers(settings, workers, args.config)
    app = create_app(settings)
    settle()
    uvicorn.run(app, host=settings.server.host, port=settings.server.port, **SERVING)
    return 0


def _run_sidecar(args: argparse.Namespace) -> int:
    import uvloop

    from core.logs import configure
    from sidecar.config import load_sidecar_settings
    from sidecar.service import run

    settings = load_sidecar_settings(args.config)
    configure(settings.logging.level)
    return uvloop.run(run(settings, once=args.once))


def _run_up(args: argparse.Namespace) -> int:
    from protege.up import admin_token, supervise

    common = ["--config", args.config] if args.config else []
    gateway = [*common]
    if args.host:
        gateway += ["--host", args.host]
    if args.port:
        gateway += ["--port", str(args.port)]
    if args.workers:
        gateway += ["--workers", str(args.workers)]
    commands = {"gateway": ["gateway", *gateway], "sidecar": ["sidecar", *common]}
    if args.autopilot:
        local = _local_gateway(args, "autopilot", "--gateway-url")
        commands["autopilot"] = ["autopilot", *common, *local]
        admin_token()  # the autopilot speaks to the gateway's admin API
    if not args.no_console:
        commands["console"] = ["console", *common, *_local_gateway(args, "console", "--gateway")]
    return supervise(commands, optional={"console"})


def _local_gateway(args: argparse.Namespace, section: str, flag: str) -> list[str]:
    """``flag`` with the URL of the gateway ``protege up`` starts, unless the config's
    ``section`` names a ``gateway_url``."""
    from core.settings import gather

    data = gather(args.config, None, {})
    if (data.get(section) or {}).get("gateway_url"):
        return []
    port = args.port or (data.get("server") or {}).get("port") or 8080
    return [flag, f"http://127.0.0.1:{port}"]


def _run_reconcile(args: argparse.Namespace) -> int:
    from core.read import count_exchanges
    from sidecar.config import load_sidecar_settings
    from sidecar.reconcile import Reconciliation, fetch_gateway_counts, spooled_records

    settings = load_sidecar_settings(args.config, **({"store": args.store} if args.store else {}))
    answered, dropped = fetch_gateway_counts(args.gateway, args.task)
    spooled = 0 if args.task else spooled_records(Path(settings.spool.dir))
    stored = count_exchanges(settings.store, task=args.task)
    result = Reconciliation(answered, dropped, spooled, stored)
    print("\n".join(result.lines()))
    return 1 if result.missing else 0


def _positive(value: str) -> int:
    number = int(value)
    if number < 1:
        raise argparse.ArgumentTypeError(f"must be 1 or more, got {value}")
    return number


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="protege",
        description="Distil the LLM traffic your apps already send into cheap student models.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    for name, help_, run in (
        ("gateway", "run the OpenAI-compatible gateway", _run_gateway),
        ("up", "run the main job: gateway + sidecar, embedded defaults", _run_up),
    ):
        p = sub.add_parser(name, help=help_)
        p.add_argument("--config", help="YAML settings file (environment overrides it)")
        p.add_argument("--host", help="address the gateway listens on (default 127.0.0.1)")
        p.add_argument("--port", type=int, help="port the gateway listens on (default 8080)")
        p.add_argument(
            "--workers", type=_positive,
            help="gateway processes sharing the port (default: server.workers, else one per "
            "core available; 1: a single process)",
        )  # fmt: skip
        p.set_defaults(run=run)
    # Set by the parent of --workers N on each worker it starts; not for people.
    sub.choices["gateway"].add_argument("--worker", type=int, help=argparse.SUPPRESS)
    sub.choices["gateway"].add_argument(
        "--worker-restart", action="store_true", help=argparse.SUPPRESS
    )
    sub.choices["up"].add_argument(
        "--autopilot", action="store_true",
        help="also run the autopilot (autopilot.tasks of the config), training on this machine",
    )  # fmt: skip
    sub.choices["up"].add_argument(
        "--no-console", action="store_true",
        help="leave out the web console (otherwise on console.host:port, 127.0.0.1:8090)",
    )  # fmt: skip
    side = sub.add_parser("sidecar", help="ship sealed spool segments to the store as Parquet")
    side.add_argument("--config", help="YAML settings file (environment overrides it)")
    side.add_argument("--once", action="store_true", help="ship what is sealed, then exit")
    side.set_defaults(run=_run_sidecar)
    logs = sub.add_parser("logs", help="inspect the captured exchanges").add_subparsers(
        dest="logs_command", required=True
    )
    rec = logs.add_parser("reconcile", help="compare answered requests with stored records")
    rec.add_argument("--gateway", default="http://127.0.0.1:8080", help="gateway base URL")
    rec.add_argument("--store", help="store URI (default: from config / PROTEGE_STORE)")
    rec.add_argument("--task", help="only this task")
    rec.add_argument("--config", help="YAML settings file")
    rec.set_defaults(run=_run_reconcile)
    from protege.console.cli import register as register_console
    from protege.demo_cli import register as register_demo
    from protege.judge_cli import register as register_judge
    from trainer.autopilot.cli import register as register_autopilot
    from trainer.cli import register
    from trainer.serve.cli import register as register_student

    register(sub)
    register_student(sub)
    register_demo(sub)
    register_judge(sub)
    register_autopilot(sub)
    register_console(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)  # as given: a relaunch repeats it
    try:
        code: int = args.run(args)
    except ConfigError as exc:
        print(f"protege: {exc}", file=sys.stderr)
        return 2
    return code


if __name__ == "__main__":
    sys.exit(main())
