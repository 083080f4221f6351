"""``protege gateway --workers N``: N gateway processes serving one port, under one parent.

One gateway process uses one core. Each worker is a whole gateway (``protege gateway`` with a
worker index) in a process of its own, with its own listening socket bound with
``SO_REUSEPORT`` to the same address: the kernel spreads new connections over the listening
sockets, and a worker that dies takes only its own socket (and the connections it held) with
it. The parent binds the address too, without listening: it fails fast when the port is taken,
resolves port 0 once for all, and keeps the port while a worker restarts.

What each worker has of its own:

- its spool, ``<spool.dir>/worker-<i>/`` (and ``.../worker-<i>/feedback/``), with the spool
  cap divided between the workers: no two writers ever share a segment, and the sidecar ships
  every worker's directory (``sidecar.spools``);
- its replica name in the live views, ``<pod or host>-w<i>``, so the autopilot sees each;
- its drift monitor, guardrail and duel windows, like a replica's;
- its share of the caps on background calls (shadow, challenge and judge rates, the judge's
  concurrency and budget): 1/N of each (``gateway.app``), so that N workers spend what one
  process would.

What they share: the rollouts, through the store (each worker reads it every
``rollouts.sync_interval_s``, so an admin change answered by one worker is in force in every
worker within that interval), and the metrics, in prometheus_client's multiprocess mode
(``PROMETHEUS_MULTIPROC_DIR``, ``<spool.dir>/.metrics/`` unless set; wiped at each start):
``/metrics`` on any worker shows the aggregate (``gateway.metrics``).

The parent restarts a worker that dies, after a backoff that doubles while restarted workers
keep dying young (``restart_delay``); each restart is logged, and counted by the new worker in
``protege_gateway_worker_restarts_total``. On SIGTERM or SIGINT it sends SIGTERM to every
worker (each seals its spool segments as a single gateway does) and exits once all are done.
"""

from __future__ import annotations

import contextlib
import ctypes
import math
import os
import re
import select
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any, Final

import structlog

from core.settings import worker_spool
from gateway.config import GatewaySettings

log = structlog.get_logger("gateway")

# Every response of a worker names it: "<index>:<pid>".
# How every gateway process serves: uvloop and httptools, no access log, no server header.
SERVING: Final[dict[str, Any]] = {
    "loop": "uvloop", "http": "httptools", "access_log": False, "server_header": False,
    "proxy_headers": False, "log_level": "warning", "timeout_graceful_shutdown": 30,
}  # fmt: skip
WORKER_HEADER: Final = "x-protege-worker"
METRICS_DIR_ENV: Final = "PROMETHEUS_MULTIPROC_DIR"
_PARENT_ENV: Final = "PROTEGE_GATEWAY_SUPERVISOR"  # the parent's pid, for die_with_parent
_MIN_SPOOL_BYTES: Final = 64 * 1024  # SpoolConfig.max_bytes's own floor
_RESTART_BASE_S: Final = 0.5
_RESTART_MAX_S: Final = 30.0
_STABLE_S: Final = 30.0  # a worker that lived this long died of something new: no backoff
_IDLE_WAKE_S: Final = 5.0  # the parent looks at its workers at least this often
_STOP_WAIT_S: Final = 75.0  # uvicorn's 30 s for connections, then the spools' close


def available_cores() -> int:
    """Cores this process may run on: its CPU affinity, capped by a cgroup (v2) CPU quota."""
    cores = len(os.sched_getaffinity(0))
    with contextlib.suppress(OSError, ValueError):
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2]
        if quota != "max":
            cores = min(cores, max(1, math.ceil(int(quota) / int(period))))
    return cores


def restart_delay(failures: int) -> float:
    """Seconds before restarting a worker, after ``failures`` workers of its slot in a row
    died young: 0.5 s, doubling, at most 30 s."""
    return float(min(_RESTART_MAX_S, _RESTART_BASE_S * 2 ** min(failures, 16)))


def replica_name(index: int, env: Mapping[str, str] = os.environ) -> str:
    """Worker ``index``'s name in the live views: ``<pod or host>-w<index>``."""
    base = env.get("PROTEGE_POD_NAME") or socket.gethostname()
    base = re.sub(r"[^A-Za-z0-9_.-]", "-", base).lstrip("_.-") or "gateway"
    return f"{base}-w{index}"


