"""The chart's autopilot: its Deployment, its least-privilege Kubernetes access, the Job template
it launches runs from, and its section of protege.yaml.

Rendered by Helm's own engine, as in ``tests/test_helm.py`` (whose helpers this reuses).
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import helm_python
import kubernetes_validate
import pytest
import yaml

from tests.test_helm import (
    CHART,
    KUBE_VERSIONS,
    NAMESPACE,
    RELEASE,
    ci_values,
    config_file,
    container,
    of_kind,
    only,
    pod_spec,
    render,
)
from trainer.autopilot.config import load_autopilot_settings
from trainer.autopilot.kube import job_for

TASK = "ticket-triage"


@pytest.fixture(scope="module")
def chart() -> Iterator[helm_python.Chart]:
    with helm_python.Chart.load(CHART) as loaded:
        yield loaded


@pytest.fixture(scope="module")
def objects(chart: helm_python.Chart) -> list[dict[str, Any]]:
    """What ci/autopilot-values.yaml renders."""
    return render(chart, ci_values("autopilot-values.yaml"))


def job_template(objects: list[dict[str, Any]]) -> dict[str, Any]:
    """The Job the autopilot launches runs from, as its ConfigMap holds it."""
    cm = only(objects, "ConfigMap", "autopilot")
    assert set(cm["data"]) == {"job.yaml"}
    job: dict[str, Any] = yaml.safe_load(cm["data"]["job.yaml"])
    return job


def env_of(c: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in c["env"]}


def test_autopilot_is_off_by_default(chart: helm_python.Chart) -> None:
    """Without autopilot.enabled nothing of the autopilot is rendered, nor its config section."""
    objects = render(chart, {})
    assert of_kind(objects, "Deployment", "autopilot") == []
    assert {"Role", "RoleBinding"}.isdisjoint(o["kind"] for o in objects)
    assert "autopilot" not in config_file(objects)


def test_autopilot_runs_the_protege_image_with_the_gateway_token(
    objects: list[dict[str, Any]],
) -> None:
    """The autopilot runs `protege autopilot` from the gateway's image, with its replicas, the
    gateway's admin token and store settings, and the namespace and pod name it runs as."""
    deployment = only(objects, "Deployment", "autopilot")
    assert deployment["metadata"]["name"] == f"{RELEASE}-protege-autopilot"
    assert deployment["spec"]["replicas"] == 2
    pod = pod_spec(deployment)
    autopilot = container(pod, "autopilot")
    gateway = container(pod_spec(only(objects, "Deployment", "gateway")), "gateway")
    assert autopilot["image"] == gateway["image"]
    assert autopilot["args"] == ["autopilot", "--config", "/etc/protege/protege.yaml"]
    env, gateway_env = env_of(autopilot), env_of(gateway)
    assert env["PROTEGE_ADMIN_TOKEN"] == gateway_env["PROTEGE_ADMIN_TOKEN"]
    assert env["AWS_DEFAULT_REGION"] == gateway_env["AWS_DEFAULT_REGION"]
    assert env["PROTEGE_NAMESPACE"] == {"fieldRef": {"fieldPath": "metadata.namespace"}}
    assert env["PROTEGE_POD_NAME"] == {"fieldRef": {"fieldPath": "metadata.name"}}
    assert autopilot["securityContext"]["readOnlyRootFilesystem"] is True
    assert autopilot["resources"]["requests"] == {"cpu": "100m", "memory": "256Mi"}


def test_autopilot_probes_and_metrics_port_match_its_config(objects: list[dict[str, Any]]) -> None:
    """Liveness and readiness are /healthz on the port the config serves metrics on, on every
    interface; the autopilot's Service and ServiceMonitor scrape that port."""
    autopilot = container(pod_spec(only(objects, "Deployment", "autopilot")), "autopilot")
    ports = {p["name"]: p["containerPort"] for p in autopilot["ports"]}
    settings = config_file(objects)["autopilot"]
    assert ports == {"metrics": settings["metrics_port"]} == {"metrics": 9103}
    assert settings["metrics_host"] == "0.0.0.0"
    for probe in (autopilot["livenessProbe"], autopilot["readinessProbe"]):
        assert probe["httpGet"] == {"path": "/healthz", "port": "metrics"}
    service = only(objects, "Service", "autopilot")
    assert [p["targetPort"] for p in service["spec"]["ports"]] == ["metrics"]
    monitor = only(objects, "ServiceMonitor", "autopilot")
    assert monitor["spec"]["selector"]["matchLabels"] == service["spec"]["selector"]
    assert [e["port"] for e in monitor["spec"]["endpoints"]] == ["metrics"]


