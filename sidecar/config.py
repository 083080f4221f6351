"""The sidecar's settings, read from the same file and environment as the gateway's.

The sidecar takes the shared ``spool``, ``store`` and ``logging`` settings and its own
``sidecar`` section; the gateway's other sections are not its concern.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import Field

from core.feedback import feedback_spool
from core.settings import (
    DEFAULT_STORE,
    LoggingConfig,
    Model,
    SpoolConfig,
    StoreUri,
    gather,
    validate,
)


class CompactionConfig(Model):
    enabled: bool = True
    # How often to look for closed partitions with several parts.
    interval_s: float = Field(default=600.0, gt=0)
    # A partition is closed this long after its hour ends (late segments still arrive).
    grace_s: float = Field(default=3600.0, ge=0)


class SidecarConfig(Model):
    """The ``sidecar`` section."""

    # Seconds between looks at the spool for newly sealed segments.
    poll_interval_s: float = Field(default=1.0, gt=0)
    # Backoff between failed uploads: doubles from base to max, with jitter. Uploads are
    # retried until they succeed; a segment leaves the spool only once stored.
    retry_base_s: float = Field(default=0.5, gt=0)
    retry_max_s: float = Field(default=30.0, gt=0)
    # With --once, give up (exit 1, segments kept) after this many failed attempts in a row.
    once_max_attempts: int = Field(default=5, ge=1)
    # On SIGTERM, wait this long for the gateway to seal its open segment, then ship it.
    shutdown_wait_s: float = Field(default=20.0, ge=0)
    metrics_host: str = "127.0.0.1"
    metrics_port: int = Field(default=8081, ge=0, le=65535)
    compaction: CompactionConfig = CompactionConfig()


class SidecarSettings(Model):
    spool: SpoolConfig = SpoolConfig()
    store: StoreUri = DEFAULT_STORE
    logging: LoggingConfig = LoggingConfig()
    sidecar: SidecarConfig = SidecarConfig()

    @property
    def workdir(self) -> Path:
        """Scratch space for Parquet parts on their way to the store."""
        return Path(self.spool.dir) / ".work"

    @property
    def quarantine(self) -> Path:
        """Where damaged segments are moved, for a person to look at."""
        return Path(self.spool.dir) / "quarantine"

    @property
    def feedback_spool(self) -> Path:
        """The gateway's feedback spool (``core.feedback``), shipped beside the exchanges."""
        return feedback_spool(self.spool.dir)


_SECTIONS = ("spool", "store", "logging", "sidecar")


def load_sidecar_settings(
    path: str | os.PathLike[str] | None = None,
    env: Mapping[str, str] | None = None,
    **overrides: Any,
) -> SidecarSettings:
    """The sidecar's settings from the shared YAML file, the environment and ``overrides``."""
    data = gather(path, env, overrides)
    return validate(SidecarSettings, {k: v for k, v in data.items() if k in _SECTIONS})
