"""Sidecar throughput benchmark: a spool backlog shipped as Parquet on one core, memory watched.

    python loadtests/sidecar_throughput.py [--backlog-mib 1024] [--s3-backlog-mib 256]
                                           [--out results.json] [--strict]

Writes a backlog of sealed segments with the gateway's own spool writer, reads it once with the
segment reader alone (the baseline), then runs ``protege sidecar --once`` pinned to one core to
ship it to a local store and (a smaller part of it) to moto's S3 server on the other core. Each
run's wall and CPU time and resident memory are measured, and the store is checked to hold every
record once. Exits 0 whatever the figures (it is a report); ``--strict`` exits 1 if a target or
a check fails. Every child process and temporary file is removed on exit.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from subprocess import Popen

import procs
from backlog import Backlog, describe, link_spool, read_spool, write_backlog
from moto_s3 import S3Server, environ, start_moto, stored
from sidecar_report import MIB, Check, Row, Verdict, render, rss_profile, table, verdict_lines
from sidecar_report import verdicts as judge
from sidecar_run import ChildRun, leftovers, run_sidecar, sidecar_env, write_config

from core.read import count_exchanges

_BUCKET = "protege-bench"


@dataclass(frozen=True)
class Shipped:
    """One sidecar run, its row in the table and what the check after it found."""

    row: Row
    run: ChildRun
    check: Check
    parts: int  # Parquet objects in the store
    parquet_bytes: int
    store_cpu_s: float | None = None  # CPU time of the store's server during the run (S3)


@dataclass(frozen=True)
class Outcome:
    backlog: Backlog
    generate_s: float
    baseline: Row
    startup: ChildRun  # the sidecar on an empty spool: start-up and exit alone
    shipped: list[Shipped]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--backlog-mib", type=int, default=1024, help="spool backlog to ship")
    parser.add_argument(
        "--s3-backlog-mib", type=int, default=256, help="part of it shipped to S3 (0: skip S3)"
    )
    parser.add_argument("--out", type=Path, help="write the results as JSON here")
    parser.add_argument("--strict", action="store_true", help="exit 1 if a target fails")
    args = parser.parse_args(argv)
    if args.backlog_mib < 1 or args.s3_backlog_mib < 0:
        parser.error("--backlog-mib must be >= 1 and --s3-backlog-mib >= 0")
    return args


@contextlib.contextmanager
def pinned(core: int) -> Iterator[None]:
    """This process on ``core`` only, for the duration."""
    before = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {core})
    try:
        yield
    finally:
        os.sched_setaffinity(0, before)


def baseline(backlog_dir: Path, core: int) -> tuple[Row, dict[str, int]]:
    """The spool read with ``iter_records`` alone, on the sidecar's core."""
    with pinned(core):
        result = read_spool(backlog_dir)
    row = Row("read spool (baseline)", result.records, result.bytes, result.wall_s, result.cpu_s)
    return row, result.per_segment


def _timeout_s(backlog: Backlog) -> float:
    return 120.0 + 2.0 * backlog.bytes / MIB  # ample: the target is ~40 MiB/s


def ship(backlog: Backlog, work: Path, store: str, env: Mapping[str, str], core: int) -> ChildRun:
    """Ship ``backlog`` (hard links to it, in ``work/spool``) to ``store``."""
    spool = link_spool(backlog, work / "spool")
    config = write_config(work / "sidecar.yaml", spool, store)
    return run_sidecar(config, spool, core, env, work / "sidecar.log", _timeout_s(backlog))


def verify(name: str, backlog: Backlog, work: Path, store: str, env: Mapping[str, str]) -> Check:
    """What the store holds (each record counted once) and what the spool still holds."""
    with environ(env):  # the reader finds S3 through the same AWS settings
        count = count_exchanges(store)
    return Check(name, backlog.records, count, tuple(leftovers(work / "spool")))


def _row(name: str, backlog: Backlog, run: ChildRun) -> Row:
    profile = rss_profile(run.samples, len(backlog.segments))
    peak = max([run.max_rss, *(s.rss for s in run.samples)])
    return Row(name, backlog.records, backlog.bytes, run.wall_s, run.cpu_s, peak, *profile)


def ship_local(backlog: Backlog, tmp: Path, core: int) -> Shipped:
    work, name = tmp / "local", "sidecar -> file://"
    store, env = work / "store", sidecar_env({})
    run = ship(backlog, work, f"file://{store}", env, core)
    check = verify(name, backlog, work, f"file://{store}", env)
    parts = [p for p in store.rglob("*.parquet") if p.is_file()]
    return Shipped(
        _row(name, backlog, run), run, check, len(parts), sum(p.stat().st_size for p in parts)
    )


def ship_s3(
    backlog: Backlog, tmp: Path, cores: tuple[int, int], children: list[Popen[bytes]]
) -> Shipped:
    work, name, store = tmp / "s3", "sidecar -> s3 (moto)", f"s3://{_BUCKET}/bench"
    work.mkdir()
    server: S3Server = start_moto(cores[1], work / "moto.log", children)
    server.client().create_bucket(Bucket=_BUCKET)
    env = sidecar_env(server.env())
    moto_cpu = procs.cpu_seconds(children[-1].pid)
    run = ship(backlog, work, store, env, cores[0])
    moto_cpu = procs.cpu_seconds(children[-1].pid) - moto_cpu
    check = verify(name, backlog, work, store, env)
    parts, size = stored(server, _BUCKET, "bench/")
    return Shipped(_row(name, backlog, run), run, check, parts, size, moto_cpu)


