"""The Helm chart, rendered by Helm's own engine (helm-python-sdk bundles Helm's Go SDK).

Every ``ci/*-values.yaml`` is rendered and each object validated against the Kubernetes API
schemas (kubernetes-validate, strict: unknown fields are errors) of the oldest Kubernetes the
chart supports and of the newest; then targeted checks of what the chart promises.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import helm_python
import httpx
import kubernetes_validate
import pytest
import yaml

from gateway.config import load_settings
from sidecar.config import load_sidecar_settings
from tests.conftest import RunningGateway
from trainer.autopilot.config import load_autopilot_settings
from trainer.settings import load_trainer_settings

CHART = Path(__file__).resolve().parents[1] / "helm" / "protege"
CI_VALUES = sorted(CHART.glob("ci/*-values.yaml"))
KUBE_VERSIONS = ("1.27.0", "1.37.0")
# Kinds of the Prometheus Operator: no published schema here; checked by targeted tests.
CRD_KINDS = {"ServiceMonitor", "PrometheusRule"}
RELEASE, NAMESPACE = "rel", "ml"


@pytest.fixture(scope="module")
def chart() -> Iterator[helm_python.Chart]:
    with helm_python.Chart.load(CHART) as loaded:
        yield loaded


def ci_values(name: str) -> dict[str, Any]:
    values: dict[str, Any] = yaml.safe_load((CHART / "ci" / name).read_text()) or {}
    return values


def render(chart: helm_python.Chart, values: dict[str, Any]) -> list[dict[str, Any]]:
    """Every object the chart renders with ``values``."""
    manifests = chart.render(values, name=RELEASE, namespace=NAMESPACE)
    return [
        doc
        for path, text in sorted(manifests.items())
        if path.endswith(".yaml")
        for doc in yaml.safe_load_all(text)
        if doc
    ]


def only(objects: list[dict[str, Any]], kind: str, component: str | None = None) -> dict[str, Any]:
    found = of_kind(objects, kind, component)
    assert len(found) == 1, f"expected one {kind} ({component}), got {len(found)}"
    return found[0]


def of_kind(
    objects: list[dict[str, Any]], kind: str, component: str | None = None
) -> list[dict[str, Any]]:
    return [
        o
        for o in objects
        if o["kind"] == kind
        and (
            component is None
            or o["metadata"]["labels"].get("app.kubernetes.io/component") == component
        )
    ]


def pod_spec(workload: dict[str, Any]) -> dict[str, Any]:
    spec = workload["spec"]
    if workload["kind"] == "CronJob":
        spec = spec["jobTemplate"]["spec"]
    pod: dict[str, Any] = spec["template"]["spec"]
    return pod


def container(pod: dict[str, Any], name: str) -> dict[str, Any]:
    return next(c for c in pod["containers"] if c["name"] == name)


def config_file(objects: list[dict[str, Any]]) -> dict[str, Any]:
    """The shared protege.yaml the chart renders."""
    cm = only(objects, "ConfigMap", "config")
    loaded: dict[str, Any] = yaml.safe_load(cm["data"]["protege.yaml"])
    return loaded


# ---------------------------------------------------------------- every values file


@pytest.mark.parametrize("values_file", CI_VALUES, ids=lambda p: p.name)
def test_chart_lints_without_warnings(values_file: Path) -> None:
    """`helm lint --strict` finds no error and no warning with the values file."""
    values = ci_values(values_file.name)
    kube = f"v{KUBE_VERSIONS[0]}"
    report = helm_python.lint(CHART, values, strict=True, namespace=NAMESPACE, kube_version=kube)
    problems = [m for m in report["messages"] if m["severity"] >= 2]
    assert report["errors"] == [] and problems == []


def test_every_feature_has_a_ci_values_file() -> None:
    """The ci/ folder covers each optional feature of the chart."""
    names = {p.name.removesuffix("-values.yaml") for p in CI_VALUES}
    assert {"default", "secrets", "lorax", "trainer", "autoscaling", "spool-pvc"} <= names
    assert {"monitoring", "routes", "student", "full", "trainer-gpus", "autopilot"} <= names


@pytest.mark.parametrize("values_file", CI_VALUES, ids=lambda p: p.name)
def test_ci_values_render_valid_kubernetes_objects(
    chart: helm_python.Chart, values_file: Path
) -> None:
    """Each object the values file renders is valid for the oldest and newest Kubernetes."""
    objects = render(chart, ci_values(values_file.name))
    assert objects
    for obj in objects:
        if obj["kind"] in CRD_KINDS:
            continue
        for version in KUBE_VERSIONS:
            try:
                kubernetes_validate.validate(obj, version, strict=True)
            except kubernetes_validate.ValidationError as exc:
                where = "/".join(str(p) for p in exc.path)
                pytest.fail(f"{obj['kind']} {obj['metadata']['name']} ({version}): {where}: {exc}")



@pytest.mark.parametrize("values_file", CI_VALUES, ids=lambda p: p.name)
def test_protege_containers_run_as_10001_on_a_read_only_root(
    chart: helm_python.Chart, values_file: Path
) -> None:
    """Every container of Protégé's images (LoRAX's is its own) runs as user 10001 without
    privileges on a read-only root, with /tmp a volume of its own — the autopilot's Job
    template included."""
    objects = render(chart, ci_values(values_file.name))
    pods = [pod_spec(o) for o in objects if o["kind"] in ("Deployment", "Job", "CronJob")]
    if of_kind(objects, "ConfigMap", "autopilot"):
        job = yaml.safe_load(only(objects, "ConfigMap", "autopilot")["data"]["job.yaml"])
        pods.append(pod_spec(job))
    ours = [(pod, c) for pod in pods for c in pod["containers"] if c["name"] != "lorax"]
    assert ours
    for pod, c in ours:
        assert pod["securityContext"]["runAsUser"] == 10001, c["name"]
        assert pod["securityContext"]["runAsNonRoot"] is True, c["name"]
        context = c["securityContext"]
        assert context["readOnlyRootFilesystem"] is True, c["name"]
        assert context["allowPrivilegeEscalation"] is False, c["name"]
        assert context["capabilities"] == {"drop": ["ALL"]}, c["name"]
        mounts = {m["mountPath"]: m["name"] for m in c["volumeMounts"]}
        volumes = {v["name"]: v for v in pod["volumes"]}
        assert "emptyDir" in volumes[mounts["/tmp"]], c["name"]

@pytest.mark.parametrize("values_file", CI_VALUES, ids=lambda p: p.name)
def test_rendered_config_loads_in_every_service(
    chart: helm_python.Chart, values_file: Path, tmp_path: Path
) -> None:
    """The protege.yaml the chart renders is accepted by the gateway, sidecar, trainer and
    autopilot."""
    path = tmp_path / "protege.yaml"
    path.write_text(yaml.safe_dump(config_file(render(chart, ci_values(values_file.name)))))
    gateway = load_settings(path, env={})
    sidecar = load_sidecar_settings(path, env={})
    load_trainer_settings(path, env={})
    load_autopilot_settings(path, env={})
    assert gateway.server.host == "0.0.0.0" and sidecar.sidecar.metrics_host == "0.0.0.0"
    assert gateway.spool.dir == sidecar.spool.dir


# ---------------------------------------------------------------- the gateway pod


@pytest.mark.parametrize("spool", ["emptyDir", "ephemeral"])
def test_sidecar_shares_the_spool_volume(chart: helm_python.Chart, spool: str) -> None:
    """Gateway and sidecar mount the same spool volume at the config's spool.dir."""
    objects = render(chart, {"gateway": {"spool": {"type": spool}}})
    pod = pod_spec(only(objects, "Deployment", "gateway"))
    mounts = {
        name: {m["name"]: m["mountPath"] for m in container(pod, name)["volumeMounts"]}
        for name in ("gateway", "sidecar")
    }
    spool_dir = config_file(objects)["spool"]["dir"]
    assert mounts["gateway"]["spool"] == mounts["sidecar"]["spool"] == spool_dir
    volume = next(v for v in pod["volumes"] if v["name"] == "spool")
    assert spool in volume


