"""The reliability suite: each scenario provokes one fault under load and checks nothing is lost.

    python loadtests/reliability/run.py [scenario ...] [--quick] [--rate R] [--out FILE] [--keep]

Runs every scenario (or those named, in the order given), prints each one's checks as it ends,
then the verdict table: requests sent and answered, client errors, distinct records in the
store, duplicate rows, answered exchanges lost, latency before and during the fault. Exits 1 if
any scenario fails. Every process a scenario starts is stopped, and its temporary directory
removed (``--keep`` keeps it, with the logs), however the suite ends.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import os
import shutil
import sys
import tempfile
import time
import traceback
from pathlib import Path

import bootstrap  # noqa: F401  (first: puts loadtests/ and the project root on sys.path)

# isort: split
import big_backlog
import client_disconnect
import damaged_segments
import kill_gateway
import kill_sidecar
import kill_worker
import procs
import slow_shadow
import spool_cap
import stepback
import store_outage
import stream_cut
from scenario import Context, Scenario
from verdict import Result, details, table

SCENARIOS: dict[str, Scenario] = {
    s.name: s
    for s in (
        kill_gateway.SCENARIO,
        kill_sidecar.SCENARIO,
        kill_worker.SCENARIO,
        store_outage.SCENARIO,
        damaged_segments.SCENARIO,
        spool_cap.DROP,
        spool_cap.REJECT,
        big_backlog.SCENARIO,
        stream_cut.SCENARIO,
        client_disconnect.SCENARIO,
        slow_shadow.SCENARIO,
        stepback.SCENARIO,
    )
}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("scenarios", nargs="*", help="scenarios to run (default: all)")
    parser.add_argument("--list", action="store_true", help="list the scenarios and exit")
    parser.add_argument("--quick", action="store_true", help="shorter phases and backlog")
    parser.add_argument("--rate", type=float, default=200.0, help="client requests per second")
    parser.add_argument("--backlog-mib", type=int, help="backlog size (default 512, quick 64)")
    parser.add_argument("--out", type=Path, help="also write every figure as JSON here")
    parser.add_argument("--keep", action="store_true", help="keep the work directory and logs")
    args = parser.parse_args(argv)
    unknown = [name for name in args.scenarios if name not in SCENARIOS]
    if unknown:
        parser.error(f"unknown scenarios {unknown}; known: {', '.join(SCENARIOS)}")
    return args


async def run_one(scenario: Scenario, ctx: Context) -> Result:
    started = time.monotonic()
    try:
        result = await scenario.run(ctx)
    except Exception as exc:  # a broken scenario is a failed one; the suite goes on
        result = Result(scenario.name, 0, 0, 0, None)
        result.check("scenario ran to its end", False, f"{type(exc).__name__}: {exc}")
        result.notes.append(traceback.format_exc(limit=6).replace("\n", "\n    "))
    result.seconds = time.monotonic() - started
    return result


def header(cores: tuple[int, int]) -> str:
    today = datetime.date.today().isoformat()
    return (
        f"{procs.cpu_model()}, {os.cpu_count()} CPUs (gateway on core {cores[0]}, clients, fakes,"
        f" sidecar and S3 on core {cores[1]}), Python {sys.version.split()[0]}, {today}"
    )


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.list:
        for s in SCENARIOS.values():
            print(f"{s.name:20} {s.about}")
        return 0
    cores = procs.bench_cores()
    os.sched_setaffinity(0, {cores[1]})  # this process and the threads it starts
    chosen = [SCENARIOS[n] for n in args.scenarios] or list(SCENARIOS.values())
    root = Path(tempfile.mkdtemp(prefix="protege-reliability-"))
    backlog = args.backlog_mib or (64 if args.quick else 512)
    ctx = Context(root, cores, 0.5 if args.quick else 1.0, args.rate, backlog)
    print(header(cores), flush=True)
    results: list[Result] = []
    try:
        for scenario in chosen:
            print(f"\n== {scenario.name}: {scenario.about}", flush=True)
            results.append(asyncio.run(run_one(scenario, ctx)))
            print(details(results[-1]), flush=True)
    finally:
        if args.keep:
            print(f"\nwork directory kept: {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)
    print("\n" + table(results))
    failed = [r.name for r in results if not r.passed]
    print(f"\n{len(results) - len(failed)} of {len(results)} scenarios passed", end="")
    print(f"; failed: {', '.join(failed)}" if failed else "")
    if args.out:
        doc = {"machine": header(cores), "results": [r.to_json() for r in results]}
        args.out.write_text(json.dumps(procs.json_safe(doc), indent=2))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
