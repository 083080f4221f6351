"""One scenario's world: a directory, a config file, the gateway and sidecar processes.

The gateway (``protege gateway``) runs pinned to the first core, the sidecar (``protege
sidecar``) and moto's S3 server to the second, each in its own process group with its output in
``<dir>/logs``. Both read the same YAML file (written by ``write_config``: the scenario's
sections over small defaults that make segments seal and ship within a second or so);
``PROTEGE_*`` variables are removed from their environment so the file decides. Every child is
stopped when the workspace closes, however the scenario ends.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import httpx
import procs
import yaml
from bootstrap import ROOT

Child = subprocess.Popen[bytes]


def merge(base: dict[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in over.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out


class Workspace:
    def __init__(self, root: Path, name: str, cores: tuple[int, int]) -> None:
        self.dir = root / name
        self.logs = self.dir / "logs"
        self.logs.mkdir(parents=True)
        self.spool = self.dir / "spool"
        self.store_uri = f"file://{self.dir / 'store'}"
        self.cores = cores
        self.gateway_port = procs.free_port()
        self.sidecar_port = procs.free_port()
        self.aws: dict[str, str] = {}  # AWS settings for the children (an S3 store)
        self.children: list[Child] = []
        self._logs: dict[int, Path] = {}  # pid -> its log
        self._starts = 0

    @property
    def gateway_url(self) -> str:
        return f"http://{procs.HOST}:{self.gateway_port}"

    @property
    def sidecar_url(self) -> str:
        return f"http://{procs.HOST}:{self.sidecar_port}"

    def write_config(self, teacher_url: str, name: str = "protege.yaml", **sections: Any) -> Path:
        base: dict[str, Any] = {
            "teacher": {"base_url": teacher_url, "api_key": "teacher-key"},
            "spool": {
                "dir": str(self.spool),
                "segment_max_bytes": 256 * 1024,
                "segment_max_age_s": 1.0,
            },
            "store": self.store_uri,
            "logging": {"level": "info"},
            "sidecar": {
                "poll_interval_s": 0.2,
                "retry_base_s": 0.2,
                "retry_max_s": 2.0,
                "shutdown_wait_s": 5.0,
                "metrics_host": procs.HOST,
                "metrics_port": self.sidecar_port,
                "compaction": {"enabled": False},
            },
        }
        path = self.dir / name
        path.write_text(yaml.safe_dump(merge(base, sections)))
        return path

    def _env(self) -> dict[str, str]:
        env = procs.local_env({**self.aws, "PYTHONUNBUFFERED": "1"})
        return {k: v for k, v in env.items() if not k.startswith("PROTEGE_")}

    def new_log(self, what: str) -> Path:
        self._starts += 1
        return self.logs / f"{self._starts:02d}-{what}.log"

    def _start(self, what: str, argv: list[str], core: int) -> Child:
        log = self.new_log(what)
        child = procs.start(argv, core, log, self._env(), cwd=ROOT)
        self.children.append(child)
        self._logs[child.pid] = log
        return child

    def log_of(self, child: Child) -> Path:
        return self._logs[child.pid]

    async def start_gateway(self, config: Path, workers: int = 1) -> Child:
        """``protege gateway``: one process, or ``workers`` under one parent."""
        argv = [sys.executable, "-m", "protege.cli", "gateway", "--config", str(config)]
        argv += ["--host", procs.HOST, "--port", str(self.gateway_port)]
        argv += ["--workers", str(workers)]
        child = self._start("gateway", argv, self.cores[0])
        await asyncio.to_thread(
            procs.wait_healthy, child, self.gateway_port, "/healthz", self.log_of(child)
        )
        return child

    async def start_sidecar(self, config: Path) -> Child:
        argv = [sys.executable, "-m", "protege.cli", "sidecar", "--config", str(config)]
        child = self._start("sidecar", argv, self.cores[1])
        await asyncio.to_thread(
            procs.wait_healthy, child, self.sidecar_port, "/healthz", self.log_of(child)
        )
        return child

    async def start_pair(self, teacher_url: str) -> tuple[Path, Child, Child]:
        """A config for ``teacher_url`` (the defaults), then the gateway and the sidecar on it."""
        config = self.write_config(teacher_url)
        return config, await self.start_gateway(config), await self.start_sidecar(config)

    async def kill(self, child: Child) -> None:
        """SIGKILL, as a crash would."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(child.pid, signal.SIGKILL)
        await asyncio.to_thread(child.wait, 10)

    async def stop(self, child: Child, timeout_s: float = 40) -> int | None:
        """SIGTERM and wait for a clean exit; the exit code (None if it had to be killed)."""
        if child.poll() is None:
            child.send_signal(signal.SIGTERM)
        try:
            return await asyncio.to_thread(child.wait, timeout_s)
        except subprocess.TimeoutExpired:
            await self.kill(child)
            return None

    async def scrape(self, url: str) -> str:
        """A /metrics page ('' if it cannot be read)."""
        try:
            async with httpx.AsyncClient(timeout=5, trust_env=False) as client:
                resp = await client.get(url + "/metrics")
        except httpx.HTTPError:
            return ""
        return resp.text if resp.status_code == 200 else ""

    def log_lines(self, needle: str) -> int:
        """Lines containing ``needle`` in every child's log."""
        total = 0
        for path in self.logs.iterdir():
            total += sum(needle in line for line in path.read_text(errors="replace").splitlines())
        return total

    def close(self) -> None:
        for child in reversed(self.children):
            procs.stop(child, grace_s=10)
