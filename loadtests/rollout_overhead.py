"""Gateway overhead per rollout mode: teacher, canary, shadow and hybrid, in one run.

    python loadtests/rollout_overhead.py [--duration 4] [--rounds 5] [--canary-percent 10]
                                         [--shadow-percent 5] [--out results.json] [--strict]

The harness of ``gateway_overhead.py`` (wrk, the fast fake upstream, the gateway pinned to a
core of its own, capture on), with one gateway whose rollout is switched through the admin API
between measurements. The fake upstream answers both as the teacher and as the student (LoRAX's
OpenAI route: it answers any ``model``). Every mode is measured once per round, in an order
rotated from round to round. A mode's ratio to teacher mode is taken within each round (runs
seconds apart) and the median over the rounds is reported, as are the medians of the other
figures: a slow drift or a noisy neighbour during the run does not favour any mode.

Requests carry no ``user`` (and wrk no key), so the canary split follows the gateway's rng at
the configured percent rather than putting one sticky user on one side. A shadow call is a
second proxied request (the student's HTTP call is most of it), so shadow mode costs about its
sample share of throughput on a gateway core that is saturated: judged at a 5 % sample by
default, ``--shadow-percent`` measures others. Targets: canary and
shadow keep at least 90 % of teacher-mode throughput. Hybrid sends every request to the
student (whole answer, output checks, streams replayed) and is reported, not judged.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import signal
import sys
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from statistics import median
from subprocess import Popen

import orjson
import procs
import wrk_runner
from payloads import MODEL, chat_request
from report import Scenario

from gateway.profile import Profile, prompt_text

_HERE = Path(__file__).resolve().parent
_PATH = "/v1/chat/completions"
_TOKEN = "bench-admin"
_TASK = "bench"
_ADAPTER = "bench/v1"
MODES = ("teacher", "canary", "shadow", "hybrid")
SCENARIOS = (Scenario("chat", False, 64), Scenario("stream", True, 16))
TARGET = 0.90  # canary and shadow keep this share of teacher-mode throughput


@dataclass(frozen=True)
class Run:
    round: int
    mode: str
    scenario: str
    connections: int
    rps: float
    p50_ms: float
    p99_ms: float
    errors: int
    cpu_us_per_req: float


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--duration", type=int, default=4, help="seconds per measured run")
    parser.add_argument("--warmup", type=int, default=1, help="seconds of warm-up before each")
    parser.add_argument("--rounds", type=int, default=5, help="measurements of each mode")
    parser.add_argument("--canary-percent", type=float, default=10.0)
    parser.add_argument("--shadow-percent", type=float, default=5.0)
    parser.add_argument("--out", type=Path, help="write the results as JSON here")
    parser.add_argument("--strict", action="store_true", help="exit 1 if a target fails")
    args = parser.parse_args(argv)
    if args.duration < 1 or args.warmup < 0 or args.rounds < 1:
        parser.error("--duration and --rounds must be >= 1, --warmup >= 0")
    return args


def body(stream: bool) -> bytes:
    """The benchmark's chat request without its ``user``: the canary split is by rng."""
    fields = json.loads(chat_request(stream))
    fields.pop("user", None)
    return json.dumps(fields).encode()


def publish_adapter(store: Path) -> None:
    """A published adapter whose reference profile is the benchmark's own prompt."""
    prompt = prompt_text(json.loads(body(False))["messages"])
    manifest = {"task": _TASK, "version": "v1", "input_profile": Profile.of([prompt]).to_dict()}
    path = store / "adapters" / _ADAPTER / "protege.json"
    path.parent.mkdir(parents=True)
    path.write_bytes(orjson.dumps(manifest))


def config(tmp: Path, upstream: str) -> Path:
    settings = {
        "teacher": {"base_url": upstream, "api_key": "bench"},
        "student": {"base_url": upstream},
        "routes": [{"alias": MODEL, "task": _TASK}],
        "rollouts": {"admin_token": _TOKEN},
        "spool": {"dir": str(tmp / "spool")},
        "store": f"file://{tmp / 'store'}",
    }
    path = tmp / "gateway.yaml"
    path.write_text(json.dumps(settings))  # JSON is YAML
    return path


def set_mode(port: int, mode: str, args: argparse.Namespace) -> None:
    change = {"mode": mode, "adapter": _ADAPTER, "percent": args.canary_percent,
              "shadow_percent": args.shadow_percent}  # fmt: skip
    conn = http.client.HTTPConnection(procs.HOST, port, timeout=10)
    try:
        headers = {"Authorization": f"Bearer {_TOKEN}", "Content-Type": "application/json"}
        conn.request("PUT", f"/admin/routes/{_TASK}", json.dumps(change), headers)
        resp = conn.getresponse()
        answer = resp.read()
    finally:
        conn.close()
    if resp.status != 200:
        raise SystemExit(f"the admin API refused mode {mode}: {resp.status} {answer[:300]!r}")


