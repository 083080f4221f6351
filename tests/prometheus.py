"""A real Prometheus (the Debian package's binary) on a loopback port, for tests.

``Prometheus`` writes its config, starts the server with its own TSDB under a temporary
directory, waits until it is ready, and answers PromQL through the HTTP API. Every wait is
bounded. ``promtool`` runs the rules checker and unit tests. A missing binary fails the test:
``make test`` installs both.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Self

import httpx
import yaml

from tests.s3_server import free_port


def binary(name: str) -> str:
    """The path of ``name`` (prometheus, promtool); an error naming the package when absent."""
    path = shutil.which(name)
    if path is None:
        raise RuntimeError(f"{name} not found: install Debian's prometheus package (make test)")
    return path


def promtool(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """Run ``promtool args``; the result, whatever its exit code."""
    return subprocess.run(
        [binary("promtool"), *args], capture_output=True, text=True, timeout=timeout, check=False
    )


def wait_until(check: Callable[[], Any], timeout: float, interval: float = 0.25) -> Any:
    """``check()``'s first truthy result within ``timeout`` seconds, else None."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() >= deadline:
            return None
        time.sleep(interval)


class PromQLError(Exception):
    """Prometheus refused a query (bad syntax, bad types): its error type and message."""


class Prometheus:
    """Scrapes ``targets`` (job -> ["127.0.0.1:port", ...]) every ``interval_s``, evaluates
    ``rule_files`` as often."""

    def __init__(
        self,
        workdir: Path,
        targets: dict[str, Sequence[str]],
        rule_files: Sequence[Path] = (),
        interval_s: float = 1.0,
    ) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._workdir = workdir
        self._log = workdir / "prometheus.log"
        interval = f"{int(interval_s * 1000)}ms"
        self.config = {
            "global": {"scrape_interval": interval, "evaluation_interval": interval},
            "rule_files": [str(p) for p in rule_files],
            "scrape_configs": [
                {"job_name": job, "static_configs": [{"targets": list(addrs)}]}
                for job, addrs in targets.items()
            ],
        }
        self._proc: subprocess.Popen[bytes] | None = None
        self._http = httpx.Client(base_url=self.url, timeout=10)

    def start(self, timeout: float = 30) -> Self:
        config = self._workdir / "prometheus.yml"
        config.write_text(yaml.safe_dump(self.config), encoding="utf-8")
        with self._log.open("wb") as log:
            self._proc = subprocess.Popen(
                [
                    binary("prometheus"),
                    f"--config.file={config}",
                    f"--storage.tsdb.path={self._workdir / 'tsdb'}",
                    f"--web.listen-address=127.0.0.1:{self.port}",
                    "--storage.tsdb.retention.time=1h",
                    "--log.level=warn",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        if not wait_until(self._ready, timeout):
            self.stop()
            raise RuntimeError(f"prometheus did not become ready:\n{self.log_tail()}")
        return self

    def _ready(self) -> bool:
        if self._proc is not None and self._proc.poll() is not None:
            raise RuntimeError(f"prometheus exited:\n{self.log_tail()}")
        try:
            return self._http.get("/-/ready").status_code == 200
        except httpx.TransportError:
            return False

    def stop(self) -> None:
        self._http.close()
        if self._proc is None or self._proc.poll() is not None:
            return
        self._proc.terminate()
        try:
            self._proc.wait(15)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait(5)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def log_tail(self, lines: int = 30) -> str:
        text = self._log.read_text(encoding="utf-8", errors="replace") if self._log.exists() else ""
        return "\n".join(text.splitlines()[-lines:])

    def _api(self, path: str, **params: str) -> Any:
        resp = self._http.get(f"/api/v1/{path}", params=params)
        body = resp.json()
        if body.get("status") != "success":
            raise PromQLError(f"{body.get('errorType')}: {body.get('error')}")
        return body["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        """The instant vector (or scalar, as one sample) ``expr`` evaluates to now."""
        data = self._api("query", query=expr)
        if data["resultType"] in ("scalar", "string"):
            return [{"metric": {}, "value": data["result"]}]
        result: list[dict[str, Any]] = data["result"]
        return result

    def value(self, expr: str) -> float | None:
        """The value of the first sample of ``expr``, or None when it has none."""
        result = self.query(expr)
        return float(result[0]["value"][1]) if result else None

    def scraped(self, timeout: float = 30) -> None:
        """Waits until every target has been scraped since this call, so that what they served
        before it is stored; an error naming the log when that takes over ``timeout`` seconds."""
        since = time.time()
        if not wait_until(lambda: (self.value("min(timestamp(up))") or 0) > since, timeout):
            raise RuntimeError(f"targets not scraped within {timeout} s:\n{self.log_tail()}")

    def alerts(self) -> list[dict[str, Any]]:
        """Active alerts (pending and firing) with their labels and state."""
        alerts: list[dict[str, Any]] = self._api("alerts")["alerts"]
        return alerts

    def firing(self, name: str) -> list[dict[str, Any]]:
        return [
            a
            for a in self.alerts()
            if a["labels"].get("alertname") == name and a["state"] == "firing"
        ]

    def targets_up(self) -> bool:
        """Whether every scrape target answered its last scrape."""
        active = self._api("targets")["activeTargets"]
        return bool(active) and all(t["health"] == "up" for t in active)