def worker_settings(settings: GatewaySettings, index: int, count: int) -> GatewaySettings:
    """The settings of worker ``index`` of ``count``: its own spool, its share of the cap."""
    spool = settings.spool.model_copy(
        update={
            "dir": worker_spool(settings.spool.dir, index),
            "max_bytes": max(_MIN_SPOOL_BYTES, settings.spool.max_bytes // count),
        }
    )
    return settings.model_copy(update={"spool": spool})


def reuseport_socket(host: str, port: int) -> socket.socket:
    """A TCP socket bound to ``host:port`` with SO_REUSEPORT (not listening yet)."""
    family, kind, proto, _, address = socket.getaddrinfo(
        host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind(address)
    except OSError:
        sock.close()
        raise
    sock.set_inheritable(False)
    return sock


def metrics_dir(settings: GatewaySettings, env: Mapping[str, str] = os.environ) -> Path:
    """This run's multiprocess metrics directory, emptied of an earlier run's values."""
    directory = Path(env.get(METRICS_DIR_ENV) or Path(settings.spool.dir) / ".metrics")
    directory.mkdir(parents=True, exist_ok=True)
    for stale in directory.glob("*.db"):
        stale.unlink(missing_ok=True)
    return directory


def die_with_parent(parent: int) -> None:
    """Ask Linux to send this worker SIGTERM when its parent dies (a kill -9 of the parent
    leaves no worker serving unsupervised)."""
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    if os.getppid() != parent:  # the parent died before the request took effect
        os.kill(os.getpid(), signal.SIGTERM)


@dataclass
class _Slot:
    """One worker index and the process serving it now."""

    index: int
    proc: subprocess.Popen[bytes] | None = None
    started_at: float = 0.0
    failures: int = 0  # workers of this slot in a row that died young
    restart_at: float | None = None
    restarts: int = 0


class Supervisor:
    """Starts ``count`` workers, restarts those that die, stops them all on a signal.

    ``command(index, restarted)`` is the argv of worker ``index``'s process.
    """

    def __init__(
        self,
        command: Callable[[int, bool], Sequence[str]],
        count: int,
        env: Mapping[str, str],
        metrics: Path,
    ) -> None:
        self._command, self._env, self._metrics = command, dict(env), metrics
        self._slots = [_Slot(i) for i in range(count)]
        self._stopping = False

    def run(self) -> int:
        """Supervise until SIGTERM/SIGINT; 0 when every worker then stopped cleanly."""

        def stop(_signum: int, _frame: FrameType | None) -> None:
            self._stopping = True

        # Asleep until a signal comes (a worker's SIGCHLD, SIGTERM, SIGINT: each writes a byte
        # to the wake-up pipe) or a restart is due: an idle parent costs no CPU.
        wake_r, wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        handlers = {signal.SIGTERM: stop, signal.SIGINT: stop, signal.SIGCHLD: _noticed}
        previous = {s: signal.signal(s, h) for s, h in handlers.items()}
        previous_fd = signal.set_wakeup_fd(wake_w, warn_on_full_buffer=False)
        try:
            for slot in self._slots:
                self._start(slot, restarted=False)
            log.info("gateway workers started", workers=len(self._slots),
                     pids=[s.proc.pid for s in self._slots if s.proc])  # fmt: skip
            while not self._stopping:
                now = time.monotonic()
                self._tick(now)
                select.select([wake_r], [], [], self._idle_s(now))
                with contextlib.suppress(BlockingIOError):
                    os.read(wake_r, 4096)
            return self._stop_all()
        finally:
            signal.set_wakeup_fd(previous_fd)
            for s, handler in previous.items():
                signal.signal(s, handler)
            os.close(wake_r)
            os.close(wake_w)

    @property
    def pids(self) -> list[int | None]:
        return [s.proc.pid if s.proc else None for s in self._slots]

    def _idle_s(self, now: float) -> float:
        """Seconds the parent may sleep: until the next restart that is due, at most
        ``_IDLE_WAKE_S`` (a worker's death also wakes it, by SIGCHLD)."""
        due = [s.restart_at - now for s in self._slots if s.restart_at is not None]
        return max(0.0, min([_IDLE_WAKE_S, *due]))

    def _start(self, slot: _Slot, restarted: bool) -> None:
        argv = list(self._command(slot.index, restarted))
        slot.proc = subprocess.Popen(argv, env=self._env)
        slot.started_at, slot.restart_at = time.monotonic(), None

    def _tick(self, now: float) -> None:
        for slot in self._slots:
            if slot.proc is not None and slot.proc.poll() is not None:
                self._died(slot, now)
            if slot.proc is None and slot.restart_at is not None and now >= slot.restart_at:
                slot.restarts += 1
                self._start(slot, restarted=True)
                pid = slot.proc.pid if slot.proc else None
                log.info("gateway worker restarted", worker=slot.index, pid=pid,
                         restarts=slot.restarts)  # fmt: skip

    def _died(self, slot: _Slot, now: float) -> None:
        proc, slot.proc = slot.proc, None
        assert proc is not None
        self._forget(proc.pid)
        if now - slot.started_at >= _STABLE_S:
            slot.failures = 0
        delay = restart_delay(slot.failures)
        slot.failures += 1
        slot.restart_at = now + delay
        log.error("gateway worker died; restarting it", worker=slot.index, pid=proc.pid,
                  code=proc.returncode, restart_in_s=delay, restarts=slot.restarts)  # fmt: skip

    def _stop_all(self) -> int:
        running = [s.proc for s in self._slots if s.proc is not None and s.proc.poll() is None]
        log.info("stopping gateway workers", workers=len(running))
        for proc in running:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + _STOP_WAIT_S
        code = 0
        for slot in self._slots:
            if slot.proc is None:
                continue
            rc = self._wait(slot.index, slot.proc, deadline)
            if rc not in (0, -signal.SIGTERM, -signal.SIGINT):
                log.error("gateway worker exited badly", worker=slot.index, code=rc)
                code = 1
        log.info("gateway workers stopped")
        return code

    def _wait(self, index: int, proc: subprocess.Popen[bytes], deadline: float) -> int:
        try:
            rc = proc.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            log.error("gateway worker did not stop in time; killing it", worker=index)
            proc.kill()
            rc = proc.wait()
        self._forget(proc.pid)
        return rc

    def _forget(self, pid: int) -> None:
        """Drop a dead worker's live gauges from the aggregate (its counters stay)."""
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(pid, str(self._metrics))  # type: ignore[no-untyped-call]


def _noticed(_signum: int, _frame: FrameType | None) -> None:
    """SIGCHLD: nothing to do here; the wake-up pipe woke the parent, which polls its workers."""


def run_workers(settings: GatewaySettings, count: int, config: str | None) -> int:
    """The parent of ``count`` workers serving ``settings.server``'s address."""
    server = settings.server
    try:
        guard = reuseport_socket(server.host, server.port)
    except OSError as exc:
        print(f"protege: cannot listen on {server.host}:{server.port}: {exc}", file=sys.stderr)
        return 1
    with guard:
        port = guard.getsockname()[1]
        metrics = metrics_dir(settings)

        def command(index: int, restarted: bool) -> list[str]:
            argv = [sys.executable, "-m", "protege.cli", "gateway"]
            argv += ["--config", config] if config else []
            argv += ["--host", server.host, "--port", str(port), "--workers", str(count)]
            argv += ["--worker", str(index)] + (["--worker-restart"] if restarted else [])
            return argv

        env = {**os.environ, METRICS_DIR_ENV: str(metrics), _PARENT_ENV: str(os.getpid())}
        return Supervisor(command, count, env, metrics).run()


def serve_worker(settings: GatewaySettings, index: int, count: int, restarted: bool) -> int:
    """Worker ``index`` of ``count``: a gateway on its own SO_REUSEPORT socket, until SIGTERM."""
    import uvicorn

    from gateway.app import create_app
    from gateway.heap import settle
    from gateway.metrics import Metrics

    die_with_parent(int(os.environ.get(_PARENT_ENV) or os.getppid()))
    metrics = Metrics()
    if restarted:
        metrics.worker_restarts.inc()
    app = create_app(worker_settings(settings, index, count), metrics, replica_name(index))
    settle()
    sock = reuseport_socket(settings.server.host, settings.server.port)
    config = uvicorn.Config(app, **SERVING, headers=[(WORKER_HEADER, f"{index}:{os.getpid()}")])
    uvicorn.Server(config).run(sockets=[sock])
    return 0
