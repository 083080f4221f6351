"""Run ``wrk`` (the C load generator) with ``wrk_post.lua`` and parse its summary line."""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

_SCRIPT = Path(__file__).with_name("wrk_post.lua")
_MARK = "WRK_RESULT "
INSTALL_HINT = (
    "wrk is not installed; it is the benchmark's load generator. Install it with\n"
    "    apt-get update && apt-get install -y wrk      (Debian/Ubuntu)\n"
    "    brew install wrk                              (macOS)"
)


@dataclass(frozen=True)
class WrkResult:
    """One wrk run: completed requests, errors and latency percentiles (microseconds)."""

    requests: int
    duration_s: float
    bytes: int
    errors_status: int  # responses with a status other than 2xx/3xx
    errors_socket: int  # connect, read, write errors and timeouts
    p50_us: float
    p90_us: float
    p99_us: float
    max_us: float
    mean_us: float

    @property
    def rps(self) -> float:
        return self.requests / self.duration_s if self.duration_s else 0.0

    @property
    def errors(self) -> int:
        return self.errors_status + self.errors_socket


def wrk_binary() -> str | None:
    return shutil.which("wrk")


def parse(stdout: str) -> WrkResult:
    """The ``WRK_RESULT key=value ...`` line that ``wrk_post.lua``'s ``done()`` prints."""
    line = next((ln for ln in stdout.splitlines() if ln.startswith(_MARK)), None)
    if line is None:
        raise RuntimeError(f"wrk printed no {_MARK.strip()} line:\n{stdout[-2000:]}")
    v = {k: float(x) for k, _, x in (kv.partition("=") for kv in line[len(_MARK) :].split())}
    return WrkResult(
        requests=int(v["requests"]),
        duration_s=v["duration_us"] / 1e6,
        bytes=int(v["bytes"]),
        errors_status=int(v["status"]),
        errors_socket=int(v["connect"] + v["read"] + v["write"] + v["timeout"]),
        p50_us=v["p50_us"],
        p90_us=v["p90_us"],
        p99_us=v["p99_us"],
        max_us=v["max_us"],
        mean_us=v["mean_us"],
    )


def run(
    url: str,
    body_file: Path,
    connections: int,
    duration_s: float,
    core: int,
    rate: float | None = None,
) -> WrkResult:
    """POST ``body_file`` to ``url`` over ``connections`` keep-alive connections for a while.

    One wrk thread, pinned to ``core``: the client shares that core with the fake upstream.
    ``rate``: requests a second, about (paced: each connection waits a random time between a
    response and its next request); None: as many as the server answers (closed loop).
    """
    binary = wrk_binary()
    if binary is None:
        raise RuntimeError(INSTALL_HINT)
    seconds = max(1, round(duration_s))
    argv = [
        binary,
        "-t1",
        f"-c{connections}",
        f"-d{seconds}s",
        "--timeout",
        "10s",
        "-s",
        str(_SCRIPT),
        url,
    ]
    env = {**os.environ, "WRK_BODY_FILE": str(body_file)}
    if rate is not None:
        env["WRK_PACE_MS"] = f"{connections / rate * 1000:.3f}"
    proc = subprocess.Popen(
        argv,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env=env,
        stdin=subprocess.DEVNULL,
        text=True,
    )
    os.sched_setaffinity(proc.pid, {core})
    try:
        out, _ = proc.communicate(timeout=seconds + 30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=5)
    if proc.returncode != 0:
        raise RuntimeError(f"wrk exited with {proc.returncode}:\n{out[-2000:]}")
    return parse(out)
