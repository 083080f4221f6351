"""One ``protege sidecar --once`` run as a child process on one core, metered while it ships.

Every ~50 ms the child's resident memory and the segments still in its spool are sampled; its
exit is noticed at once (a pidfd), and the kernel's own accounting at exit (``wait4``) gives
its CPU time and peak RSS exactly.
"""

from __future__ import annotations

import contextlib
import os
import select
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import procs
import psutil
import yaml

from core.segment import SEALED_SUFFIX

_ROOT: Final = Path(__file__).resolve().parent.parent
SAMPLE_S: Final = 0.05


@dataclass(frozen=True)
class Sample:
    t_s: float  # since the child was started
    rss: int  # bytes
    segments_left: int  # sealed segments still in the spool


@dataclass(frozen=True)
class ChildRun:
    exit_code: int
    wall_s: float  # start to exit, interpreter start-up included
    cpu_s: float  # user + system, all threads
    max_rss: int  # bytes, the kernel's high-water mark
    samples: tuple[Sample, ...]


def write_config(path: Path, spool: Path, store: str) -> Path:
    """A sidecar settings file: this spool, this store, metrics on a port nobody uses."""
    settings = {
        "spool": {"dir": str(spool)},
        "store": store,
        "logging": {"level": "info"},
        "sidecar": {"metrics_port": 0, "metrics_host": procs.HOST},
    }
    path.write_text(yaml.safe_dump(settings))
    return path


def sidecar_env(extra: Mapping[str, str]) -> dict[str, str]:
    """This environment plus ``extra``, proxies and ``PROTEGE_*`` overrides removed."""
    env = procs.local_env(extra)
    return {k: v for k, v in env.items() if not k.startswith("PROTEGE_")}


def segments_left(spool: Path) -> int:
    with os.scandir(spool) as entries:
        return sum(1 for e in entries if e.name.endswith(SEALED_SUFFIX))


def _rss(proc: psutil.Process) -> int:
    try:
        return int(proc.memory_info().rss)
    except psutil.Error:  # exited between two looks
        return 0


def _watch(
    proc: subprocess.Popen[bytes], spool: Path, core: int, started: float, timeout_s: float
) -> ChildRun:
    """Sample ``proc`` until it exits (reaping it) or ``timeout_s`` passes (SystemExit)."""
    pidfd, meter = os.pidfd_open(proc.pid), psutil.Process(proc.pid)
    samples: list[Sample] = []
    try:
        for _ in range(int(timeout_s / SAMPLE_S) + 1):
            exited, _, _ = select.select([pidfd], [], [], SAMPLE_S)
            if exited:
                _, status, usage = os.wait4(proc.pid, 0)
                proc.returncode = os.waitstatus_to_exitcode(status)
                wall = time.perf_counter() - started
                cpu, max_rss = usage.ru_utime + usage.ru_stime, usage.ru_maxrss * 1024
                return ChildRun(proc.returncode, wall, cpu, max_rss, tuple(samples))
            if not samples:
                procs.pin_tree(proc.pid, core)  # threads started before the pinning, if any
            if rss := _rss(meter):
                samples.append(Sample(time.perf_counter() - started, rss, segments_left(spool)))
    finally:
        os.close(pidfd)
    raise SystemExit(f"the sidecar was still running after {timeout_s:.0f} s")


def run_sidecar(
    config: Path, spool: Path, core: int, env: Mapping[str, str], log: Path, timeout_s: float
) -> ChildRun:
    """``protege sidecar --once --config config`` pinned to ``core``; its output goes to ``log``."""
    argv = [sys.executable, "-m", "protege.cli", "sidecar", "--once", "--config", str(config)]
    started = time.perf_counter()
    proc = procs.start(argv, core, log, env, cwd=_ROOT)
    try:
        run = _watch(proc, spool, core, started, timeout_s)
    finally:
        procs.stop(proc)
    if run.exit_code != 0:
        tail = log.read_text(errors="replace")[-3000:]
        raise SystemExit(f"the sidecar exited with {run.exit_code}; its log ends with:\n{tail}")
    return run


def leftovers(spool: Path) -> list[str]:
    """What a drained spool should not hold: segments, parts in the work dir, quarantined files."""
    found = [p.name for p in spool.iterdir() if p.is_file()]
    for sub in (".work", "quarantine"):
        with contextlib.suppress(FileNotFoundError):
            found += [f"{sub}/{p.name}" for p in (spool / sub).iterdir()]
    return found
