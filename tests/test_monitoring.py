"""The chart's alert rules and Grafana dashboard, against promtool and a real Prometheus.

Offline: ``promtool check rules`` on the rules file and on the chart's PrometheusRule, and one
``promtool test rules`` case per alert behaviour. Live: a gateway and a sidecar run as
processes, scraped every second by Prometheus, while a burst of traffic flows and the store is
down (so the log-pipeline alerts are provoked), then while the store is back. Every PromQL
expression of the dashboard and of the rules must evaluate, and those over what the traffic
produced must return data.
"""

from __future__ import annotations

import contextlib
import copy
import json
import os
import re
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import helm_python
import httpx
import openai
import pytest
import yaml

from tests.fake_lorax import FakeLorax
from tests.fake_teacher import FakeTeacher
from tests.prometheus import Prometheus, PromQLError, promtool, wait_until
from tests.s3_server import S3Server, free_port

CHART = Path(__file__).resolve().parents[1] / "helm" / "protege"
RULES = CHART / "rules" / "protege.rules.yaml"
DASHBOARD = CHART / "dashboards" / "protege.json"
PROTEGE = str(Path(sys.executable).with_name("protege"))
BUCKET = "protege-live"
SCRAPE_S = 1.0

# Grafana's variables as the live test substitutes them: every task, windows that span the
# burst of traffic.
GRAFANA_VARS = {"task": ".*", "__rate_interval": "1m", "__interval": "15s", "__range": "10m"}

# Dashboard panels whose every query returns data once the test's traffic has flowed: teacher
# traffic (answers, 5xx, streams, a cut stream), student traffic in shadow (text and JSON
# answers), canary (a failing student stepped back) and hybrid (failed checks, prompts too
# long), the spool and the sidecar's shipping. The drift gauges need a window of a few hundred
# prompts and only have to evaluate.
PANELS_WITH_DATA = {
    "Requests by task and backend",
    "Error ratio by task and backend",
    "Requests by status",
    "Upstream errors by backend and reason",
    "Incomplete streams by reason",
    "Tokens by task, backend and kind",
    "Request latency p50 / p99 by backend",
    "Gateway overhead p50 / p99",
    "Time to first token p50 / p99 by backend",
    "Rollout mode by task",
    "Student share (rollout percent)",
    "Share of traffic per backend",
    "Rollout changes and step-backs",
    "Mean shadow agreement by task and measure",
    "Shadow calls by outcome",
    "JSON field agreement",
    "Fallbacks to the teacher by reason",
    "Output-check failure ratio by check",
    "Hybrid requests sent to the teacher",
    "Drift monitor intake",
    "Records dropped (range)",
    "Oldest segment in the spool",
    "Since the last upload",
    "Quarantined segments (range)",
    "Spool size",
    "Records captured, shipped, dropped",
    "Uploads",
}
# Alerts whose condition the test provokes: the store is down and the spool is tiny, a share
# of the requests fail at the teacher, and the hybrid student's answers fail their checks.
ALERTS_WITH_DATA = {
    "ProtegeUploadsFailing",
    "ProtegeRecordsDropped",
    "ProtegeSpoolFull",
    "ProtegeGateway5xxRate",
    "ProtegeOutputCheckFailures",
}
# Student routes of the live gateway: (alias = task, rollout).
STUDENT_ROUTES = {
    "summaries": {"mode": "shadow", "adapter": "summaries/v1"},
    "triage": {"mode": "canary", "percent": 100, "adapter": "triage/v1",
               "guardrails": {"min_samples": 5, "max_error_rate": 0.2}},
    "drafts": {"mode": "hybrid", "adapter": "drafts/v1", "max_prompt_chars": 200,
               "checks": {"must_match": ["^never"]}},
}  # fmt: skip
JSON_FORMAT: Any = {"type": "json_object"}
# Alerts that must reach the firing state (with `for` shortened) during the outage.
ALERTS_FIRING = {"ProtegeUploadsFailing", "ProtegeRecordsDropped"}


