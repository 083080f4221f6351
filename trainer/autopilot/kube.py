"""Runs as Kubernetes Jobs, created through the API with the autopilot's ServiceAccount.

The chart renders the Job every run starts from (``autopilot.job_template``: the trainer's pod
spec, GPUs, volumes, resources — the same templates as its CronJobs); ``job_for`` fills in only
what is per run: the name, the task and run labels, and the run's ``protege train`` arguments.
The autopilot needs no more than create/get/delete on Jobs in its namespace. A Job's name
derives from its run, so an autopilot that restarts finds the Job of the run it was watching
and carries on waiting for it.
"""

from __future__ import annotations

import copy
import os
import re
import ssl
from pathlib import Path
from typing import Any, Final

import httpx
import structlog
import yaml

from core.errors import ConfigError
from trainer.autopilot.config import KubernetesConfig, TaskRules
from trainer.autopilot.runners import RunnerError, train_args

log = structlog.get_logger("autopilot")

_NAME_MAX: Final = 63  # a Job's name becomes a label value (job-name) on its pods
_LABEL: Final = re.compile(r"[^A-Za-z0-9_.-]")


class KubernetesError(RunnerError):
    """The API server refused a request, or could not be reached."""


def job_name(template: dict[str, Any], task: str, run_id: str) -> str:
    """``<template's name>-<task>-<run>``, a DNS label of at most 63 characters."""
    stem = str(template.get("metadata", {}).get("name") or "protege-autopilot-run")
    slug = re.sub(r"[^a-z0-9-]", "-", task.lower()).strip("-")
    tail = f"-{run_id[-10:].lower()}"
    head = f"{stem}-{slug}"[: _NAME_MAX - len(tail)].rstrip("-")
    return head + tail


def job_for(
    template: dict[str, Any], task: str, run_id: str, champion: str | None, rules: TaskRules
) -> dict[str, Any]:
    """The Job of one run: the chart's template, named and labelled for the run, its trainer
    container given the run's arguments."""
    job = copy.deepcopy(template)
    if job.get("kind") != "Job" or not job.get("spec", {}).get("template", {}).get("spec"):
        raise ConfigError("config: autopilot.kubernetes.job_template is not a batch/v1 Job")
    labels = {"protege/task": _LABEL.sub("-", task)[:63], "protege/run": run_id}
    meta = job.setdefault("metadata", {})
    meta["name"] = job_name(template, task, run_id)
    meta.setdefault("labels", {}).update(labels)
    pod = job["spec"]["template"]
    pod.setdefault("metadata", {}).setdefault("labels", {}).update(labels)
    container = pod["spec"]["containers"][0]
    container["args"] = [*container.get("args", []), *train_args(task, run_id, champion, rules)]
    return job


def ending(job: dict[str, Any]) -> str | None:
    """None while a Job runs; how it ended once it has (``complete``, or why it failed)."""
    for condition in job.get("status", {}).get("conditions") or ():
        if condition.get("status") != "True":
            continue
        if condition.get("type") == "Complete":
            return "complete"
        if condition.get("type") == "Failed":
            reason = condition.get("reason") or "Failed"
            message = condition.get("message")
            return f"Job failed: {reason}" + (f" ({message})" if message else "")
    return None


class KubernetesRunner:
    name = "kubernetes"

    def __init__(
        self, http: httpx.AsyncClient, namespace: str, template: dict[str, Any]
    ) -> None:
        self._http = http
        self._namespace = namespace
        self._template = template

    @classmethod
    def from_config(cls, cfg: KubernetesConfig) -> KubernetesRunner:
        """In-cluster: the API server, token and CA of the pod's ServiceAccount."""
        try:
            template = yaml.safe_load(cfg.job_template.read_text())
        except (OSError, yaml.YAMLError) as exc:
            raise ConfigError(f"config: autopilot.kubernetes.job_template: {exc}") from exc
        namespace = cfg.namespace or os.environ.get("PROTEGE_NAMESPACE") or _own_namespace(cfg)
        url = cfg.api_url
        if url is None:
            host, port = os.environ.get("KUBERNETES_SERVICE_HOST"), os.environ.get(
                "KUBERNETES_SERVICE_PORT", "443"
            )
            if not host:
                raise ConfigError(
                    "config: autopilot.kubernetes.api_url is required outside a cluster"
                )
            url = f"https://{host}:{port}"
        verify: ssl.SSLContext | bool = True
        if cfg.ca_file.is_file():
            verify = ssl.create_default_context(cafile=str(cfg.ca_file))
        auth = _TokenAuth(cfg.token_file)
        http = httpx.AsyncClient(base_url=url, verify=verify, auth=auth, timeout=30.0)
        return cls(http, namespace, template)

    @property
    def _jobs(self) -> str:
        return f"/apis/batch/v1/namespaces/{self._namespace}/jobs"

    async def launch(self, task: str, run_id: str, champion: str | None, rules: TaskRules) -> None:
        job = job_for(self._template, task, run_id, champion, rules)
        resp = await self._call("POST", self._jobs, json=job)
        if resp.status_code == 409:  # created before a restart: it is that run's Job
            log.info("job exists already", job=job["metadata"]["name"])
            return
        _check(resp, "create the Job")
        log.info("job created", task=task, run_id=run_id, job=job["metadata"]["name"])

    async def ended(self, task: str, run_id: str) -> str | None:
        name = job_name(self._template, task, run_id)
        resp = await self._call("GET", f"{self._jobs}/{name}")
        if resp.status_code == 404:
            return f"Job {name} is gone"
        _check(resp, "read the Job")
        how = ending(resp.json())
        return None if how is None else f"Job {name}: {how}"

    async def stop(self, task: str, run_id: str) -> None:
        name = job_name(self._template, task, run_id)
        body = {"propagationPolicy": "Background"}
        resp = await self._call("DELETE", f"{self._jobs}/{name}", json=body)
        if resp.status_code != 404:
            _check(resp, "delete the Job")

    async def aclose(self) -> None:
        await self._http.aclose()

    async def _call(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            return await self._http.request(method, path, **kwargs)
        except httpx.HTTPError as exc:
            raise KubernetesError(f"Kubernetes API unreachable: {exc!r}") from exc


def _check(resp: httpx.Response, what: str) -> None:
    if resp.status_code < 300:
        return
    try:
        message = resp.json().get("message") or resp.text
    except ValueError:
        message = resp.text
    raise KubernetesError(f"could not {what}: HTTP {resp.status_code}: {message[:300]}")


def _own_namespace(cfg: KubernetesConfig) -> str:
    path = cfg.token_file.parent / "namespace"
    try:
        return path.read_text().strip()
    except OSError as exc:
        raise ConfigError(
            "config: autopilot.kubernetes.namespace is required (or PROTEGE_NAMESPACE)"
        ) from exc


class _TokenAuth(httpx.Auth):
    """The ServiceAccount's token, read again on each request (the kubelet rotates it)."""

    def __init__(self, path: Path) -> None:
        self._path = path

    def auth_flow(self, request: httpx.Request) -> Any:
        if self._path.is_file():
            request.headers["Authorization"] = f"Bearer {self._path.read_text().strip()}"
        yield request

