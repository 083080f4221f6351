"""Where a run trains. Either way it is ``protege train --task T --run-id R [--champion V]``,
which writes its outcome to the store (``core.runs``) whatever happens; the runner only
starts it, says whether it ended without one, and stops it.

``LocalRunner`` starts it as a child process of the autopilot (CPU, or the machine's GPUs),
bound to its parent's life: if the autopilot dies, the kernel ends the run too, so a run no
autopilot watches never publishes behind the next one's back. ``trainer.autopilot.kube`` has
the Kubernetes runner.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import shutil
import signal
import sys
from pathlib import Path
from typing import Final, Protocol

import structlog

from core.errors import ProtegeError
from trainer.autopilot.config import TaskRules

log = structlog.get_logger("autopilot")

_PR_SET_PDEATHSIG: Final = 1
# How a run ended that no runner of this process started: it died with its autopilot.
GONE: Final = "its autopilot stopped, and the run with it"
_STOP_WAIT_S: Final = 30.0


class RunnerError(ProtegeError):
    """A run could not be started, looked at or stopped (the message says why)."""


class Runner(Protocol):
    name: str

    async def launch(
        self, task: str, run_id: str, champion: str | None, rules: TaskRules
    ) -> None: ...

    async def ended(self, task: str, run_id: str) -> str | None:
        """None while the run goes on; once it is over, how it ended (for a run that left no
        outcome in the store, that is its failure's reason)."""
        ...

    async def stop(self, task: str, run_id: str) -> None: ...

    async def aclose(self) -> None: ...


def train_args(task: str, run_id: str, champion: str | None, rules: TaskRules) -> list[str]:
    """The ``protege train`` arguments of one run (after any the runner adds)."""
    args = ["--task", task, "--run-id", run_id, "--base-model", rules.base_model]
    if champion is not None:
        args += ["--champion", champion, "--champion-margin", str(rules.champion_margin)]
    return [*args, *rules.train_args]


def _die_with_parent() -> None:
    """In the child, before exec: SIGKILL when the parent (the autopilot) dies."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


class LocalRunner:
    """Runs train as a child process; its output goes to ``<run_dir>/<task>/<run-id>/train.log``."""

    name = "local"

    def __init__(
        self, run_dir: Path, config: str | None, store: str, keep_runs: int = 3
    ) -> None:
        self._run_dir = run_dir
        self._config = config
        self._store = store
        self._keep = keep_runs
        self._procs: dict[str, asyncio.subprocess.Process] = {}

    def folder(self, task: str, run_id: str) -> Path:
        return self._run_dir / task / run_id

    async def launch(self, task: str, run_id: str, champion: str | None, rules: TaskRules) -> None:
        folder = self.folder(task, run_id)
        await asyncio.to_thread(folder.mkdir, parents=True, exist_ok=True)
        argv = [sys.executable, "-m", "protege.cli", "train", "--out", str(folder / "run")]
        argv += ["--store", self._store] + (["--config", self._config] if self._config else [])
        argv += train_args(task, run_id, champion, rules)
        with (folder / "train.log").open("ab") as out:
            proc = await asyncio.create_subprocess_exec(
                *argv, stdout=out, stderr=out, stdin=asyncio.subprocess.DEVNULL,
                preexec_fn=_die_with_parent,
            )  # fmt: skip
        self._procs[run_id] = proc
        log.info("run started", task=task, run_id=run_id, pid=proc.pid, folder=str(folder))
        await asyncio.to_thread(self._prune, task, run_id)

    async def ended(self, task: str, run_id: str) -> str | None:
        proc = self._procs.get(run_id)
        if proc is None:  # started by an autopilot that died: the run died with it
            return GONE
        if proc.returncode is None:
            return None
        self._procs.pop(run_id, None)
        tail = await asyncio.to_thread(_tail, self.folder(task, run_id) / "train.log")
        return f"protege train exited with {proc.returncode}" + (f": {tail}" if tail else "")

    async def stop(self, task: str, run_id: str) -> None:
        proc = self._procs.pop(run_id, None)
        if proc is None or proc.returncode is not None:
            return
        proc.terminate()
        try:
            await asyncio.wait_for(proc.wait(), _STOP_WAIT_S)
        except TimeoutError:
            proc.kill()
            await proc.wait()

    async def aclose(self) -> None:
        for run_id in list(self._procs):
            await self.stop("", run_id)

    def _prune(self, task: str, keep: str) -> None:
        """Remove this task's oldest run folders beyond ``keep_runs`` (never ``keep``)."""
        runs = sorted(p for p in (self._run_dir / task).iterdir() if p.is_dir())
        for old in runs[: max(0, len(runs) - self._keep)]:
            if old.name != keep and old.name not in self._procs:
                shutil.rmtree(old, ignore_errors=True)


def _tail(path: Path, chars: int = 300) -> str:
    """The last line of a log that says something, for a failure's reason."""
    with contextlib.suppress(OSError):
        lines = [ln.strip() for ln in path.read_text(errors="replace").splitlines() if ln.strip()]
        if lines:
            return lines[-1][-chars:]
    return ""
