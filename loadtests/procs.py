"""Child processes of the benchmark: start pinned to a core, wait until healthy, meter, stop."""

from __future__ import annotations

import contextlib
import http.client
import os
import signal
import socket
import subprocess
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import psutil
from prometheus_client.parser import text_string_to_metric_families

HOST = "127.0.0.1"


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def bench_cores() -> tuple[int, int]:
    """(gateway core, client core): the first two CPUs this process may run on."""
    cores = sorted(os.sched_getaffinity(0))
    if len(cores) < 2:
        raise SystemExit(f"need at least 2 CPUs to pin gateway and client apart, have {cores}")
    return cores[0], cores[1]


def start(
    argv: Sequence[str],
    core: int,
    log: Path,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
) -> subprocess.Popen[bytes]:
    """Start ``argv`` in its own process group, pinned to ``core``, output to ``log``."""
    with log.open("wb") as out:
        proc = subprocess.Popen(
            list(argv),
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=None if env is None else dict(env),
            cwd=cwd,
            start_new_session=True,
        )
    os.sched_setaffinity(proc.pid, {core})  # threads and children it starts later inherit it
    return proc


def local_env(extra: Mapping[str, str]) -> dict[str, str]:
    """This environment plus ``extra``, with proxies bypassed so traffic stays on 127.0.0.1."""
    env = {k: v for k, v in os.environ.items() if not k.lower().endswith("_proxy")}
    env.update(NO_PROXY="127.0.0.1,localhost", no_proxy="127.0.0.1,localhost")
    env.update(extra)
    return env


def _healthy(port: int, path: str) -> bool:
    conn = http.client.HTTPConnection(HOST, port, timeout=1.0)
    try:
        conn.request("GET", path)
        return conn.getresponse().status == 200
    except OSError:
        return False
    finally:
        conn.close()


def metric(text: str, name: str, **labels: str) -> float:
    """The sum of the samples called ``name`` whose labels include ``labels``, in the text of
    a Prometheus ``/metrics`` page."""
    total = 0.0
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                total += sample.value
    return total


def wait_healthy(
    proc: subprocess.Popen[bytes], port: int, path: str, log: Path, timeout_s: float = 30.0
) -> None:
    """Return once ``GET path`` answers 200; exit with the log's tail if it never does."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            break
        if _healthy(port, path):
            return
        time.sleep(0.1)
    tail = log.read_text(errors="replace")[-2000:]
    state = f"exited with {proc.returncode}" if proc.poll() is not None else "never became healthy"
    raise SystemExit(
        f"{str(proc.args)[:200]} {state} "
        f"(GET {path} on port {port}, {timeout_s:.0f} s). Log tail:\n{tail}"
    )


def pin_tree(pid: int, core: int) -> None:
    """Pin every thread of ``pid`` and of its descendants to ``core``.

    ``start`` pins the process before it starts threads; this also catches processes that a
    wrapper command started in a way that reset their affinity.
    """
    try:
        tree = [psutil.Process(pid), *psutil.Process(pid).children(recursive=True)]
    except psutil.NoSuchProcess:
        return
    for proc in tree:
        with contextlib.suppress(psutil.NoSuchProcess, ProcessLookupError):
            for thread in proc.threads():
                os.sched_setaffinity(thread.id, {core})


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of ``pid`` and its live descendants, all threads included."""
    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return 0.0
    total = 0.0
    for proc in procs:
        try:
            times = proc.cpu_times()
        except psutil.NoSuchProcess:
            continue
        total += times.user + times.system
    return total


def stop(proc: subprocess.Popen[bytes], grace_s: float = 10.0) -> None:
    """SIGTERM the process group, wait up to ``grace_s`` for a clean exit, then SIGKILL it."""
    if proc.poll() is None:
        _signal_group(proc, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=grace_s)
    _signal_group(proc, signal.SIGKILL)  # stragglers the leader left behind
    if proc.poll() is None:
        proc.wait(timeout=5)


def _signal_group(proc: subprocess.Popen[bytes], sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, sig)


def cpu_model() -> str:
    """The processor's model name, for the report header."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.partition(":")[2].strip()
    return "unknown CPU"


def json_safe(value: object) -> object:
    """``value`` with NaN as null and paths as strings, ready for ``json.dumps``."""
    if isinstance(value, float) and value != value:  # NaN is not JSON
        return None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    return str(value) if isinstance(value, Path) else value
