"""``protege up``: the gateway and the sidecar as two supervised child processes (and the
console, and the autopilot when asked).

Two processes, as in a pod: the sidecar's Parquet work never competes with the gateway's event
loop. With ``--workers N`` the gateway child is the parent of N gateway workers
(``gateway.workers``); the sidecar ships every worker's spool. SIGINT/SIGTERM are passed to
both (the sidecar then waits for the gateway to seal its last segment and ships it). If either
exits on its own, the other is stopped too; the console is optional: if it cannot start (its
port taken, say), the rest run on without it.
"""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Collection, Mapping, Sequence
from types import FrameType

_STOP_WAIT_S = 60.0


def admin_token() -> str:
    """The admin token the gateway and the autopilot share: the configured one, else one made
    for this run (in the environment every child inherits)."""
    token = os.environ.get("PROTEGE_ADMIN_TOKEN")
    if not token:
        token = os.environ["PROTEGE_ADMIN_TOKEN"] = secrets.token_urlsafe(24)
    return token


def supervise(commands: Mapping[str, Sequence[str]], optional: Collection[str] = ()) -> int:
    """Run ``protege <args>`` for each entry until one exits or a signal arrives. An
    ``optional`` child (the console) that exits is reported and the others keep running."""
    children = {
        name: subprocess.Popen([sys.executable, "-m", "protege.cli", *args])
        for name, args in commands.items()
    }
    stopping = False
    gone: set[str] = set()

    def forward(signum: int, _frame: FrameType | None) -> None:
        nonlocal stopping
        stopping = True
        for child in children.values():
            if child.poll() is None:
                child.send_signal(signum)

    previous = {s: signal.signal(s, forward) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        while not stopping and _running(children, optional, gone):
            time.sleep(0.2)
        if not stopping:
            forward(signal.SIGTERM, None)
        return _collect(children, optional)
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


def _running(
    children: Mapping[str, subprocess.Popen[bytes]], optional: Collection[str], gone: set[str]
) -> bool:
    """Whether every required child still runs (an optional one that ended is said once)."""
    for name, child in children.items():
        rc = child.poll()
        if rc is None:
            continue
        if name not in optional:
            return False
        if name not in gone:
            gone.add(name)
            print(f"protege: {name} exited with {rc}; the others keep running", file=sys.stderr)
    return True


def _collect(children: Mapping[str, subprocess.Popen[bytes]], optional: Collection[str]) -> int:
    """Wait for every child (killing stragglers); the first non-zero exit code of a required
    one, else 0."""
    deadline = time.monotonic() + _STOP_WAIT_S
    code = 0
    for name, child in children.items():
        try:
            rc = child.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            print(f"protege: {name} did not stop in time; killing it", file=sys.stderr)
            child.kill()
            rc = child.wait()
        if rc not in (0, -signal.SIGTERM, -signal.SIGINT) and code == 0 and name not in optional:
            print(f"protege: {name} exited with {rc}", file=sys.stderr)
            code = rc if rc > 0 else 1
    return code