def startup_cost(tmp: Path, core: int) -> ChildRun:
    """The sidecar on an empty spool: what every ``--once`` run pays before shipping."""
    spool, work = tmp / "empty" / "spool", tmp / "empty"
    spool.mkdir(parents=True)
    config = write_config(work / "sidecar.yaml", spool, f"file://{work / 'store'}")
    return run_sidecar(config, spool, core, sidecar_env({}), work / "sidecar.log", 60.0)


def _progress(shipped: Shipped) -> None:
    row = shipped.row
    print(f"  {row.scenario}: {row.records:,} records in {row.wall_s:.2f} s", file=sys.stderr)


def run(args: argparse.Namespace, tmp: Path, cores: tuple[int, int]) -> Outcome:
    """The whole benchmark; every child process is stopped before it returns or raises."""
    children: list[Popen[bytes]] = []
    try:
        print(f"writing a {args.backlog_mib} MiB backlog ...", file=sys.stderr, flush=True)
        started = time.perf_counter()
        write_backlog(tmp / "backlog", args.backlog_mib * MIB)
        generate_s = time.perf_counter() - started
        base, per_segment = baseline(tmp / "backlog", cores[0])
        backlog = describe(tmp / "backlog", per_segment)
        print("shipping ...", file=sys.stderr, flush=True)
        startup = startup_cost(tmp, cores[0])
        shipped = [ship_local(backlog, tmp, cores[0])]
        _progress(shipped[-1])
        if args.s3_backlog_mib:
            subset = backlog.first(args.s3_backlog_mib * MIB)
            shipped.append(ship_s3(subset, tmp, cores, children))
            _progress(shipped[-1])
    finally:
        for child in reversed(children):
            procs.stop(child)
    return Outcome(backlog, generate_s, base, startup, shipped)


def header(args: argparse.Namespace, cores: tuple[int, int], outcome: Outcome) -> list[str]:
    b = outcome.backlog
    return [
        f"Sidecar throughput: {os.cpu_count()} CPUs ({procs.cpu_model()}); the sidecar and the "
        f"baseline on core {cores[0]}, moto and this script on core {cores[1]}",
        f"backlog: {len(b.segments)} sealed segments, {b.records:,} records, "
        f"{b.bytes / MIB:,.0f} MiB ({b.bytes / max(b.records, 1):,.0f} B/record), "
        f"written in {outcome.generate_s:.1f} s",
        f"S3 gets the oldest segments, up to {args.s3_backlog_mib} MiB (moto keeps every object "
        "in memory)"
        if args.s3_backlog_mib
        else "S3 skipped (--s3-backlog-mib 0)",
    ]


def footer(outcome: Outcome) -> list[str]:
    lines = [
        f"sidecar start-up and exit on an empty spool: {outcome.startup.wall_s:.2f} s wall, "
        f"{outcome.startup.cpu_s:.2f} s CPU, {outcome.startup.max_rss / MIB:.0f} MiB peak RSS "
        "(included in every wall time above)",
    ]
    for s in outcome.shipped:
        ratio = s.row.bytes / s.parquet_bytes if s.parquet_bytes else float("nan")
        shipping_s = s.row.wall_s - outcome.startup.wall_s
        rate = s.row.records / shipping_s if shipping_s > 0 else float("nan")
        lines.append(
            f"{s.row.scenario}: {rate:,.0f} records/s without the start-up; {s.parts} Parquet "
            f"parts, {s.parquet_bytes / MIB:,.1f} MiB ({ratio:.1f}x smaller than the spool); "
            f"{len(s.run.samples)} RSS samples"
        )
        if s.store_cpu_s is not None:
            lines.append(f"  moto used {s.store_cpu_s:.2f} s CPU on its core meanwhile")
    return lines


def _row_json(row: Row) -> dict[str, object]:
    return asdict(row) | {"records_per_s": row.rps, "mib_per_s": row.mib_s}


def _shipped_json(s: Shipped) -> dict[str, object]:
    return {
        "row": _row_json(s.row),
        "run": asdict(s.run),
        "check": asdict(s.check) | {"passed": s.check.passed},
        "parts": s.parts,
        "parquet_bytes": s.parquet_bytes,
        "store_cpu_s": s.store_cpu_s,
    }


def to_json(
    args: argparse.Namespace, cores: tuple[int, int], outcome: Outcome, results: list[Verdict]
) -> str:
    b = outcome.backlog
    data = {
        "config": vars(args)
        | {
            "sidecar_core": cores[0],
            "other_core": cores[1],
            "cpus": os.cpu_count(),
            "cpu_model": procs.cpu_model(),
        },
        "backlog": {
            "segments": len(b.segments),
            "records": b.records,
            "bytes": b.bytes,
            "generate_s": outcome.generate_s,
        },
        "baseline": _row_json(outcome.baseline),
        "startup": asdict(outcome.startup),
        "shipped": [_shipped_json(s) for s in outcome.shipped],
        "targets": [asdict(v) | {"passed": v.passed} for v in results],
    }
    return json.dumps(procs.json_safe(data), indent=2)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # run the cleanup in ``finally``
    cores = procs.bench_cores()
    os.sched_setaffinity(0, {cores[1]})  # off the sidecar's core, except for the baseline
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="protege-sidecar-bench-") as tmp:
        outcome = run(args, Path(tmp), cores)
    rows = [s.row for s in outcome.shipped]
    results = judge(rows[0], rows)
    checks = [s.check for s in outcome.shipped]
    print(
        render(
            header(args, cores, outcome),
            table([outcome.baseline, *rows], outcome.baseline),
            verdict_lines(results, checks),
            [*footer(outcome), f"total run time: {time.perf_counter() - started:.0f} s"],
        )
    )
    if args.out:
        args.out.write_text(to_json(args, cores, outcome, results) + "\n")
    failed = any(not v.passed for v in results) or any(not c.passed for c in checks)
    return 1 if args.strict and failed else 0


if __name__ == "__main__":
    sys.exit(main())