def rule_groups() -> list[dict[str, Any]]:
    groups: list[dict[str, Any]] = yaml.safe_load(RULES.read_text(encoding="utf-8"))["groups"]
    return groups


def alert_rules() -> dict[str, dict[str, Any]]:
    return {r["alert"]: r for g in rule_groups() for r in g["rules"] if "alert" in r}


@dataclass(frozen=True)
class PanelQuery:
    panel: str
    ref: str
    expr: str


def dashboard_queries() -> list[PanelQuery]:
    board = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    return [
        PanelQuery(p["title"], t["refId"], t["expr"])
        for p in board["panels"]
        if p["type"] != "row"
        for t in p["targets"]
    ]


def grafana_to_promql(expr: str) -> str:
    """``expr`` with Grafana's variables replaced; an unknown variable is an error."""

    def sub(match: re.Match[str]) -> str:
        name = match.group(1) or match.group(2)
        if name not in GRAFANA_VARS:
            raise KeyError(f"unknown dashboard variable ${name} in {expr}")
        return GRAFANA_VARS[name]

    return re.sub(r"\$\{(\w+)\}|\$(\w+)", sub, expr)


# ---------------------------------------------------------------- offline: the dashboard

ROWS = [
    "Traffic and errors by task and backend",
    "Latency, gateway overhead and time to first token",
    "Rollout state and share of traffic per backend",
    "Shadow agreement",
    "Fallbacks and output checks",
    "Input drift per feature",
    "Log pipeline",
    "Autopilot",
]


def test_dashboard_has_one_row_per_concern() -> None:
    """The dashboard's rows are the concerns an operator watches, in order."""
    board = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    assert [p["title"] for p in board["panels"] if p["type"] == "row"] == ROWS


