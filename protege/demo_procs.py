"""The demo's child processes: started, watched, waited on, and always stopped.

Every child is ``python -m <module> …`` in a session of its own, its output in
``<workdir>/logs/<name>.log``: a Ctrl-C reaches only the demo, which then stops its children in
reverse order (SIGTERM, then SIGKILL after a grace period) whatever stage it was in.

Errors (what ``protege demo`` exits with)::

    DemoError                 exit 1: a stage failed; the message says which and why
    ├── NotPublished          exit 3: the student does not beat the naive baseline (or, with
    │                         --autopilot, the champion)
    └── NotPromoted           exit 4: --autopilot: the retrained student was retired, not
                              promoted, on live traffic
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Final

import httpx

_STOP_WAIT_S: Final = 30.0
_TAIL_LINES: Final = 15


class DemoError(Exception):
    """A stage of the demo failed; the message is for a person."""

    exit_code = 1


class NotPublished(DemoError):
    """The trained student lost to the naive baseline, so it is not published."""

    exit_code = 3


class NotPromoted(DemoError):
    """The challenger did not prove itself on live traffic: the gateway retired it."""

    exit_code = 4


def free_port() -> int:
    """A TCP port free on the loopback interface right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def child_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The demo's environment for its children: PROTEGE_* settings dropped (the demo's config
    file says everything) but for the upstream API keys; unbuffered output."""
    keep = ("PROTEGE_TEACHER_API_KEY", "PROTEGE_STUDENT_API_KEY")
    env = {k: v for k, v in os.environ.items() if not k.startswith("PROTEGE_") or k in keep}
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra or {})
    return env


def tail_of(path: Path) -> str:
    """The last lines of the log at ``path``, indented, for an error message; empty if none."""
    try:
        with path.open(errors="replace") as f:
            lines = deque(f, maxlen=_TAIL_LINES)
    except OSError:
        return ""
    body = "".join(f"    {line}" for line in lines).rstrip()
    return f"\n  last lines of {path}:\n{body}" if body else ""


class Children:
    """The demo's running children by name, with their logs."""

    def __init__(self, logs: Path, env: Mapping[str, str]) -> None:
        self._logs = logs
        self._env = dict(env)
        self._procs: dict[str, subprocess.Popen[bytes]] = {}
        logs.mkdir(parents=True, exist_ok=True)

    def log(self, name: str) -> Path:
        return self._logs / f"{name}.log"

    def start(self, name: str, module_args: Sequence[str]) -> None:
        """Start ``python -m <module_args>`` in the background as ``name``."""
        with self.log(name).open("ab") as out:
            self._procs[name] = subprocess.Popen(
                [sys.executable, "-m", *module_args], stdout=out, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL, env=self._env, start_new_session=True,
            )  # fmt: skip

    def run(self, name: str, module_args: Sequence[str], show: Callable[[str], None]) -> int:
        """Run ``python -m <module_args>`` to its end; every output line goes to its log and
        to ``show``. Returns its exit code."""
        proc = subprocess.Popen(
            [sys.executable, "-m", *module_args], stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=self._env,
            start_new_session=True,
        )  # fmt: skip
        self._procs[name] = proc
        assert proc.stdout is not None
        with proc.stdout, self.log(name).open("ab", buffering=0) as out:
            for raw in proc.stdout:
                out.write(raw)
                show(raw.decode(errors="replace").rstrip())
        code = proc.wait()
        del self._procs[name]
        return code

    def wait_ready(self, name: str, url: str, timeout_s: float) -> None:
        """Wait until ``url`` answers 200; a ``DemoError`` with the child's log tail if it
        exits first or stays silent past ``timeout_s``."""
        deadline = time.monotonic() + timeout_s
        while True:
            self.check(name)
            try:
                if httpx.get(url, timeout=2.0).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise DemoError(
                    f"{name} did not answer {url} within {timeout_s:.0f} s{self.tail(name)}"
                )
            time.sleep(0.2)

    def check(self, *names: str) -> None:
        """A ``DemoError`` if one of ``names`` (default: every child) has exited."""
        for name in names or tuple(self._procs):
            proc = self._procs.get(name)
            if proc is not None and proc.poll() is not None:
                raise DemoError(f"{name} exited with {proc.returncode}{self.tail(name)}")

    def tail(self, name: str) -> str:
        """The last lines of ``name``'s log, indented, for an error message."""
        return tail_of(self.log(name))

    def stop(self, name: str) -> int | None:
        """SIGTERM ``name`` and wait for it (SIGKILL after a grace period); its exit code."""
        proc = self._procs.get(name)
        if proc is None:
            return None
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        try:
            code = proc.wait(_STOP_WAIT_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            code = proc.wait()
        del self._procs[name]
        return code

    def stop_all(self) -> None:
        """Stop every child, the last started first; a second Ctrl-C kills the rest at once."""
        try:
            for name in reversed(list(self._procs)):
                self.stop(name)
        except KeyboardInterrupt:
            for proc in self._procs.values():
                proc.kill()
            raise
