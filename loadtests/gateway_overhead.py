"""Gateway overhead benchmark: one load sent straight to a fake teacher and through the gateway.

    python loadtests/gateway_overhead.py [--duration 10] [--out results.json] [--strict]

Starts ``fake_upstream.py`` and the gateway (capture on, spooling to a temporary directory),
then, for each scenario, runs wrk against the fake upstream ("direct") and against the gateway
("gateway") and prints both side by side with the difference. The gateway gets one core to
itself; wrk, the fake upstream and this script share the other. Every child is stopped on exit.
Exits 0 whatever the figures (it is a report); ``--strict`` exits 1 if a target fails, and a
missing ``wrk`` exits 2.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import signal
import sys
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from subprocess import Popen

import procs
import ttfb
import wrk_runner
from capture_check import spool_usage
from payloads import chat_request
from report import Comparison, Measurement, Scenario, TtfbComparison, Verdict, compare, render
from report import verdicts as judge

_HERE = Path(__file__).resolve().parent
_PATH = "/v1/chat/completions"
_DEFAULT_GATEWAY = "{python} -m protege.cli gateway --host 127.0.0.1 --port {port}"
SCENARIOS = (
    Scenario("chat", False, 1),
    Scenario("chat", False, 16),
    Scenario("chat", False, 64),
    Scenario("stream", True, 1),
    Scenario("stream", True, 16),
)


@dataclass(frozen=True)
class Setup:
    """Where everything runs during one benchmark."""

    upstream_port: int
    gateway_port: int
    gateway_pid: int
    client_core: int
    bodies: dict[bool, Path]  # stream? -> request body file


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--duration", type=int, default=10, help="seconds per measured run")
    parser.add_argument("--warmup", type=int, default=2, help="seconds of warm-up before each")
    parser.add_argument("--ttfb-requests", type=int, default=500, help="TTFB samples per mode")
    parser.add_argument("--out", type=Path, help="write the results as JSON here")
    parser.add_argument("--strict", action="store_true", help="exit 1 if a target fails")
    parser.add_argument(
        "--gateway-cmd",
        default=_DEFAULT_GATEWAY,
        help="command starting the relay under test; placeholders: {port} (where it must "
        "listen), {upstream} (teacher base URL, .../v1), {spool} (capture dir), {python}",
    )
    parser.add_argument("--health-path", default="/healthz", help="GET answering 200 when ready")
    args = parser.parse_args(argv)
    if args.duration < 1 or args.warmup < 0 or args.ttfb_requests < 1:
        parser.error("--duration and --ttfb-requests must be >= 1, --warmup >= 0")
    return args


def gateway_argv(template: str, values: dict[str, str]) -> list[str]:
    """``template`` shell-split, with each ``{name}`` placeholder replaced."""
    argv = shlex.split(template)
    for name, value in values.items():
        argv = [arg.replace("{" + name + "}", value) for arg in argv]
    return argv


def measure(setup: Setup, scenario: Scenario, mode: str, args: argparse.Namespace) -> Measurement:
    port = setup.gateway_port if mode == "gateway" else setup.upstream_port
    url = f"http://{procs.HOST}:{port}{_PATH}"
    body, conns = setup.bodies[scenario.stream], scenario.connections
    warm = wrk_runner.run(url, body, conns, args.warmup, setup.client_core) if args.warmup else None
    cpu_before = procs.cpu_seconds(setup.gateway_pid)
    result = wrk_runner.run(url, body, conns, args.duration, setup.client_core)
    cpu = procs.cpu_seconds(setup.gateway_pid) - cpu_before
    print(
        f"  {scenario.name:<6} {conns:>3} conns {mode:<7} {result.rps:>9,.0f}/s  "
        f"p50 {result.p50_us / 1000:.3f} ms  p99 {result.p99_us / 1000:.3f} ms  "
        f"errors {result.errors}",
        file=sys.stderr,
        flush=True,
    )
    return Measurement(scenario, mode, result, cpu, warm.requests if warm else 0)


def check_answers(setup: Setup) -> None:
    """Fail fast, before measuring, if either server answers a request wrongly."""
    for port, who in ((setup.upstream_port, "fake upstream"), (setup.gateway_port, "gateway")):
        for stream, expect in ((False, b'"chat.completion"'), (True, b"data: [DONE]")):
            answer = ttfb.probe(port, _PATH, setup.bodies[stream].read_bytes())
            if answer.status != 200 or expect not in answer.body:
                kind = "streaming" if stream else "non-streaming"
                raise SystemExit(
                    f"the {who} answered a {kind} chat request with {answer.status}: "
                    f"{answer.body[:500]!r}"
                )


@dataclass(frozen=True)
class Outcome:
    measurements: list[Measurement]
    comparisons: list[Comparison]
    ttfb: TtfbComparison
    verdicts: list[Verdict]
    spool: dict[str, int]


def start_servers(
    args: argparse.Namespace, tmp: Path, cores: tuple[int, int], children: list[Popen[bytes]]
) -> Setup:
    """Start the fake upstream and the gateway (appended to ``children``), wait for both."""
    gateway_core, client_core = cores
    up_port, up_log = procs.free_port(), tmp / "upstream.log"
    upstream_argv = [sys.executable, str(_HERE / "fake_upstream.py"), "--port", str(up_port)]
    children.append(procs.start(upstream_argv, client_core, up_log))
    procs.wait_healthy(children[-1], up_port, "/healthz", up_log)
    spool, upstream_url = tmp / "spool", f"http://{procs.HOST}:{up_port}/v1"
    spool.mkdir()
    env = procs.local_env(
        {
            "PROTEGE_TEACHER_BASE_URL": upstream_url,
            "PROTEGE_SPOOL_DIR": str(spool),
            "PROTEGE_TEACHER_API_KEY": "bench",
        }
    )
    gw_port, gw_log = procs.free_port(), tmp / "gateway.log"
    values = {
        "port": str(gw_port),
        "upstream": upstream_url,
        "spool": str(spool),
        "python": sys.executable,
    }
    argv = gateway_argv(args.gateway_cmd, values)
    children.append(procs.start(argv, gateway_core, gw_log, env, cwd=_HERE.parent))
    procs.wait_healthy(children[-1], gw_port, args.health_path, gw_log, timeout_s=60)
    procs.pin_tree(children[-1].pid, gateway_core)
    bodies = {
        stream: tmp / f"body-{'stream' if stream else 'chat'}.json" for stream in (False, True)
    }
    for stream, path in bodies.items():
        path.write_bytes(chat_request(stream))
    return Setup(up_port, gw_port, children[-1].pid, client_core, bodies)


def measure_ttfb(setup: Setup, args: argparse.Namespace) -> TtfbComparison:
    body = setup.bodies[True].read_bytes()
    count, warmup = args.ttfb_requests, max(10, args.ttfb_requests // 10)
    direct = ttfb.measure(setup.upstream_port, _PATH, body, count, warmup)
    gateway = ttfb.measure(setup.gateway_port, _PATH, body, count, warmup)
    return TtfbComparison(direct, gateway)


def run(args: argparse.Namespace, tmp: Path, cores: tuple[int, int]) -> Outcome:
    """The whole benchmark; every child process is stopped before it returns or raises."""
    children: list[Popen[bytes]] = []
    try:
        setup = start_servers(args, tmp, cores, children)
        check_answers(setup)
        print("measuring (direct = straight to the fake upstream):", file=sys.stderr)
        runs = [measure(setup, s, mode, args) for s in SCENARIOS for mode in ("direct", "gateway")]
        ttfb_cmp = measure_ttfb(setup, args)
        procs.stop(children[-1])  # a clean stop lets the gateway flush what it captured
        spool = spool_usage(tmp / "spool")
        spool["requests_counted"] = _gateway_requests(runs, ttfb_cmp)
        if any(m.wrk.errors for m in runs if m.mode == "gateway") or ttfb_cmp.gateway.errors:
            tail = (tmp / "gateway.log").read_text(errors="replace")[-3000:]
            print(f"the gateway answered with errors; its log ends with:\n{tail}", file=sys.stderr)
    finally:
        for child in reversed(children):
            procs.stop(child)
    comparisons = [compare(runs[i], runs[i + 1]) for i in range(0, len(runs), 2)]
    return Outcome(runs, comparisons, ttfb_cmp, judge(comparisons, ttfb_cmp), spool)


def _gateway_requests(runs: list[Measurement], ttfb_cmp: TtfbComparison) -> int:
    """Requests the gateway completed that this script counted: warm-ups and probes included."""
    wrk_total = sum(m.wrk.requests + m.warmup_requests for m in runs if m.mode == "gateway")
    return wrk_total + ttfb_cmp.gateway.sent + 2  # check_answers sent it two


def header(args: argparse.Namespace, cores: tuple[int, int]) -> list[str]:
    return [
        f"Gateway overhead: {args.duration} s per run after {args.warmup} s warm-up, "
        f"{os.cpu_count()} CPUs ({procs.cpu_model()})",
        f"gateway on core {cores[0]}; wrk, fake upstream and TTFB client on core {cores[1]}",
        f"gateway: {args.gateway_cmd}",
    ]


def footer(spool: dict[str, int]) -> list[str]:
    return [
        f"Capture: after the gateway stopped, its spool held {spool['files']} file(s), "
        f"{spool['bytes']:,} bytes, {spool['records']:,} records; it completed "
        f"{spool['requests_counted']:,} counted requests (wrk leaves out those in flight when "
        "a run ends)."
    ]


def to_json(args: argparse.Namespace, cores: tuple[int, int], outcome: Outcome) -> str:
    data = {
        "config": {
            "duration_s": args.duration,
            "warmup_s": args.warmup,
            "gateway_cmd": args.gateway_cmd,
            "gateway_core": cores[0],
            "client_core": cores[1],
            "cpus": os.cpu_count(),
            "cpu_model": procs.cpu_model(),
        },
        "measurements": [asdict(m) | {"rps": m.wrk.rps} for m in outcome.measurements],
        "comparisons": [asdict(c) for c in outcome.comparisons],
        "ttfb": asdict(outcome.ttfb) | {"added_p50_ms": outcome.ttfb.added_p50_ms},
        "targets": [asdict(v) | {"passed": v.passed} for v in outcome.verdicts],
        "spool": outcome.spool,
    }
    return json.dumps(procs.json_safe(data), indent=2)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if wrk_runner.wrk_binary() is None:
        print(wrk_runner.INSTALL_HINT, file=sys.stderr)
        return 2
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # run the cleanup in ``finally``
    cores = procs.bench_cores()
    os.sched_setaffinity(0, {cores[1]})  # this script's TTFB client runs beside the upstream
    with tempfile.TemporaryDirectory(prefix="protege-bench-") as tmp:
        outcome = run(args, Path(tmp), cores)
    print(
        render(
            header(args, cores),
            outcome.comparisons,
            outcome.ttfb,
            outcome.verdicts,
            footer(outcome.spool),
        )
    )
    if args.out:
        args.out.write_text(to_json(args, cores, outcome) + "\n")
    failed = any(not v.passed for v in outcome.verdicts)
    return 1 if args.strict and failed else 0


if __name__ == "__main__":
    sys.exit(main())