def test_dashboard_is_importable() -> None:
    """Unique panel ids, queries on the data-source variable, panels laid out without overlap."""
    board = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    assert board["uid"] and board["title"] and board["schemaVersion"] >= 36
    variables = {v["name"]: v for v in board["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    panels = board["panels"]
    assert len({p["id"] for p in panels}) == len(panels)
    cells: set[tuple[int, int]] = set()
    for panel in panels:
        pos = panel["gridPos"]
        assert pos["x"] + pos["w"] <= 24, panel["title"]
        area = {
            (x, y)
            for x in range(pos["x"], pos["x"] + pos["w"])
            for y in range(pos["y"], pos["y"] + pos["h"])
        }
        assert not area & cells, f"{panel['title']} overlaps another panel"
        cells |= area
        if panel["type"] != "row":
            assert panel["datasource"]["uid"] == "${datasource}"
            assert panel["targets"] and all(
                t["datasource"]["uid"] == "${datasource}" for t in panel["targets"]
            )
            assert len({t["refId"] for t in panel["targets"]}) == len(panel["targets"])


# ---------------------------------------------------------------- offline: promtool


def test_rules_file_passes_promtool_check() -> None:
    """promtool accepts the plain rules file: valid PromQL, labels and annotation templates."""
    result = promtool("check", "rules", str(RULES))
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(alert_rules())} rules found" in result.stdout


def test_chart_prometheus_rule_passes_promtool_check(tmp_path: Path) -> None:
    """The PrometheusRule the chart renders holds rules promtool accepts, alert labels added."""
    values = {"monitoring": {"prometheusRule": {"enabled": True, "alertLabels": {"team": "ml"}}}}
    with helm_python.Chart.load(CHART) as chart:
        rendered = chart.render(values, name="rel", namespace="ml")
    rule = yaml.safe_load(rendered["protege/templates/prometheusrule.yaml"])
    path = tmp_path / "rule.yaml"
    path.write_text(yaml.safe_dump(rule["spec"]), encoding="utf-8")
    result = promtool("check", "rules", str(path))
    assert result.returncode == 0, result.stdout + result.stderr
    labels = [r["labels"] for g in rule["spec"]["groups"] for r in g["rules"]]
    assert labels and all(label["team"] == "ml" for label in labels)


@dataclass(frozen=True)
class AlertCase:
    """One behaviour of one alert, as a promtool unit test at 1-minute resolution."""

    alert: str
    series: dict[str, str]
    # eval time (minutes) -> the label sets of the alerts firing then (alertname/severity added)
    expect: dict[int, list[dict[str, str]]] = field(default_factory=dict)


GW = 'job="gateway", instance="gw-0"'
SC = 'job="sidecar", instance="gw-0"'


def requests(backend: str, route: str, status: str) -> str:
    labels = f'task="t", backend="{backend}", route="{route}", status="{status}"'
    return f"protege_requests_total{{{GW}, {labels}}}"


STUDENT_OK = requests("student", "student", "200")
FALLBACK = requests("teacher", "fallback", "200")
TEACHER_OK = requests("teacher", "teacher", "200")
TEACHER_5XX = requests("teacher", "teacher", "502")
FALLBACKS = f'protege_fallbacks_total{{{GW}, task="t", reason="timeout"}}'
AP = 'job="autopilot", instance="ap-0", task="t"'
RUNS_FAILED = f'protege_autopilot_runs_total{{{AP}, outcome="failed"}}'
RUNS_PUBLISHED = f'protege_autopilot_runs_total{{{AP}, outcome="published"}}'
GW_LABELS = {"job": "gateway", "instance": "gw-0"}
SC_LABELS = {"job": "sidecar", "instance": "gw-0"}

ALERT_CASES = {
    "records-dropped-fires-on-one-drop": AlertCase(
        "ProtegeRecordsDropped",
        {f'protege_spool_dropped_total{{{GW}, reason="spool_full"}}': "0 0 0 1 1 1"},
        {3: [{**GW_LABELS, "reason": "spool_full"}]},
    ),
    "records-dropped-quiet-without-drops": AlertCase(
        "ProtegeRecordsDropped",
        {f'protege_spool_dropped_total{{{GW}, reason="spool_full"}}': "0x10"},
        {10: []},
    ),
    "spool-full-fires-while-at-cap": AlertCase(
        "ProtegeSpoolFull", {f"protege_spool_full{{{GW}}}": "0 0 1 1"}, {3: [GW_LABELS]}
    ),
    "spool-age-fires-after-5m-over-15m": AlertCase(
        "ProtegeSpoolAgeHigh",
        {f"protege_spool_oldest_segment_age_seconds{{{SC}}}": "0+60x40"},
        {18: [], 25: [SC_LABELS]},
    ),
    "uploads-failing-fires-when-nothing-ships": AlertCase(
        "ProtegeUploadsFailing",
        {
            f"protege_upload_errors_total{{{SC}}}": "0+2x30",
            f"protege_shipped_segments_total{{{SC}}}": "0x30",
        },
        {3: [], 10: [SC_LABELS]},
    ),
    "uploads-failing-quiet-while-retries-succeed": AlertCase(
        "ProtegeUploadsFailing",
        {
            f"protege_upload_errors_total{{{SC}}}": "0+1x30",
            f"protege_shipped_segments_total{{{SC}}}": "0+3x30",
        },
        {20: []},
    ),
    "student-errors-fire-above-5-percent": AlertCase(
        "ProtegeStudentErrorRate",
        {STUDENT_OK: "0+90x30", FALLBACK: "0+10x30", FALLBACKS: "0+10x30"},
        {20: [{"task": "t"}]},
    ),
    "student-errors-fire-when-every-call-falls-back": AlertCase(
        "ProtegeStudentErrorRate",
        {FALLBACK: "0+10x30", FALLBACKS: "0+10x30"},
        {20: [{"task": "t"}]},
    ),
    "student-errors-quiet-below-20-calls": AlertCase(
        "ProtegeStudentErrorRate",
        {STUDENT_OK: "0+0.5x40", FALLBACK: "0+0.5x40", FALLBACKS: "0+0.5x40"},
        {30: []},
    ),
    "student-errors-quiet-at-2-percent": AlertCase(
        "ProtegeStudentErrorRate",
        {STUDENT_OK: "0+98x30", FALLBACK: "0+2x30", FALLBACKS: "0+2x30"},
        {20: []},
    ),
    "check-failures-fire-above-10-percent": AlertCase(
        "ProtegeOutputCheckFailures",
        {
            f'protege_output_checks_total{{{GW}, task="t"}}': "0+100x30",
            f'protege_output_checks_failed_total{{{GW}, task="t"}}': "0+20x30",
        },
        {20: [{"task": "t"}]},
    ),
    "shadow-agreement-fires-below-80-percent": AlertCase(
        "ProtegeShadowAgreementLow",
        {
            f'protege_shadow_agreement_sum{{{GW}, task="t", measure="overall"}}': "0+35x60",
            f'protege_shadow_agreement_count{{{GW}, task="t", measure="overall"}}': "0+50x60",
        },
        {45: [{"task": "t"}]},
    ),
    "shadow-agreement-quiet-at-90-percent": AlertCase(
        "ProtegeShadowAgreementLow",
        {
            f'protege_shadow_agreement_sum{{{GW}, task="t", measure="overall"}}': "0+45x60",
            f'protege_shadow_agreement_count{{{GW}, task="t", measure="overall"}}': "0+50x60",
        },
        {45: []},
    ),
    "drift-fires-after-30m-above-0.1": AlertCase(
        "ProtegeInputDrift",
        {f'protege_input_drift{{{GW}, task="t", feature="length", measure="psi"}}': "0.3x60"},
        {20: [], 40: [{"task": "t", "feature": "length", "measure": "psi"}]},
    ),
    "drift-quiet-below-0.1": AlertCase(
        "ProtegeInputDrift",
        {f'protege_input_drift{{{GW}, task="t", feature="length", measure="js"}}': "0.05x60"},
        {40: []},
    ),
    "gateway-5xx-fires-above-5-percent": AlertCase(
        "ProtegeGateway5xxRate",
        {TEACHER_OK: "0+90x30", TEACHER_5XX: "0+10x30"},
        {20: [{}]},
    ),
    "retrains-failing-fires-after-3-failures-in-a-day": AlertCase(
        "ProtegeRetrainsFailing",
        {RUNS_FAILED: "0 0 1 1 2 2 3 3x30", RUNS_PUBLISHED: "0x40"},
        {10: [], 17: [{"task": "t"}]},
    ),
    "retrains-failing-quiet-at-2-failures": AlertCase(
        "ProtegeRetrainsFailing",
        {RUNS_FAILED: "0 0 1 1 2 2x30", RUNS_PUBLISHED: "0x40"},
        {20: []},
    ),
    "retrains-failing-quiet-once-a-run-is-published": AlertCase(
        "ProtegeRetrainsFailing",
        {RUNS_FAILED: "0 0 1 1 2 2 3 3x30", RUNS_PUBLISHED: "0 0 0 0 0 0 0 0 1x30"},
        {20: []},
    ),
    "gateway-5xx-quiet-at-1-percent": AlertCase(
        "ProtegeGateway5xxRate",
        {TEACHER_OK: "0+99x30", TEACHER_5XX: "0+1x30"},
        {20: []},
    ),
}


def rules_without_annotations(path: Path) -> Path:
    """A copy of the rules file without annotations: unit tests compare labels only."""
    groups = copy.deepcopy(rule_groups())
    for group in groups:
        for rule in group["rules"]:
            rule.pop("annotations", None)
    path.write_text(yaml.safe_dump({"groups": groups}), encoding="utf-8")
    return path


def test_every_alert_has_unit_cases() -> None:
    """Each alert of the rules file is exercised by at least one promtool unit case."""
    assert {case.alert for case in ALERT_CASES.values()} == set(alert_rules())


@pytest.mark.parametrize("case", ALERT_CASES.values(), ids=ALERT_CASES.keys())
def test_alert_behaviour(case: AlertCase, tmp_path: Path) -> None:
    """The alert fires (or stays quiet) on the series as the case says, per promtool."""
    severity = alert_rules()[case.alert]["labels"]["severity"]
    test = {
        "rule_files": [str(rules_without_annotations(tmp_path / "rules.yaml"))],
        "evaluation_interval": "1m",
        "tests": [
            {
                "interval": "1m",
                "input_series": [{"series": s, "values": v} for s, v in case.series.items()],
                "alert_rule_test": [
                    {
                        "eval_time": f"{minute}m",
                        "alertname": case.alert,
                        "exp_alerts": [
                            {"exp_labels": {**labels, "severity": severity}} for labels in alerts
                        ],
                    }
                    for minute, alerts in case.expect.items()
                ],
            }
        ],
    }
    path = tmp_path / "test.yaml"
    path.write_text(yaml.safe_dump(test), encoding="utf-8")
    result = promtool("test", "rules", str(path))
    assert result.returncode == 0, result.stdout + result.stderr


# ---------------------------------------------------------------- live: a real Prometheus


class Service:
    """A ``protege`` command as a child process, its output in a log file."""

    def __init__(self, name: str, args: list[str], env: dict[str, str], log: Path) -> None:
        self.name, self.log = name, log
        with log.open("wb") as out:
            self.proc = subprocess.Popen(
                [PROTEGE, *args], env=env, stdout=out, stderr=subprocess.STDOUT
            )

    def wait_healthy(self, url: str, timeout: float = 60) -> None:
        def healthy() -> bool:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited:\n{self.tail()}")
            try:
                return httpx.get(url, timeout=2).status_code == 200
            except httpx.TransportError:
                return False

        if not wait_until(healthy, timeout):
            raise RuntimeError(f"{self.name} not healthy in {timeout} s:\n{self.tail()}")

    def tail(self) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-30:])

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