def test_spool_claim_per_pod_is_sized_and_classed(chart: helm_python.Chart) -> None:
    """The ephemeral spool is a PersistentVolumeClaim template with the asked size and class."""
    objects = render(chart, ci_values("spool-pvc-values.yaml"))
    pod = pod_spec(only(objects, "Deployment", "gateway"))
    volume = next(v for v in pod["volumes"] if v["name"] == "spool")
    claim = volume["ephemeral"]["volumeClaimTemplate"]["spec"]
    assert claim["resources"]["requests"]["storage"] == "50Gi"
    assert claim["storageClassName"] == "fast-ssd"


SECRET_ENV = {
    "gateway": {
        "PROTEGE_TEACHER_API_KEY": ("protege-teacher", "api-key"),
        "PROTEGE_API_KEYS": ("protege-clients", "keys"),
        "PROTEGE_ADMIN_TOKEN": ("protege-admin", "token"),
        "AWS_ACCESS_KEY_ID": ("protege-s3", "AWS_ACCESS_KEY_ID"),
        "AWS_SECRET_ACCESS_KEY": ("protege-s3", "AWS_SECRET_ACCESS_KEY"),
    },
    "sidecar": {
        "AWS_ACCESS_KEY_ID": ("protege-s3", "AWS_ACCESS_KEY_ID"),
        "AWS_SECRET_ACCESS_KEY": ("protege-s3", "AWS_SECRET_ACCESS_KEY"),
    },
}


