"""The ``autopilot`` section of the shared config file::

    autopilot:
      interval_s: 60                # seconds between passes over the tasks
      lease_ttl_s: 120              # a dead autopilot's lease is taken over after this
      runner: local                 # local: a child process; kubernetes: a Job per run
      gateway_url: http://127.0.0.1:8080   # its admin API (token: rollouts.admin_token)
      metrics_port: 9103            # GET /metrics and /healthz; null: not served
      tasks:
        tickets:
          min_new_exchanges: 500    # usable exchanges since the champion's dataset
          min_interval_s: 21600     # no run sooner than this after the last one...
          drift_threshold: 0.2      # ...unless the live input drift is above this
          min_drift_exchanges: 50   # (and at least this many new exchanges exist)
          max_runs_per_day: 4       # runs started in any 24 hours
          base_model: smollm2
          train_args: [--set, epochs=2]
          champion_margin: 0.0      # offline: test scores >= the champion's + this

The admin token is the gateway's (``rollouts.admin_token``, ``PROTEGE_ADMIN_TOKEN``).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import ConfigDict, Field, SecretStr, field_validator

from core.keys import NAME
from core.settings import DEFAULT_STORE, Model, StoreUri, gather, validate

SERVICE_ACCOUNT = Path("/var/run/secrets/kubernetes.io/serviceaccount")


class TaskRules(Model):
    """When one task is retrained, and how."""

    min_new_exchanges: int = Field(default=500, ge=1)
    min_interval_s: float = Field(default=6 * 3600.0, ge=0)
    # Live input drift (max PSI/JS of any feature, as the gateway measures it) above which
    # the task is retrained without waiting for min_interval_s; None: drift never triggers.
    drift_threshold: float | None = Field(default=0.2, gt=0)
    min_drift_exchanges: int = Field(default=50, ge=1)
    max_runs_per_day: int = Field(default=4, ge=1)
    base_model: str = "smollm2"
    # Added to `protege train` (e.g. [--set, epochs=2], [--nproc, "2"]).
    train_args: tuple[str, ...] = ()
    champion_margin: float = Field(default=0.0, ge=-1, le=1)


class KubernetesConfig(Model):
    """Where Jobs are created, and the Job every run starts from (rendered by the chart)."""

    job_template: Path = Path("/etc/protege/autopilot/job.yaml")
    # The namespace Jobs go to; None: PROTEGE_NAMESPACE, else the pod's own namespace.
    namespace: str | None = None
    # The API server; None: the in-cluster address (KUBERNETES_SERVICE_HOST/PORT).
    api_url: str | None = None
    token_file: Path = SERVICE_ACCOUNT / "token"
    ca_file: Path = SERVICE_ACCOUNT / "ca.crt"
    # Seconds between two looks at a running Job.
    poll_s: float = Field(default=15.0, gt=0)


class AutopilotConfig(Model):
    interval_s: float = Field(default=60.0, gt=0)
    lease_ttl_s: float = Field(default=120.0, ge=3)
    runner: Literal["local", "kubernetes"] = "local"
    kubernetes: KubernetesConfig = KubernetesConfig()
    gateway_url: str = "http://127.0.0.1:8080"
    metrics_host: str = "0.0.0.0"  # scraped from outside the pod
    metrics_port: int | None = Field(default=9103, ge=1, le=65535)
    # Seconds a gateway replica's live view counts (it rewrites it every few seconds).
    live_max_age_s: float = Field(default=120.0, gt=0)
    # Seconds between two looks at a local run (its outcome in the store, its process).
    poll_s: float = Field(default=2.0, gt=0)
    # Local runs' directories (run_dir/<task>/<run-id>); the last keep_runs per task are kept.
    run_dir: Path = Path(".protege/autopilot")
    keep_runs: int = Field(default=3, ge=1)
    tasks: dict[str, TaskRules] = Field(default_factory=dict)

    @field_validator("tasks")
    @classmethod
    def _task_names(cls, tasks: dict[str, TaskRules]) -> dict[str, TaskRules]:
        import re

        for task in tasks:
            if not re.fullmatch(NAME, task):
                raise ValueError(f"{task!r} is not a task name")
        return tasks


class AdminSection(Model):
    """What the autopilot reads of the gateway's ``rollouts`` section: the admin token."""

    model_config = ConfigDict(extra="ignore", frozen=True)
    admin_token: SecretStr | None = None


class AutopilotSettings(Model):
    store: StoreUri = DEFAULT_STORE
    autopilot: AutopilotConfig = AutopilotConfig()
    rollouts: AdminSection = AdminSection()


def load_autopilot_settings(
    path: str | os.PathLike[str] | None = None,
    env: Mapping[str, str] | None = None,
    **overrides: Any,
) -> AutopilotSettings:
    """The autopilot's settings (``store``, ``autopilot``, the admin token) from the shared
    config file and the environment."""
    data = gather(path, env, overrides)
    wanted = {k: v for k, v in data.items() if k in ("store", "autopilot", "rollouts")}
    return validate(AutopilotSettings, wanted)