@dataclass
class Live:
    prometheus: Prometheus
    sidecar_url: str
    # During the outage: alerts seen firing, and each rule expression's result (or error).
    fired: set[str]
    outage: dict[str, list[dict[str, Any]] | PromQLError]


def clean_env(**extra: str) -> dict[str, str]:
    """This process's environment without Protégé or AWS settings, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PROTEGE_", "AWS_"))}
    return {**env, **extra}


def live_rules(path: Path) -> Path:
    """The rules file with every `for` cut to one second, so the provoked alerts fire now."""
    groups = copy.deepcopy(rule_groups())
    for group in groups:
        for rule in group["rules"]:
            if "for" in rule:
                rule["for"] = "1s"
    path.write_text(yaml.safe_dump({"groups": groups}), encoding="utf-8")
    return path


def send_student_traffic(lorax: FakeLorax, gateway_url: str, scraped: Callable[[], None]) -> None:
    """Shadowed text and JSON answers, a canary whose student fails until it is stepped back,
    and hybrid answers that fail their checks or whose prompts are too long."""
    client = openai.OpenAI(base_url=f"{gateway_url}/v1", api_key="client-key", max_retries=0)
    short: Any = [{"role": "user", "content": "a short ticket"}]
    long_: Any = [{"role": "user", "content": "a long ticket " * 40}]
    lorax.says = lambda req: (
        '{"label": "positive", "confidence": 0.5}' if req.get("response_format") else "a summary"
    )
    for i in range(24):
        client.chat.completions.create(model="summaries", messages=short)
        client.chat.completions.create(model="summaries", messages=short,
                                       response_format=JSON_FORMAT)  # fmt: skip
        client.chat.completions.create(model="drafts", messages=long_ if i % 4 == 0 else short)
        client.chat.completions.create(model="drafts", messages=short)
        lorax.mode = "status:500" if i >= 4 else "ok"
        client.chat.completions.create(model="triage", messages=short)
        lorax.mode = "ok"
        if i < 2:
            scraped()


def stepped_back(gateway_url: str) -> bool:
    """Whether the gateway has applied a guardrail's rollout change (its own /metrics)."""
    text = httpx.get(f"{gateway_url}/metrics", timeout=5).text
    return any(
        line.startswith("protege_rollout_changes_total{") and 'source="guardrail"' in line
        for line in text.splitlines()
    )