def test_secrets_are_referenced_not_inlined(chart: helm_python.Chart) -> None:
    """Keys, tokens and S3 credentials reach the containers only as Secret references."""
    objects = render(chart, ci_values("secrets-values.yaml"))
    assert of_kind(objects, "Secret") == []
    pod = pod_spec(only(objects, "Deployment", "gateway"))
    for name, expected in SECRET_ENV.items():
        env = container(pod, name)["env"]
        refs = {
            e["name"]: (
                e["valueFrom"]["secretKeyRef"]["name"],
                e["valueFrom"]["secretKeyRef"]["key"],
            )
            for e in env
            if "valueFrom" in e
        }
        assert refs == expected
        plain = {e["name"] for e in env if "value" in e}
        assert not {n for n in plain if re.search(r"KEY|TOKEN|SECRET|PASSWORD", n)}
    config = config_file(objects)
    assert "api_keys" not in config and "api_key" not in config["teacher"]
    assert "admin_token" not in config.get("rollouts", {})


def test_probes_are_served_by_the_gateway(
    chart: helm_python.Chart, gateway: RunningGateway
) -> None:
    """The gateway's liveness and readiness probes name paths a running gateway answers 200 on,
    on the port its config listens on."""
    objects = render(chart, {})
    gw = container(pod_spec(only(objects, "Deployment", "gateway")), "gateway")
    ports = {p["name"]: p["containerPort"] for p in gw["ports"]}
    probes = [gw["livenessProbe"]["httpGet"], gw["readinessProbe"]["httpGet"]]
    assert {p["path"] for p in probes} == {"/healthz", "/readyz"}
    for probe in probes:
        assert ports[probe["port"]] == config_file(objects)["server"]["port"]
        assert httpx.get(f"{gateway.url}{probe['path']}", timeout=5).status_code == 200


def test_sidecar_probe_targets_its_metrics_port(chart: helm_python.Chart) -> None:
    """The sidecar's liveness probe is its /healthz on the port its config serves metrics on."""
    objects = render(chart, {"sidecar": {"metricsPort": 9100}})
    sidecar = container(pod_spec(only(objects, "Deployment", "gateway")), "sidecar")
    probe = sidecar["livenessProbe"]["httpGet"]
    ports = {p["name"]: p["containerPort"] for p in sidecar["ports"]}
    assert probe["path"] == "/healthz"
    assert ports[probe["port"]] == config_file(objects)["sidecar"]["metrics_port"] == 9100


def test_shutdown_leaves_the_sidecar_time_to_ship(chart: helm_python.Chart) -> None:
    """The grace period covers the preStop pause, the sidecar's wait and a final upload."""
    objects = render(chart, {})
    pod = pod_spec(only(objects, "Deployment", "gateway"))
    sleep = int(container(pod, "gateway")["lifecycle"]["preStop"]["exec"]["command"][1])
    wait = config_file(objects)["sidecar"]["shutdown_wait_s"]
    assert wait >= sleep + 30, "the sidecar stops waiting before the gateway has drained"
    assert pod["terminationGracePeriodSeconds"] >= sleep + wait + 30


