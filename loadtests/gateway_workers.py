"""Gateway workers benchmark: CPU time per request with 1 and 2 workers, under the same load.

    python loadtests/gateway_workers.py [--rate 400 | --closed] [--duration 8] [--warmup 2]
                                        [--rounds 3] [--connections 32] [--idle 3] [--pin]
                                        [--out results.json]

The load is wrk's (non-streaming chat, ``--connections`` keep-alive connections) against
``fake_upstream.py``, paced at about ``--rate`` requests a second (each connection waits a
random time before its next request): both configurations serve the same requests, below what
one worker can answer. Each round runs, on a fresh spool each time:

- ``--workers 1`` at the rate, then ``--workers 2`` at the rate: the issue's comparison;
- ``--workers 1`` at half the rate: a process under the load each of the two workers had.

On a machine whose cores idle between requests, a process's CPU per request depends on how
busy it is (each request pays for its own wake-ups, and finds its caches cold after the core
slept or ran something else), so the first ratio mixes two things: the cost of having
workers, and each worker being half as busy. The second ratio (2 workers at the rate against
1 worker at half of it: every process under the same load) shows the first alone.

``--closed``: wrk as fast as the gateway answers instead (saturated; no half-rate run).
wrk and the fake upstream are pinned to the second core; the gateway's processes may run on
both (``--pin``: all on the first core). Before the load, each gateway's CPU while idle for
``--idle`` seconds is measured too (its fixed cost: timers, the rollouts' sync, the spool's
rescans, per process). The gateway's CPU time (all its processes: the parent and every worker,
from psutil) over the measured run, divided by the requests wrk completed, is its cost per
request. Ratios are per round; their medians over rounds are reported.

After each run the gateway is stopped (SIGTERM), ``protege sidecar --once`` ships its spool to a
file store, and every exchange the gateway counted as answered (``protege_requests_total``, the
aggregate over workers) must be stored exactly once: as many rows as distinct request ids, as
many as answered. Exits 1 if that fails, else 0 whatever the timings (it is a report); a missing
``wrk`` exits 2.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import httpx
import procs
import pyarrow.parquet as pq
import wrk_runner
import yaml
from payloads import chat_request

_HERE = Path(__file__).resolve().parent
_PATH = "/v1/chat/completions"


@dataclass(frozen=True)
class Run:
    workers: int
    rate: float | None  # the paced load asked for; None: closed loop
    idle_cpu_ms_per_s: float  # the gateway's CPU while idle, before the load
    requests: int  # completed by wrk in the measured run
    rps: float
    cpu_us_per_req: float
    errors: int
    answered: int  # the gateway's protege_requests_total at the end (warm-up included)
    rows: int  # stored rows
    distinct: int  # distinct request ids stored

    @property
    def exactly_once(self) -> bool:
        return self.rows == self.distinct == self.answered


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--duration", type=int, default=8, help="seconds per measured run")
    parser.add_argument("--warmup", type=int, default=2, help="seconds of warm-up before each")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of the runs")
    parser.add_argument("--idle", type=float, default=3.0, help="seconds idle CPU is measured")
    parser.add_argument("--connections", type=int, default=32, help="wrk connections")
    load = parser.add_mutually_exclusive_group()
    load.add_argument("--rate", type=float, default=400.0, help="paced load, requests a second")
    load.add_argument("--closed", action="store_true", help="closed loop: as fast as answered")
    parser.add_argument("--out", type=Path, help="write the results as JSON here")
    parser.add_argument(
        "--pin", action="store_true",
        help="pin every gateway process to the first core (else both cores, shared with wrk)",
    )  # fmt: skip
    return parser.parse_args(argv)


def write_config(tmp: Path, upstream_port: int, name: str) -> Path:
    config = tmp / f"{name}.yaml"
    config.write_text(yaml.safe_dump({
        "teacher": {"base_url": f"http://{procs.HOST}:{upstream_port}/v1", "api_key": "bench"},
        "spool": {"dir": str(tmp / name / "spool")},
        "store": f"file://{tmp / name / 'store'}",
        "logging": {"level": "warning"},
    }))  # fmt: skip
    return config


def one_run(
    args: argparse.Namespace,
    tmp: Path,
    upstream_port: int,
    workers: int,
    rate: float | None,
    name: str,
) -> Run:
    config = write_config(tmp, upstream_port, name)
    port, log = procs.free_port(), tmp / f"{name}-gateway.log"
    env = {k: v for k, v in procs.local_env({}).items() if not k.startswith("PROTEGE_")}
    argv = [sys.executable, "-m", "protege.cli", "gateway", "--config", str(config),
            "--host", procs.HOST, "--port", str(port), "--workers", str(workers)]  # fmt: skip
    gateway = procs.start(argv, 0, log, env, cwd=_HERE.parent)
    try:
        if not args.pin:
            os.sched_setaffinity(gateway.pid, set(procs.bench_cores()))  # workers inherit it
        procs.wait_healthy(gateway, port, "/healthz", log, timeout_s=90)
        time.sleep(1.0 if workers == 1 else 3.0)  # every worker listening (each starts alone)
        idle0 = procs.cpu_seconds(gateway.pid)
        time.sleep(args.idle)
        idle = (procs.cpu_seconds(gateway.pid) - idle0) / args.idle * 1e3 if args.idle else 0.0
        body, url = tmp / "body.json", f"http://{procs.HOST}:{port}{_PATH}"
        body.write_bytes(chat_request(False))
        if args.warmup:
            wrk_runner.run(url, body, args.connections, args.warmup, 1, rate)
        cpu0 = procs.cpu_seconds(gateway.pid)
        result = wrk_runner.run(url, body, args.connections, args.duration, 1, rate)
        cpu = procs.cpu_seconds(gateway.pid) - cpu0
        page = httpx.get(f"http://{procs.HOST}:{port}/metrics", timeout=10, trust_env=False)
        answered = int(procs.metric(page.text, "protege_requests_total"))
    finally:
        procs.stop(gateway, grace_s=90)
    rows, distinct = ship_and_count(tmp, config, name)
    per_req = cpu / result.requests * 1e6 if result.requests else float("nan")
    return Run(workers, rate, idle, result.requests, result.rps, per_req, result.errors,
               answered, rows, distinct)  # fmt: skip


def ship_and_count(tmp: Path, config: Path, name: str) -> tuple[int, int]:
    """Ship the run's spool with ``protege sidecar --once``; (rows, distinct ids) stored."""
    log = tmp / f"{name}-sidecar.log"
    env = {k: v for k, v in procs.local_env({}).items() if not k.startswith("PROTEGE_")}
    argv = [sys.executable, "-m", "protege.cli", "sidecar", "--once", "--config", str(config)]
    sidecar = procs.start(argv, 1, log, env, cwd=_HERE.parent)
    if sidecar.wait(600) != 0:
        raise SystemExit(f"the sidecar failed; see {log}")
    ids: list[str] = []
    for part in sorted((tmp / name / "store" / "exchanges").rglob("*.parquet")):
        ids += pq.read_table(part, columns=["request_id"]).column("request_id").to_pylist()
    return len(ids), len(set(ids))


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if wrk_runner.wrk_binary() is None:
        print(wrk_runner.INSTALL_HINT, file=sys.stderr)
        return 2
    procs.bench_cores()
    rate = None if args.closed else args.rate
    # (workers, rate): the comparison, then (paced only) one worker under each worker's load.
    plan = [(1, rate), (2, rate)] + ([] if rate is None else [(1, rate / 2)])
    print(f"{args.connections} connections, {args.duration} s per run, {args.rounds} rounds",
          flush=True)  # fmt: skip
    rounds: list[list[Run]] = []
    with tempfile.TemporaryDirectory(prefix="protege-workers-") as name:
        tmp = Path(name)
        up_port, up_log = procs.free_port(), tmp / "upstream.log"
        upstream = procs.start(
            [sys.executable, str(_HERE / "fake_upstream.py"), "--port", str(up_port)], 1, up_log
        )
        try:
            procs.wait_healthy(upstream, up_port, "/healthz", up_log)
            for r in range(args.rounds):
                rounds.append([])
                for i, (workers, pace) in enumerate(plan):
                    run = one_run(args, tmp, up_port, workers, pace, f"r{r}-{i}")
                    rounds[-1].append(run)
                    print(_line(run), flush=True)
        finally:
            procs.stop(upstream)
    ratios = {"2 workers / 1 worker, same total load": [two.cpu_us_per_req / one.cpu_us_per_req
                                                      for one, two, *_ in rounds]}  # fmt: skip
    if rate is not None:
        ratios["2 workers / 1 worker at half the load (each process as busy)"] = [
            two.cpu_us_per_req / half.cpu_us_per_req for _, two, half in rounds
        ]
    for what, values in ratios.items():
        print(f"CPU per request, {what}: median {statistics.median(values):.3f} "
              f"(rounds: {', '.join(f'{x:.3f}' for x in values)})")  # fmt: skip
    runs = [run for one in rounds for run in one]
    ok = all(run.exactly_once for run in runs)
    print("every answered exchange stored exactly once:", "yes" if ok else "NO")
    if args.out:
        args.out.write_text(json.dumps({"runs": [asdict(x) for x in runs], "ratios": ratios}))
    return 0 if ok else 1


def _line(run: Run) -> str:
    load = "closed loop" if run.rate is None else f"paced {run.rate:,.0f}/s"
    return (f"workers={run.workers} load={load} req/s={run.rps:,.0f} "
            f"CPU/req={run.cpu_us_per_req:.0f} us idle={run.idle_cpu_ms_per_s:.0f} ms/s "
            f"errors={run.errors} answered={run.answered} stored={run.rows} "
            f"distinct={run.distinct}")  # fmt: skip


if __name__ == "__main__":
    sys.exit(main())