def publish_adapters(store: Path) -> None:
    """The student routes' adapters, published (a manifest is what the gateway looks for)."""
    for rollout in STUDENT_ROUTES.values():
        manifest = store / "adapters" / str(rollout["adapter"]) / "protege.json"
        manifest.parent.mkdir(parents=True)
        manifest.write_text("{}", encoding="utf-8")


def send_traffic(teacher: FakeTeacher, gateway_url: str, scraped: Callable[[], None]) -> None:
    """Answers, streams, teacher 500s and cut streams; prompts padded to fill the spool.

    Each kind starts with one request, then waits for a scrape: a labelled counter is born on
    its first increment, and only increments after Prometheus first saw it count in rate().
    """
    client = openai.OpenAI(base_url=f"{gateway_url}/v1", api_key="client-key", max_retries=0)
    pad = "lorem ipsum " * 100
    messages: Any = [{"role": "user", "content": f"classify this ticket: {pad}"}]

    def answer(i: int) -> None:
        client.chat.completions.create(model="tickets", messages=messages)
        model = "tickets" if i % 2 else "summaries"
        for _ in client.chat.completions.create(model=model, messages=messages, stream=True):
            pass

    def fail(_: int) -> None:
        with pytest.raises(openai.InternalServerError):
            client.chat.completions.create(model="tickets", messages=messages)

    def cut(_: int) -> None:
        with contextlib.suppress(openai.APIError, httpx.HTTPError):
            for _ in client.chat.completions.create(
                model="tickets", messages=messages, stream=True
            ):
                pass

    for mode, send, count in (("ok", answer, 60), ("status:500", fail, 20), ("cut", cut, 3)):
        teacher.mode = mode
        for i in range(count):
            send(i)
            if i < 2:
                scraped()
    teacher.mode = "ok"