def test_autoscaling_replaces_fixed_replicas(chart: helm_python.Chart) -> None:
    """With autoscaling on, the HPA owns the replica count of the gateway Deployment."""
    objects = render(chart, ci_values("autoscaling-values.yaml"))
    deployment = only(objects, "Deployment", "gateway")
    hpa = only(objects, "HorizontalPodAutoscaler", "gateway")
    assert "replicas" not in deployment["spec"]
    assert hpa["spec"]["scaleTargetRef"]["name"] == deployment["metadata"]["name"]
    assert {m["resource"]["name"] for m in hpa["spec"]["metrics"]} == {"cpu", "memory"}


def test_disruption_budget_selects_the_gateway_pods(chart: helm_python.Chart) -> None:
    """The PodDisruptionBudget selects exactly the gateway Deployment's pods."""
    objects = render(chart, {})
    pdb = only(objects, "PodDisruptionBudget", "gateway")
    deployment = only(objects, "Deployment", "gateway")
    assert pdb["spec"]["selector"] == deployment["spec"]["selector"]


def test_service_exposes_the_api_and_both_metrics_ports(chart: helm_python.Chart) -> None:
    """The gateway Service routes to the gateway's and the sidecar's named ports."""
    objects = render(chart, {})
    service = only(objects, "Service", "gateway")
    pod = pod_spec(only(objects, "Deployment", "gateway"))
    named = {p["name"] for c in pod["containers"] for p in c["ports"]}
    targets = {p["targetPort"] for p in service["spec"]["ports"]}
    assert targets == named == {"http", "sidecar-metrics"}
    labels = pod_spec_labels(only(objects, "Deployment", "gateway"))
    assert service["spec"]["selector"].items() <= labels.items()


def pod_spec_labels(workload: dict[str, Any]) -> dict[str, str]:
    labels: dict[str, str] = workload["spec"]["template"]["metadata"]["labels"]
    return labels


# ---------------------------------------------------------------- LoRAX and the trainer


