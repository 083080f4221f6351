"""Every spool the gateway beside this sidecar writes, each with its two shippers.

One gateway process writes the spool directory itself. The workers of ``protege gateway
--workers N`` write one directory each, ``<spool>/worker-<i>/`` (``core.settings``), each with
its own ``feedback/``. The directories are looked for again before every pass, so a worker's
directory that appears later (a larger N after a restart) ships too, and so does what an
earlier run left in one.

Each directory has exactly one shipper of exchanges and one of feedback, run one after the
other, with scratch and quarantine directories of their own (``.work/worker-<i>/``,
``quarantine/worker-<i>/``): a segment is shipped by one shipper only, exactly as with one
gateway, and the part keys derive from segment ids, which are unique across writers.
"""

from __future__ import annotations

import asyncio
import shutil
import time
from pathlib import Path

from core.feedback import feedback_spool
from core.settings import writer_spools
from core.store import Store
from sidecar.config import SidecarSettings
from sidecar.metrics import SidecarMetrics
from sidecar.parts import FEEDBACK
from sidecar.ship import Backlog, Backoff, Shipper


class Spools:
    """The shippers of every writer's spool; one stopping event for all of them."""

    def __init__(
        self,
        settings: SidecarSettings,
        store: Store,
        metrics: SidecarMetrics,
        stopping: asyncio.Event | None = None,
    ) -> None:
        self.settings, self.store, self.metrics = settings, store, metrics
        cfg = settings.sidecar
        self._backoff = Backoff(cfg.retry_base_s, cfg.retry_max_s)
        self.stopping = stopping if stopping is not None else asyncio.Event()
        self._pairs: dict[Path, tuple[Shipper, Shipper]] = {}

    def discover(self) -> list[Shipper]:
        """Every shipper, exchanges then feedback for each directory, the spool's first; new
        worker directories get theirs."""
        for directory in writer_spools(self.settings.spool.dir):
            if directory not in self._pairs:
                self._pairs[directory] = self._pair(directory)
        return [shipper for pair in self._pairs.values() for shipper in pair]

    async def shippers(self) -> list[Shipper]:
        return await asyncio.to_thread(self.discover)

    def _pair(self, directory: Path) -> tuple[Shipper, Shipper]:
        s = self.settings
        below = directory.relative_to(s.spool.dir)  # "." for the spool itself
        work, quarantine = s.workdir / below, s.quarantine / below
        exchanges = Shipper(directory, self.store, work, quarantine, self.metrics, self._backoff)
        feedback = Shipper(
            feedback_spool(directory), self.store, work / "feedback", quarantine / "feedback",
            self.metrics, self._backoff, FEEDBACK,
        )  # fmt: skip
        exchanges.stopping = feedback.stopping = self.stopping
        return exchanges, feedback

    def clean_workdir(self) -> None:
        """Remove what a crashed run left in the scratch directories (it is all re-made)."""
        shutil.rmtree(self.settings.workdir, ignore_errors=True)

    def observe_backlog(self) -> None:
        """Export the exchanges' backlog, summed over every writer's spool."""
        total = Backlog()
        for exchanges, _ in list(self._pairs.values()):
            total += exchanges.backlog()
        total.observe(self.metrics, time.time())

    def writers_alive(self) -> bool:
        """Whether a live writer still holds an open segment in any spool."""
        return any(shipper.writers_alive() for shipper in self.discover())