def evaluate_rules(prometheus: Prometheus) -> dict[str, list[dict[str, Any]] | PromQLError]:
    results: dict[str, list[dict[str, Any]] | PromQLError] = {}
    for name, rule in alert_rules().items():
        try:
            results[name] = prometheus.query(rule["expr"])
        except PromQLError as exc:
            results[name] = exc
    return results


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    """Gateway and sidecar processes scraped by Prometheus: traffic while the store is down
    (tiny spool: records are dropped), then the store comes up and the sidecar ships."""
    work = tmp_path_factory.mktemp("live")
    gw_port, sc_port = free_port(), free_port()
    with contextlib.ExitStack() as stack:
        teacher = stack.enter_context(FakeTeacher())
        lorax = stack.enter_context(FakeLorax())
        publish_adapters(work / "gateway-store")
        store = S3Server()  # not started: the store is down
        stack.callback(store.stop)
        config = {
            "teacher": {"base_url": teacher.base_url},
            "student": {"base_url": lorax.base_url},
            "routes": [
                {"alias": "tickets", "task": "tickets", "teacher_model": "teacher-large"},
                *({"alias": t, "task": t, "rollout": r} for t, r in STUDENT_ROUTES.items()),
            ],
            "spool": {
                "dir": str(work / "spool"),
                "segment_max_bytes": 8192,
                "segment_max_age_s": 0.5,
                "max_bytes": 65536,
                "on_full": "drop",
            },
            "store": f"s3://{BUCKET}/logs",
            "server": {"host": "127.0.0.1", "port": gw_port},
            "sidecar": {
                "poll_interval_s": 0.2,
                "retry_base_s": 0.2,
                "retry_max_s": 1,
                "shutdown_wait_s": 1,
                "metrics_host": "127.0.0.1",
                "metrics_port": sc_port,
                "compaction": {"enabled": False},
            },
        }
        path = work / "protege.yaml"
        path.write_text(yaml.safe_dump(config), encoding="utf-8")
        # The gateway keeps its rollout state in a local store: only the sidecar meets the outage.
        gw_env = clean_env(PROTEGE_STORE=f"file://{work / 'gateway-store'}")
        gateway = Service("gateway", ["gateway", "--config", str(path)], gw_env, work / "gw.log")
        stack.callback(gateway.stop)
        sidecar = Service(
            "sidecar", ["sidecar", "--config", str(path)], clean_env(**store.env()), work / "sc.log"
        )
        stack.callback(sidecar.stop)
        gateway_url, sidecar_url = f"http://127.0.0.1:{gw_port}", f"http://127.0.0.1:{sc_port}"
        gateway.wait_healthy(f"{gateway_url}/healthz")
        sidecar.wait_healthy(f"{sidecar_url}/healthz")
        targets = {"gateway": [f"127.0.0.1:{gw_port}"], "sidecar": [f"127.0.0.1:{sc_port}"]}
        prometheus = Prometheus(work, targets, [live_rules(work / "rules.yaml")], SCRAPE_S)
        stack.enter_context(prometheus)
        assert wait_until(prometheus.targets_up, 20), "scrape targets are not up"

        send_traffic(teacher, gateway_url, prometheus.scraped)
        send_student_traffic(lorax, gateway_url, prometheus.scraped)
        # The canary's step-back is applied in the background: wait until the gateway counts
        # it, then for two scrapes, so increase() over the new counter has two samples.
        assert wait_until(lambda: stepped_back(gateway_url), 20), "no step-back applied"
        prometheus.scraped()
        prometheus.scraped()
        fired: set[str] = set()

        def provoked() -> bool:
            fired.update(n for n in ALERTS_FIRING if prometheus.firing(n))
            return fired == ALERTS_FIRING

        wait_until(provoked, 30)
        outage = evaluate_rules(prometheus)

        store.start()
        store.client().create_bucket(Bucket=BUCKET)
        shipped = wait_until(
            lambda: (
                (prometheus.value("protege_last_upload_timestamp_seconds") or 0) > 0
                and (prometheus.value("protege_shipped_records_total") or 0) > 0
            ),
            30,
        )
        assert shipped, f"nothing shipped after the store came back:\n{sidecar.tail()}"
        yield Live(prometheus, sidecar_url, fired, outage)