def measure(port: int, pid: int, core: int, files: dict[bool, Path], round_: int, mode: str,
            scenario: Scenario, args: argparse.Namespace) -> Run:  # fmt: skip
    url = f"http://{procs.HOST}:{port}{_PATH}"
    file, conns = files[scenario.stream], scenario.connections
    if args.warmup:
        wrk_runner.run(url, file, conns, args.warmup, core)
    cpu = procs.cpu_seconds(pid)
    result = wrk_runner.run(url, file, conns, args.duration, core)
    cpu = procs.cpu_seconds(pid) - cpu
    done = max(result.requests, 1)
    run = Run(round_, mode, scenario.name, conns, result.rps, result.p50_us / 1000,
              result.p99_us / 1000, result.errors, cpu / done * 1e6)  # fmt: skip
    print(f"  {mode:<8} {scenario.name:<6} {conns:>3} conns {run.rps:>8,.0f}/s  "
          f"p50 {run.p50_ms:.3f} ms  p99 {run.p99_ms:.3f} ms  errors {run.errors}",
          file=sys.stderr, flush=True)  # fmt: skip
    return run


def run_all(args: argparse.Namespace, tmp: Path, cores: tuple[int, int]) -> list[Run]:
    gateway_core, client_core = cores
    children: list[Popen[bytes]] = []
    try:
        up_port, up_log = procs.free_port(), tmp / "upstream.log"
        upstream_argv = [sys.executable, str(_HERE / "fake_upstream.py"), "--port", str(up_port)]
        children.append(procs.start(upstream_argv, client_core, up_log))
        procs.wait_healthy(children[-1], up_port, "/healthz", up_log)
        publish_adapter(tmp / "store")
        path = config(tmp, f"http://{procs.HOST}:{up_port}/v1")
        gw_port, gw_log = procs.free_port(), tmp / "gateway.log"
        argv = [sys.executable, "-m", "protege.cli", "gateway", "--config", str(path),
                "--host", procs.HOST, "--port", str(gw_port)]  # fmt: skip
        env = procs.local_env({})
        children.append(procs.start(argv, gateway_core, gw_log, env, cwd=_HERE.parent))
        procs.wait_healthy(children[-1], gw_port, "/healthz", gw_log, timeout_s=60)
        procs.pin_tree(children[-1].pid, gateway_core)
        files = {s: tmp / f"body-{s}.json" for s in (False, True)}
        for stream, file in files.items():
            file.write_bytes(body(stream))
        runs = []
        for round_ in range(args.rounds):
            for mode in MODES[round_ % len(MODES) :] + MODES[: round_ % len(MODES)]:
                set_mode(gw_port, mode, args)
                for scenario in SCENARIOS:
                    pid = children[-1].pid
                    run = measure(gw_port, pid, client_core, files, round_, mode, scenario, args)
                    runs.append(run)
        if any(r.errors for r in runs):
            tail = gw_log.read_text(errors="replace")[-3000:]
            print(f"the gateway answered with errors; its log ends with:\n{tail}", file=sys.stderr)
        return runs
    finally:
        for child in reversed(children):
            procs.stop(child)


@dataclass(frozen=True)
class Row:
    """One mode in one scenario: medians over the rounds."""

    mode: str
    scenario: str
    rps: float
    ratio: float  # median over rounds of (throughput / teacher-mode throughput that round)
    p50_ms: float
    p99_ms: float
    cpu_us_per_req: float
    judged: bool

    @property
    def passed(self) -> bool:
        return not self.judged or self.ratio >= TARGET


def rows(runs: list[Run]) -> list[Row]:
    out = []
    for scenario in SCENARIOS:
        mine = [r for r in runs if r.scenario == scenario.name]
        teacher = {r.round: r.rps for r in mine if r.mode == "teacher"}
        for mode in MODES:
            of = [r for r in mine if r.mode == mode]
            ratio = median(r.rps / teacher[r.round] for r in of)
            out.append(Row(mode, scenario.name, median(r.rps for r in of), ratio,
                           median(r.p50_ms for r in of), median(r.p99_ms for r in of),
                           median(r.cpu_us_per_req for r in of),
                           mode in ("canary", "shadow")))  # fmt: skip
    return out


def render(table: list[Row], args: argparse.Namespace) -> str:
    lines = [
        f"Gateway overhead per rollout mode: {args.duration} s per run, {os.cpu_count()} CPUs "
        f"({procs.cpu_model()}); canary {args.canary_percent:g} %, shadow sample "
        f"{args.shadow_percent:g} %; medians of {args.rounds} rounds (ratios paired by round)",
        "",
        "| mode | scenario | req/s | vs teacher | p50 ms | p99 ms | gw CPU µs/req | target |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in table:
        verdict = (f"≥ {TARGET:.0%}: " + ("pass" if r.passed else "FAIL")) if r.judged else "-"
        lines.append(
            f"| {r.mode} | {r.scenario} | {r.rps:,.0f} | {r.ratio:.3f} | {r.p50_ms:.3f} | "
            f"{r.p99_ms:.3f} | {r.cpu_us_per_req:,.0f} | {verdict} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if wrk_runner.wrk_binary() is None:
        print(wrk_runner.INSTALL_HINT, file=sys.stderr)
        return 2
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    cores = procs.bench_cores()
    os.sched_setaffinity(0, {cores[1]})
    with tempfile.TemporaryDirectory(prefix="protege-rollout-bench-") as tmp:
        runs = run_all(args, Path(tmp), cores)
    table = rows(runs)
    print(render(table, args))
    if args.out:
        data = {"runs": [asdict(r) for r in runs], "rows": [asdict(r) for r in table]}
        args.out.write_text(json.dumps(procs.json_safe(data), indent=2) + "\n")
    return 1 if args.strict and not all(r.passed for r in table) else 0


if __name__ == "__main__":
    sys.exit(main())