def test_autopilot_may_manage_jobs_and_nothing_else(objects: list[dict[str, Any]]) -> None:
    """The autopilot's own ServiceAccount is bound to one Role: batch Jobs, and only the verbs
    a run needs. No other account, no cluster-wide grant, no pods or secrets."""
    account = only(objects, "ServiceAccount", "autopilot")["metadata"]["name"]
    pod = pod_spec(only(objects, "Deployment", "autopilot"))
    assert pod["serviceAccountName"] == account and pod["automountServiceAccountToken"] is True
    role = only(objects, "Role", "autopilot")
    assert role["rules"] == [
        {
            "apiGroups": ["batch"],
            "resources": ["jobs"],
            "verbs": ["create", "get", "list", "watch", "delete"],
        }
    ]
    binding = only(objects, "RoleBinding", "autopilot")
    assert binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "Role",
        "name": role["metadata"]["name"],
    }
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": account, "namespace": NAMESPACE}
    ]
    assert not {"ClusterRole", "ClusterRoleBinding"} & {o["kind"] for o in objects}
    assert len(of_kind(objects, "Role")) == len(of_kind(objects, "RoleBinding")) == 1


def test_autopilot_job_template_is_a_valid_job(objects: list[dict[str, Any]]) -> None:
    """The Job template validates as a batch/v1 Job, runs once (the autopilot retries), and its
    pod runs as the trainer's account, not the autopilot's."""
    job = job_template(objects)
    for version in KUBE_VERSIONS:
        kubernetes_validate.validate(job, version, strict=True)
    trainer = ci_values("autopilot-values.yaml")["trainer"]
    assert job["spec"]["backoffLimit"] == 0
    assert job["spec"]["activeDeadlineSeconds"] == 86400
    assert job["spec"]["ttlSecondsAfterFinished"] == 604800
    assert "protege/task" not in job["metadata"]["labels"]
    pod = job["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == f"{RELEASE}-protege"
    args = container(pod, "trainer")["args"]
    assert args[0] == "train" and "--task" not in args
    assert container(pod, "trainer")["image"] == "{repository}:{tag}".format(**trainer["image"])


def complete_run(template: dict[str, Any], task: str) -> dict[str, Any]:
    """The Job the autopilot launches for ``task``: the template, its task label and argument."""
    job = copy.deepcopy(template)
    for meta in (job["metadata"], job["spec"]["template"]["metadata"]):
        meta["labels"]["protege/task"] = task
    job["spec"]["template"]["spec"]["containers"][0]["args"] += ["--task", task]
    return job


def test_autopilot_runs_are_the_trainers_one_off_job(chart: helm_python.Chart) -> None:
    """Completed for a task, the template is the chart's one-off trainer Job for that task: the
    same pod (image, GPUs, volumes, tolerations…) and labels; only the per-run fields differ."""
    values = ci_values("autopilot-values.yaml")
    values["trainer"]["job"] = {"enabled": True, "task": TASK}
    objects = render(chart, values)
    run = complete_run(job_template(objects), TASK)
    one_off = only(objects, "Job", "trainer")
    assert run["metadata"]["labels"] == one_off["metadata"]["labels"]
    pod, expected = pod_spec(run), pod_spec(one_off)
    args = container(expected, "trainer")["args"]
    at = args.index("--task")
    container(expected, "trainer")["args"] = args[:at] + args[at + 2 :] + args[at : at + 2]
    assert pod == expected
    assert run["spec"]["activeDeadlineSeconds"] == one_off["spec"]["activeDeadlineSeconds"]
    assert run["spec"]["ttlSecondsAfterFinished"] == one_off["spec"]["ttlSecondsAfterFinished"]


def test_autopilot_settings_are_rendered_with_what_the_chart_knows(
    objects: list[dict[str, Any]],
) -> None:
    """protege.yaml's autopilot section is autopilot.settings plus the Kubernetes runner, the
    path the Job template is mounted at, the metrics address, the gateway's Service, and each
    task's base model (the trainer's)."""
    settings = config_file(objects)["autopilot"]
    given = ci_values("autopilot-values.yaml")["autopilot"]["settings"]
    gateway = only(objects, "Service", "gateway")
    port = next(p["port"] for p in gateway["spec"]["ports"] if p["name"] == "http")
    assert settings == {
        **given,
        "tasks": {TASK: {**given["tasks"][TASK], "base_model": "/models/base"}},
        "runner": "kubernetes",
        "kubernetes": {"job_template": "/etc/protege/autopilot/job.yaml"},
        "metrics_host": "0.0.0.0",
        "metrics_port": 9103,
        "gateway_url": f"http://{gateway['metadata']['name']}:{port}",
    }
    pod = pod_spec(only(objects, "Deployment", "autopilot"))
    mount = next(m for m in container(pod, "autopilot")["volumeMounts"] if m["name"] == "config")
    volume = next(v for v in pod["volumes"] if v["name"] == "config")
    projected = {
        f"{mount['mountPath']}/{item['path']}": (source["configMap"]["name"], item["key"])
        for source in volume["projected"]["sources"]
        for item in source["configMap"].get("items", [])
    }
    job_cm = only(objects, "ConfigMap", "autopilot")["metadata"]["name"]
    assert projected == {settings["kubernetes"]["job_template"]: (job_cm, "job.yaml")}
    sources = [s["configMap"]["name"] for s in volume["projected"]["sources"]]
    assert sources == [only(objects, "ConfigMap", "config")["metadata"]["name"], job_cm]


def test_autopilot_restarts_when_its_job_template_changes(chart: helm_python.Chart) -> None:
    """A change to the trainer values (so to the Job template) rolls the autopilot's pods."""
    values = ci_values("autopilot-values.yaml")

    def checksum(objects: list[dict[str, Any]]) -> str:
        deployment = only(objects, "Deployment", "autopilot")
        annotations: dict[str, str] = deployment["spec"]["template"]["metadata"]["annotations"]
        return annotations["checksum/job"]

    before = checksum(render(chart, values))
    values["trainer"]["gpus"] = 4
    assert checksum(render(chart, values)) != before


def test_a_task_may_name_its_own_base_model(chart: helm_python.Chart) -> None:
    """A task's base_model wins over trainer.baseModel; kubernetes settings other than the
    template's path are kept."""
    values = ci_values("autopilot-values.yaml")
    settings = values["autopilot"]["settings"]
    settings["tasks"]["summarize"] = {"base_model": "smollm2"}
    settings["kubernetes"] = {"poll_s": 5}
    rendered = config_file(render(chart, values))["autopilot"]
    assert rendered["tasks"]["summarize"] == {"base_model": "smollm2"}
    assert rendered["tasks"][TASK]["base_model"] == "/models/base"
    assert rendered["kubernetes"] == {
        "poll_s": 5,
        "job_template": "/etc/protege/autopilot/job.yaml",
    }


def test_the_autopilot_launches_valid_runs_of_the_trainers_model(
    objects: list[dict[str, Any]], tmp_path: Path
) -> None:
    """The autopilot's own code loads the rendered section and turns the template into a valid
    Job whose trainer trains the model trainer.baseModel names (the last --base-model wins)."""
    path = tmp_path / "protege.yaml"
    path.write_text(yaml.safe_dump(config_file(objects)))
    settings = load_autopilot_settings(path, env={}).autopilot
    assert settings.runner == "kubernetes"
    job = job_for(job_template(objects), TASK, "r-0001", "v3", settings.tasks[TASK])
    for version in KUBE_VERSIONS:
        kubernetes_validate.validate(job, version, strict=True)
    args = container(pod_spec(job), "trainer")["args"]
    base_models = [args[i + 1] for i, a in enumerate(args) if a == "--base-model"]
    assert base_models[-1] == "/models/base"
    assert args[args.index("--task") + 1] == TASK and args[args.index("--champion") + 1] == "v3"
    assert job["metadata"]["labels"]["protege/task"] == TASK