@pytest.mark.slow
def test_uploads_failing_alert_fires_while_the_store_is_down(live: Live) -> None:
    """With the store unreachable, ProtegeUploadsFailing reaches the firing state."""
    assert "ProtegeUploadsFailing" in live.fired


@pytest.mark.slow
def test_records_dropped_alert_fires_when_the_spool_overflows(live: Live) -> None:
    """With the store down and the spool at its cap, ProtegeRecordsDropped fires."""
    assert "ProtegeRecordsDropped" in live.fired


@pytest.mark.slow
def test_every_rule_expression_evaluates(live: Live) -> None:
    """Prometheus evaluates every alert expression without an error."""
    errors = {name: str(r) for name, r in live.outage.items() if isinstance(r, PromQLError)}
    assert errors == {}


@pytest.mark.slow
def test_provoked_rule_expressions_return_data(live: Live) -> None:
    """The expressions of the alerts the outage and the teacher's 500s provoke hold samples."""
    empty = {name for name in ALERTS_WITH_DATA if not live.outage.get(name)}
    assert empty == set()


@pytest.mark.slow
def test_every_dashboard_expression_evaluates(live: Live) -> None:
    """Prometheus evaluates every query of every dashboard panel without an error."""
    errors = {}
    for q in dashboard_queries():
        try:
            live.prometheus.query(grafana_to_promql(q.expr))
        except PromQLError as exc:
            errors[f"{q.panel} [{q.ref}]"] = str(exc)
    assert errors == {}


@pytest.mark.slow
def test_dashboard_panels_over_sent_traffic_return_data(live: Live) -> None:
    """Each query of the panels about the traffic sent and the log pipeline returns samples."""
    queries = [q for q in dashboard_queries() if q.panel in PANELS_WITH_DATA]
    assert {q.panel for q in queries} == PANELS_WITH_DATA, "a listed panel is not on the board"
    empty = [
        f"{q.panel} [{q.ref}]"
        for q in queries
        if not live.prometheus.query(grafana_to_promql(q.expr))
    ]
    assert empty == []


@pytest.mark.slow
def test_sidecar_health_probe_answers(live: Live) -> None:
    """The sidecar answers the chart's liveness probe path on its metrics port."""
    assert httpx.get(f"{live.sidecar_url}/healthz", timeout=5).status_code == 200