def test_lorax_serves_adapters_from_s3_and_the_gateway_uses_it(chart: helm_python.Chart) -> None:
    """LoRAX runs on a GPU with --adapter-source s3, the gateway's student is its Service, and
    the gateway asks it for adapters where the trainer publishes them in the store."""
    objects = render(chart, ci_values("lorax-values.yaml"))
    lorax = only(objects, "Deployment", "lorax")
    pod = pod_spec(lorax)
    args = container(pod, "lorax")["args"]
    assert args[args.index("--adapter-source") + 1] == "s3"
    assert args[args.index("--model-id") + 1] == "/data/base"
    assert container(pod, "lorax")["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert pod["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    env = {e["name"]: e.get("value") for e in container(pod, "lorax")["env"]}
    assert env["PREDIBASE_MODEL_BUCKET"] == "protege-logs"
    service = only(objects, "Service", "lorax")
    port = service["spec"]["ports"][0]["port"]
    expected = f"http://{service['metadata']['name']}:{port}/v1"
    student = config_file(objects)["student"]
    assert student["base_url"] == expected
    store = ci_values("lorax-values.yaml")["store"]["uri"].rstrip("/")
    assert student["adapter_prefix"] == f"{store}/adapters/"


def test_trainer_runs_one_cronjob_per_task_on_gpu_nodes(chart: helm_python.Chart) -> None:
    """Each trainer task gets a CronJob running `protege train --task <task>` on a GPU."""
    objects = render(chart, ci_values("trainer-values.yaml"))
    cronjobs = of_kind(objects, "CronJob", "trainer")
    tasks = {}
    for cronjob in cronjobs:
        pod = pod_spec(cronjob)
        trainer = container(pod, "trainer")
        args = trainer["args"]
        assert args[0] == "train" and trainer["resources"]["limits"]["nvidia.com/gpu"] == 1
        assert pod["tolerations"] and cronjob["spec"]["concurrencyPolicy"] == "Forbid"
        tasks[args[args.index("--task") + 1]] = cronjob["spec"]["schedule"]
    assert tasks == {"ticket-triage": "0 2 * * 1", "summarize": "0 3 * * *"}


def test_one_off_training_job_is_kept_across_upgrades(chart: helm_python.Chart) -> None:
    """The one-off Job carries the task, is named per revision and is never pruned by Helm."""
    objects = render(chart, ci_values("trainer-values.yaml"))
    job = only(objects, "Job", "trainer")
    args = container(pod_spec(job), "trainer")["args"]
    assert args[args.index("--task") + 1] == "ticket-triage" and "--no-publish" in args
    assert job["metadata"]["name"].endswith("-r1")
    assert job["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"


def trainer_pods(objects: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The pod specs of the one-off Job and of every CronJob."""
    workloads = [*of_kind(objects, "Job", "trainer"), *of_kind(objects, "CronJob", "trainer")]
    assert {w["kind"] for w in workloads} == {"Job", "CronJob"}
    return [pod_spec(w) for w in workloads]


def launch_flags(args: list[str]) -> dict[str, str]:
    """The values of --nproc and --device among a trainer's arguments."""
    return {a: args[i + 1] for i, a in enumerate(args) if a in ("--nproc", "--device")}


def shm_volumes(pod: dict[str, Any]) -> list[dict[str, Any]]:
    """The volumes the trainer container mounts at /dev/shm."""
    mounts = container(pod, "trainer")["volumeMounts"]
    mounted = {m["name"] for m in mounts if m["mountPath"] == "/dev/shm"}
    return [v for v in pod["volumes"] if v["name"] in mounted]


def test_gpu_training_runs_one_process_per_gpu(chart: helm_python.Chart) -> None:
    """With trainer.gpus the Job and CronJobs request and limit that many GPUs, launch as many
    processes on CUDA, and mount a memory-backed /dev/shm."""
    for pod in trainer_pods(render(chart, ci_values("trainer-gpus-values.yaml"))):
        trainer = container(pod, "trainer")
        assert launch_flags(trainer["args"]) == {"--nproc": "2", "--device": "cuda"}
        resources = trainer["resources"]
        assert resources["requests"]["nvidia.com/gpu"] == resources["limits"]["nvidia.com/gpu"] == 2
        assert resources["limits"]["memory"] == "64Gi"
        assert shm_volumes(pod) == [
            {"name": "shm", "emptyDir": {"medium": "Memory", "sizeLimit": "16Gi"}}
        ]
        assert pod["nodeSelector"] == {"nvidia.com/gpu.present": "true"}


def test_gpu_resource_name_is_settable(chart: helm_python.Chart) -> None:
    """trainer.gpuResource names the extended resource the GPUs are requested as."""
    values = ci_values("trainer-gpus-values.yaml")
    values["trainer"] |= {
        "gpuResource": "amd.com/gpu",
        "resources": {"requests": {"nvidia.com/gpu": None}, "limits": {"nvidia.com/gpu": None}},
    }
    for pod in trainer_pods(render(chart, values)):
        limits = container(pod, "trainer")["resources"]["limits"]
        assert limits == {"memory": "64Gi", "amd.com/gpu": 2}


def test_without_gpus_the_trainer_runs_as_before(chart: helm_python.Chart) -> None:
    """With gpus 0 and nproc 1 the trainer gets no launch flags, no /dev/shm, and its resources
    as written (without a GPU there: then the container names no GPU at all)."""
    values = ci_values("trainer-values.yaml")
    for pod in trainer_pods(render(chart, values)):
        trainer = container(pod, "trainer")
        assert launch_flags(trainer["args"]) == {} and shm_volumes(pod) == []
        assert trainer["resources"]["limits"] == {"memory": "64Gi", "nvidia.com/gpu": 1}
    no_gpu = {"requests": {"nvidia.com/gpu": None}, "limits": {"nvidia.com/gpu": None}}
    values["trainer"] |= {"gpus": 0, "resources": no_gpu}
    for pod in trainer_pods(render(chart, values)):
        trainer = yaml.safe_dump(container(pod, "trainer"))
        assert "nvidia.com/gpu" not in trainer and "--nproc" not in trainer


def test_cpu_training_runs_nproc_processes(chart: helm_python.Chart) -> None:
    """trainer.nproc above 1 launches that many CPU processes and requests no GPU."""
    values = ci_values("trainer-values.yaml")
    values["trainer"]["nproc"] = 2
    for pod in trainer_pods(render(chart, values)):
        trainer = container(pod, "trainer")
        assert launch_flags(trainer["args"]) == {"--nproc": "2", "--device": "cpu"}
        assert "nvidia.com/gpu" not in yaml.safe_dump(trainer["resources"])
        assert shm_volumes(pod) == []


# ---------------------------------------------------------------- monitoring objects


def test_monitoring_objects_are_off_by_default(chart: helm_python.Chart) -> None:
    """Without monitoring values no ServiceMonitor, PrometheusRule or dashboard is rendered."""
    kinds = {o["kind"] for o in render(chart, {})}
    names = {o["metadata"]["name"] for o in render(chart, {})}
    assert not kinds & CRD_KINDS and f"{RELEASE}-protege-dashboards" not in names


def test_service_monitors_scrape_named_service_ports(chart: helm_python.Chart) -> None:
    """Each ServiceMonitor selects a Service of the release and scrapes ports it names."""
    objects = render(chart, ci_values("full-values.yaml"))
    monitors = of_kind(objects, "ServiceMonitor")
    assert len(monitors) == 3
    for monitor in monitors:
        selector = monitor["spec"]["selector"]["matchLabels"]
        services = [
            s
            for s in of_kind(objects, "Service")
            if selector.items() <= s["metadata"]["labels"].items()
        ]
        assert len(services) == 1
        ports = {p["name"] for p in services[0]["spec"]["ports"]}
        assert {e["port"] for e in monitor["spec"]["endpoints"]} <= ports
        assert all(e["path"] == "/metrics" for e in monitor["spec"]["endpoints"])


def test_prometheus_rule_is_the_rules_file_less_disabled_alerts(chart: helm_python.Chart) -> None:
    """The PrometheusRule holds the plain rules file's alerts, minus disabled ones, plus labels."""
    objects = render(chart, ci_values("monitoring-values.yaml"))
    rule = only(objects, "PrometheusRule")
    plain = yaml.safe_load((CHART / "rules" / "protege.rules.yaml").read_text())
    expected = {r["alert"]: r["expr"] for g in plain["groups"] for r in g["rules"]}
    del expected["ProtegeInputDrift"]
    rendered = {r["alert"]: r for g in rule["spec"]["groups"] for r in g["rules"]}
    assert {name: r["expr"] for name, r in rendered.items()} == expected
    assert all(r["labels"]["team"] == "ml-platform" for r in rendered.values())
    assert rule["metadata"]["labels"]["release"] == "kube-prometheus-stack"


def test_dashboard_configmap_is_labelled_for_the_grafana_sidecar(chart: helm_python.Chart) -> None:
    """The dashboard ConfigMap carries the Grafana sidecar's label and the dashboard JSON."""
    objects = render(chart, ci_values("monitoring-values.yaml"))
    cm = only(objects, "ConfigMap", "dashboards")
    assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert cm["metadata"]["annotations"] == {"grafana_folder": "Protégé"}
    shipped = (CHART / "dashboards" / "protege.json").read_text()
    assert yaml.safe_load(cm["data"]["protege.json"]) == yaml.safe_load(shipped)


# ---------------------------------------------------------------- values and their schema


REJECTED = {
    "teacher-key-in-plain-text": ({"config": {"teacher": {"api_key": "sk-1"}}}, "api_key"),
    "client-keys-in-plain-text": ({"config": {"api_keys": ["sk-1"]}}, "api_keys"),
    "admin-token-in-plain-text": ({"config": {"rollouts": {"admin_token": "t"}}}, "admin_token"),
    "store-in-config": ({"config": {"store": "s3://other"}}, "/config/store"),
    "unknown-key": ({"gatway": {}}, "gatway"),
    "replicas-not-a-number": ({"gateway": {"replicaCount": "two"}}, "replicaCount"),
    "unknown-spool-type": ({"gateway": {"spool": {"type": "hostPath"}}}, "/gateway/spool/type"),
    "store-not-s3-or-file": ({"store": {"uri": "gs://bucket"}}, "/store/uri"),
    "one-off-job-without-task": ({"trainer": {"job": {"enabled": True}}}, "/trainer/job/task"),
    "bad-task-name": ({"trainer": {"tasks": [{"name": "-x"}]}}, "/trainer/tasks/0/name"),
    "training-without-tasks": ({"trainer": {"enabled": True}}, "/trainer/tasks"),
    "negative-gpus": ({"trainer": {"gpus": -1}}, "/trainer/gpus"),
    "gpus-not-an-integer": ({"trainer": {"gpus": "2"}}, "/trainer/gpus"),
    "no-processes": ({"trainer": {"nproc": 0}}, "/trainer/nproc"),
    "autopilot-section-in-config": ({"config": {"autopilot": {}}}, "/config/autopilot"),
    "autopilot-runner-set-by-hand": (
        {"autopilot": {"settings": {"runner": "local"}}},
        "/autopilot/settings/runner",
    ),
    "autopilot-bad-task-name": (
        {"autopilot": {"settings": {"tasks": {"-x": {}}}}},
        "invalid propertyName '-x'",
    ),
    "autopilot-negative-interval": (
        {"autopilot": {"settings": {"interval_s": 0}}},
        "/autopilot/settings/interval_s",
    ),
    "autopilot-port-zero": ({"autopilot": {"metricsPort": 0}}, "/autopilot/metricsPort"),
}


@pytest.mark.parametrize("values,key", REJECTED.values(), ids=REJECTED.keys())
def test_schema_rejects_bad_values(
    chart: helm_python.Chart, values: dict[str, Any], key: str
) -> None:
    """values.schema.json refuses the values, naming the key at fault."""
    with pytest.raises(helm_python.HelmValuesError, match=re.escape(key)):
        chart.render(values, name=RELEASE, namespace=NAMESPACE)


REFUSED = {
    "grace-period-too-short": (
        {"gateway": {"terminationGracePeriodSeconds": 40}},
        "terminationGracePeriodSeconds",
    ),
    "lorax-and-external-student": (
        {"lorax": {"enabled": True}, "student": {"baseUrl": "http://lorax:8080/v1"}},
        "exclusive",
    ),
    "lorax-without-s3": ({"lorax": {"enabled": True}, "store": {"uri": "file:///s"}}, "s3://"),
    "nproc-with-gpus": (
        {"trainer": {"gpus": 2, "nproc": 4}},
        "trainer.nproc (4) and trainer.gpus (2) are exclusive",
    ),
    "autopilot-without-admin-token": (
        {"autopilot": {"enabled": True}},
        "autopilot.enabled needs gateway.adminToken.secretName",
    ),
    "task-on-a-schedule-and-on-autopilot": (
        {
            "gateway": {"adminToken": {"secretName": "protege-admin", "secretKey": "token"}},
            "trainer": {"enabled": True, "tasks": [{"name": "summarize"}]},
            "autopilot": {"enabled": True, "settings": {"tasks": {"summarize": {}}}},
        },
        'task "summarize" is trained both by a trainer CronJob',
    ),
}


@pytest.mark.parametrize("values,message", REFUSED.values(), ids=REFUSED.keys())
def test_templates_refuse_inconsistent_values(
    chart: helm_python.Chart, values: dict[str, Any], message: str
) -> None:
    """Values valid key by key but inconsistent together fail the render with a reason."""
    with pytest.raises(helm_python.HelmRenderError, match=re.escape(message)):
        chart.render(values, name=RELEASE, namespace=NAMESPACE)


def undocumented_values(text: str) -> list[str]:
    """Keys of values.yaml set to a value with no comment above them or above a parent."""
    missing: list[str] = []
    parents: list[tuple[int, str, bool]] = []  # (indent, key, documented)
    commented = False
    for line in text.splitlines():
        stripped = line.strip()
        if stripped.startswith("#"):
            commented = True
            continue
        match = re.match(r"^(\s*)([\w./-]+):(.*)$", line)
        if not match:
            commented = False
            continue
        indent, key, rest = len(match.group(1)), match.group(2), match.group(3).strip()
        while parents and parents[-1][0] >= indent:
            parents.pop()
        documented = commented or any(d for _, _, d in parents)
        if rest and not rest.startswith("#") and not documented:
            missing.append(".".join([*(k for _, k, _ in parents), key]))
        parents.append((indent, key, documented))
        commented = False
    return missing


def test_every_value_is_commented() -> None:
    """Each value in values.yaml is explained by a comment above it (or above its section)."""
    assert undocumented_values((CHART / "values.yaml").read_text()) == []
    assert undocumented_values("a:\n  b: 1\n") == ["a.b"]


def test_gateway_workers_per_pod_reach_its_config(chart: helm_python.Chart) -> None:
    """gateway.workers becomes server.workers of the rendered config: one process per pod by
    default (pods scale out), more when a pod is given the cores."""
    assert config_file(render(chart, {}))["server"]["workers"] == 1
    four = render(chart, {"gateway": {"workers": 4}})
    assert config_file(four)["server"]["workers"] == 4
