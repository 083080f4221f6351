"""Gateway overhead per rollout mode: teacher, canary, shadow and hybrid, in one run.

    python loadtests/rollout_overhead.py [--duration 4] [--rounds 5] [--canary-percent 10]
                                         [--shadow-percent 5] [--shadow-max-per-s 10]
                                         [--out results.json] [--strict]

The harness of ``gateway_overhead.py`` (wrk, the fast fake upstream answering as teacher and as
student — LoRAX's OpenAI route answers any ``model`` — capture on), with two gateways pinned to
the same core and loaded at the same time: the baseline, always in teacher mode, and the one
under test, switched between modes through the admin API. Both saturate the core, so each
one's CPU time per request is what a core of its own would sustain: the ratio of the two
(baseline µs per request / tested µs per request) is the tested mode's throughput relative to
teacher mode. Measured side by side, both runs see the same machine at the same moment — on a
shared machine the speed of one core drifts by ±15 % between runs seconds apart, which no
sequence of separate runs resolves to the few percent judged here. Teacher mode is also tested
against the baseline: that control ratio is the measurement's own error, printed with the rest.

Every mode is measured once per round, in an order rotated from round to round; the medians
over rounds are reported. Requests carry no ``user`` (and wrk no key), so the canary split
follows the gateway's rng at the configured percent rather than putting one sticky user on one
side. A shadow call is a second request the gateway makes on its own, checked, scored and
recorded: it costs about as much CPU as a client's request. Shadow mode is judged as shipped, a
5 % sample (``--shadow-percent``) capped at the policy's default of 10 calls a second
(``--shadow-max-per-s``); ``shadow-uncapped``, the same sample without the cap, is reported to
show what the calls cost. The shadow calls made per second are reported with each mode.
Targets: canary and shadow keep at least 90 % of teacher-mode throughput. Hybrid sends every
request to the student (whole answer, output checks, streams replayed) and is reported, not
judged.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import signal
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from statistics import median
from subprocess import Popen

import orjson
import procs
import wrk_runner
from payloads import MODEL, chat_request
from report import Scenario

from core.profile import Profile
from core.text import prompt_text
from gateway.policy import RolloutPolicy

_HERE = Path(__file__).resolve().parent
_PATH = "/v1/chat/completions"
_TOKEN = "bench-admin"
_TASK = "bench"
_ADAPTER = "bench/v1"
MODES = ("teacher", "canary", "shadow", "shadow-uncapped", "hybrid")
JUDGED = ("canary", "shadow")
# What a shadow call that happened is counted as (limited and skipped ones did not).
_SHADOW_CALLS = ("scored", "unscored", "failed")
SCENARIOS = (Scenario("chat", False, 64), Scenario("stream", True, 16))
TARGET = 0.90  # canary and shadow keep this share of teacher-mode throughput


@dataclass(frozen=True)
class Run:
    """One scenario with the tested gateway in one mode, side by side with the baseline."""

    round: int
    mode: str
    scenario: str
    connections: int
    rps: float  # while sharing the core with the baseline
    p50_ms: float
    p99_ms: float
    errors: int
    cpu_us_per_req: float
    baseline_cpu_us_per_req: float
    baseline_rps: float
    shadow_per_s: float  # shadow calls the tested gateway made

    @property
    def ratio(self) -> float:
        """Throughput per core relative to teacher mode (the baseline's)."""
        return self.baseline_cpu_us_per_req / self.cpu_us_per_req


@dataclass(frozen=True)
class Gateway:
    name: str
    port: int
    pid: int


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--duration", type=int, default=4, help="seconds per measured run")
    parser.add_argument("--warmup", type=int, default=1, help="seconds of warm-up before each")
    parser.add_argument("--rounds", type=int, default=5, help="measurements of each mode")
    parser.add_argument("--canary-percent", type=float, default=10.0)
    parser.add_argument("--shadow-percent", type=float, default=5.0)
    parser.add_argument("--shadow-max-per-s", type=float,
                        default=RolloutPolicy.model_fields["shadow_max_per_s"].default)  # fmt: skip
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
    uncapped = mode == "shadow-uncapped"
    change = {"mode": "shadow" if uncapped else mode, "adapter": _ADAPTER,
              "percent": args.canary_percent, "shadow_percent": args.shadow_percent,
              "shadow_max_per_s": None if uncapped else args.shadow_max_per_s}  # fmt: skip
    headers = {"Authorization": f"Bearer {_TOKEN}", "Content-Type": "application/json"}
    status, answer = call(port, "PUT", f"/admin/routes/{_TASK}", json.dumps(change), headers)
    if status != 200:
        raise SystemExit(f"the admin API refused mode {mode}: {status} {answer[:300]!r}")


def call(port: int, method: str, path: str, body: str | None = None,
         headers: dict[str, str] | None = None) -> tuple[int, bytes]:  # fmt: skip
    """(status, body) of one request to a gateway."""
    conn = http.client.HTTPConnection(procs.HOST, port, timeout=10)
    try:
        conn.request(method, path, body, headers or {})
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def start_gateway(name: str, tmp: Path, upstream: str, core: int,
                  children: list[Popen[bytes]]) -> Gateway:  # fmt: skip
    """A gateway of its own (config, spool, store) pinned to ``core``."""
    home = tmp / name
    publish_adapter(home / "store")
    path = config(home, upstream)
    port, log = procs.free_port(), home / "gateway.log"
    argv = [sys.executable, "-m", "protege.cli", "gateway", "--config", str(path),
            "--host", procs.HOST, "--port", str(port)]  # fmt: skip
    children.append(procs.start(argv, core, log, procs.local_env({}), cwd=_HERE.parent))
    procs.wait_healthy(children[-1], port, "/healthz", log, timeout_s=60)
    procs.pin_tree(children[-1].pid, core)
    return Gateway(name, port, children[-1].pid)


def shadow_calls(port: int) -> float:
    """The shadow calls a gateway has made, from its ``/metrics``."""
    text = call(port, "GET", "/metrics")[1].decode()
    name = "protege_shadow_requests_total"
    return sum(procs.metric(text, name, outcome=outcome) for outcome in _SHADOW_CALLS)


def load_both(gateways: tuple[Gateway, Gateway], file: Path, conns: int, seconds: float,
              core: int) -> list[wrk_runner.WrkResult]:  # fmt: skip
    """wrk against both gateways at once; their results in the same order."""
    urls = [f"http://{procs.HOST}:{g.port}{_PATH}" for g in gateways]
    with ThreadPoolExecutor(len(urls)) as pool:
        return list(pool.map(lambda url: wrk_runner.run(url, file, conns, seconds, core), urls))


def measure(gateways: tuple[Gateway, Gateway], core: int, files: dict[bool, Path], round_: int,
            mode: str, scenario: Scenario, args: argparse.Namespace) -> Run:  # fmt: skip
    file, conns = files[scenario.stream], scenario.connections
    if args.warmup:
        load_both(gateways, file, conns, args.warmup, core)
    shadowed = shadow_calls(gateways[1].port)  # outside the CPU measured
    cpu = [procs.cpu_seconds(g.pid) for g in gateways]
    base, tested = load_both(gateways, file, conns, args.duration, core)
    cpu = [procs.cpu_seconds(g.pid) - c for g, c in zip(gateways, cpu, strict=True)]
    shadowed = shadow_calls(gateways[1].port) - shadowed
    run = Run(round_, mode, scenario.name, conns, tested.rps, tested.p50_us / 1000,
              tested.p99_us / 1000, tested.errors + base.errors,
              cpu[1] / max(tested.requests, 1) * 1e6, cpu[0] / max(base.requests, 1) * 1e6,
              base.rps, shadowed / args.duration)  # fmt: skip
    print(f"  {mode:<15} {scenario.name:<6} {conns:>3} conns  {run.rps:>7,.0f}/s beside "
          f"{run.baseline_rps:>7,.0f}/s  {run.cpu_us_per_req:>5.0f} vs "
          f"{run.baseline_cpu_us_per_req:>5.0f} µs/req  x{run.ratio:.3f}  shadow "
          f"{run.shadow_per_s:.0f}/s  errors {run.errors}",
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
        upstream = f"http://{procs.HOST}:{up_port}/v1"
        gateways = (
            start_gateway("baseline", tmp, upstream, gateway_core, children),
            start_gateway("tested", tmp, upstream, gateway_core, children),
        )
        files = {s: tmp / f"body-{s}.json" for s in (False, True)}
        for stream, file in files.items():
            file.write_bytes(body(stream))
        runs = []
        for round_ in range(args.rounds):
            for mode in MODES[round_ % len(MODES) :] + MODES[: round_ % len(MODES)]:
                set_mode(gateways[1].port, mode, args)
                for scenario in SCENARIOS:
                    runs.append(measure(gateways, client_core, files, round_, mode, scenario, args))
        if any(r.errors for r in runs):
            for name in ("baseline", "tested"):
                tail = (tmp / name / "gateway.log").read_text(errors="replace")[-3000:]
                print(f"a gateway answered with errors; the {name} log ends with:\n{tail}",
                      file=sys.stderr)  # fmt: skip
        return runs
    finally:
        for child in reversed(children):
            procs.stop(child)


@dataclass(frozen=True)
class Row:
    """One mode in one scenario: medians over the rounds."""

    mode: str
    scenario: str
    ratio: float  # throughput per core relative to teacher mode
    capacity: float  # requests per second of gateway CPU
    cpu_us_per_req: float
    p50_ms: float
    p99_ms: float
    shadow_per_s: float
    judged: bool

    @property
    def passed(self) -> bool:
        return not self.judged or self.ratio >= TARGET


def rows(runs: list[Run]) -> list[Row]:
    out = []
    for scenario in SCENARIOS:
        for mode in MODES:
            of = [r for r in runs if r.scenario == scenario.name and r.mode == mode]
            cpu = median(r.cpu_us_per_req for r in of)
            out.append(Row(mode, scenario.name, median(r.ratio for r in of), 1e6 / cpu, cpu,
                           median(r.p50_ms for r in of), median(r.p99_ms for r in of),
                           median(r.shadow_per_s for r in of), mode in JUDGED))  # fmt: skip
    return out


def render(table: list[Row], args: argparse.Namespace) -> str:
    lines = [
        f"Gateway throughput per rollout mode, beside a teacher-mode baseline on the same core: "
        f"{args.duration} s per run, {os.cpu_count()} CPUs ({procs.cpu_model()}); canary "
        f"{args.canary_percent:g} %, shadow sample {args.shadow_percent:g} % (at most "
        f"{args.shadow_max_per_s:g} calls/s; uncapped: no limit); medians of "
        f"{args.rounds} rounds (teacher: the control, its ratio the measurement's error)",
        "",
        "| mode | scenario | vs teacher | req/s per core | gw CPU µs/req | shadow calls/s "
        "| p50 ms | p99 ms | target |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in table:
        verdict = (f"≥ {TARGET:.0%}: " + ("pass" if r.passed else "FAIL")) if r.judged else "-"
        lines.append(
            f"| {r.mode} | {r.scenario} | {r.ratio:.3f} | {r.capacity:,.0f} | "
            f"{r.cpu_us_per_req:,.0f} | {r.shadow_per_s:.0f} | {r.p50_ms:.2f} | {r.p99_ms:.2f} "
            f"| {verdict} |"
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
        data = {
            "runs": [{**asdict(r), "ratio": r.ratio} for r in runs],
            "rows": [asdict(r) for r in table],
        }
        args.out.write_text(json.dumps(procs.json_safe(data), indent=2) + "\n")
    return 1 if args.strict and not all(r.passed for r in table) else 0


if __name__ == "__main__":
    sys.exit(main())
