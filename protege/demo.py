"""``protege demo``: the whole loop on one machine, offline, with progress at every stage.

    teacher   a demo teacher: an OpenAI-compatible server answering a synthetic task whose
              correct answers are known (``protege.demo_teacher``; not an LLM)
    gateway   ``protege up`` (gateway + sidecar) with a config written into the work directory
    traffic   an application sends tickets through the ``openai`` client (teacher mode); the
              sidecar ships the records to the store
    train     ``protege train`` on the captured logs: dataset, LoRA, evaluation against the
              zero-shot base (the naive baseline), report and plots
    publish   the adapter into the store, if it beats the baseline
    student   the local LoRAX-compatible student server (``protege student``)
    shadow    the student answers in the background; the gateway scores it against the teacher
    canary    the student answers a share of the users
    full      the student answers everything (the teacher only if it fails)

Every stage can be skipped (``--skip``) or pointed at a real component (``--teacher-url``,
``--store s3://…``, ``--student-url`` for LoRAX). The guardrails stay on throughout: if one
steps the rollout back, the demo says so and fails. Every child process is stopped at the end,
however the demo ends. Exit codes: 0 done, 1 a stage failed, 3 the student did not beat the
baseline (not published), 130 interrupted.

``--autopilot`` runs the closed loop instead, nobody at the keyboard: the autopilot trains and
hands over every student, the gateway promotes them (``protege.demo_autopilot``).
"""

from __future__ import annotations

import asyncio
import json
import secrets
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

import yaml

from core.keys import ADAPTERS
from protege import demo_summary as summarize
from protege.demo_cli import STAGES
from protege.demo_options import TRAIN_SETTINGS as TRAIN_SETTINGS  # the loadtests' too
from protege.demo_options import DemoOptions, plan, train_settings
from protege.demo_procs import Children, DemoError, NotPublished, child_env, free_port
from protege.demo_progress import Progress, trainer_line
from protege.demo_rollout import Rollout
from protege.demo_teacher import JUDGE_MODEL
from protege.demo_traffic import App, Batch, Operator
from trainer import synthetic

TASK: Final = "demo-tickets"
ALIAS: Final = "tickets"
READY_S: Final = 300.0  # a child's start-up, a base model's load included
SHIPPED_S: Final = 120.0  # the sidecar shipping the traffic's records


class Demo:
    """The demo's state from stage to stage."""

    stages: tuple[str, ...] = STAGES

    def __init__(self, opts: DemoOptions) -> None:
        self.opts = opts
        self.fate = self._plan()
        self.workdir = opts.workdir.resolve()
        self.store = opts.store or f"file://{self.workdir / 'store'}"
        self.token = secrets.token_urlsafe(24)
        self.ports = {name: free_port() for name in ("teacher", "gateway", "sidecar", "student")}
        self.children = Children(
            self.workdir / "logs", child_env({"PROTEGE_ADMIN_TOKEN": self.token})
        )
        self.progress = Progress(self.fate, opts.say, self.stages)
        self.since = datetime.now(UTC)
        self.windows: dict[str, tuple[datetime, datetime]] = {}
        self.run_dir = self.workdir / "runs" / self.since.strftime("%Y%m%dT%H%M%SZ")
        self.adapter: str | None = None
        self.manifest: dict[str, Any] | None = None
        self.app: App | None = None
        self.operator: Operator | None = None
        self.rollout: Rollout | None = None

    def _plan(self) -> dict[str, str]:
        return plan(self.opts)

    # --- where things are ---

    @property
    def teacher_url(self) -> str:
        return self.opts.teacher_url or f"http://127.0.0.1:{self.ports['teacher']}/v1"

    @property
    def student_root(self) -> str:
        if self.opts.student_url:
            return self.opts.student_url.rstrip("/").removesuffix("/v1")
        return f"http://127.0.0.1:{self.ports['student']}"

    @property
    def gateway_url(self) -> str:
        return f"http://127.0.0.1:{self.ports['gateway']}"

    @property
    def config_file(self) -> Path:
        return self.workdir / "protege.yaml"

    # --- the run ---

    def run(self) -> dict[str, Any]:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.config_file.write_text(yaml.safe_dump(self._config(), sort_keys=False))
        self.opts.say(f"protege demo: work directory {self.workdir}, store {self.store}")
        try:
            for name in self.stages:
                if self.fate[name] == "run":
                    getattr(self, f"_{name}")()
                else:
                    self.progress.passed(name, self._passed_why(name))
            self._stop_services()
        finally:
            for client in (self.app, self.operator):
                if client is not None:
                    client.close()
            self.children.stop_all()
        return self._summary()

    def _passed_why(self, name: str) -> str:
        if self.fate[name] == "external":
            where = self.teacher_url if name == "teacher" else self.student_root
            return f"not started: using {where}"
        return "skipped"

    def _teacher(self) -> None:
        with self.progress.stage(
            "teacher", "starting the DEMO TEACHER (synthetic task, not an LLM)"
        ):
            args = ["protege.demo_teacher", "--port", str(self.ports["teacher"]),
                    "--delay-ms", str(self.opts.teacher_delay_ms)]  # fmt: skip
            self.children.start("teacher", args)
            self.children.wait_ready("teacher", f"{self.teacher_url}/models", READY_S)
            self.progress.detail(f"{self.teacher_url}: answers ticket routing from known rules")

    def _up(self) -> tuple[str, list[str]]:
        """What the gateway stage starts, in words and as ``protege up``'s arguments."""
        args = ["protege.cli", "up", "--config", str(self.config_file)]
        return "starting the gateway and the sidecar (protege up)", args

    def _gateway(self) -> None:
        what, args = self._up()
        with self.progress.stage("gateway", what):
            self.children.start("gateway", args)
            self.children.wait_ready("gateway", f"{self.gateway_url}/readyz", READY_S)
            self.operator = Operator(self.gateway_url, self.token, TASK)
            self.operator.reset()  # a work directory reused: back to teacher mode
            self.app = App(self.gateway_url, ALIAS, self.opts.seed)
            self.progress.detail(f"gateway {self.gateway_url}/v1 (model {ALIAS!r} -> task {TASK})")
            self.progress.detail(f"config {self.config_file}, logs {self.workdir / 'logs'}")

    def _config(self) -> dict[str, Any]:
        """The one settings file the gateway, the sidecar and the trainer read."""
        route: dict[str, Any] = {"alias": ALIAS, "task": TASK}
        if self.opts.teacher_model:
            route["teacher_model"] = self.opts.teacher_model
        route["rollout"] = {"mode": "teacher", "checks": {"json_object": True}}
        lorax_s3 = self.opts.student_url and self.store.startswith("s3://")
        prefix = f"{self.store}/{ADAPTERS}/" if lorax_s3 else ""
        return {
            "teacher": {"base_url": self.teacher_url},
            "student": {"base_url": f"{self.student_root}/v1", "adapter_prefix": prefix,
                        "connect_timeout_s": 2, "read_timeout_s": 120},
            "routes": [route],
            "store": self.store,
            "spool": {"dir": str(self.workdir / "spool"), "segment_max_age_s": 1},
            # One gateway process: the operator's rollout steps are then in force at once (with
            # --workers N each worker applies them within rollouts.sync_interval_s).
            "server": {"host": "127.0.0.1", "port": self.ports["gateway"], "workers": 1},
            "rollouts": {"sync_interval_s": 2, "shadow_timeout_s": 120,
                         "shadow_concurrency": max(16, self.opts.rollout_requests)},
            "sidecar": {"poll_interval_s": 0.25, "metrics_port": self.ports["sidecar"],
                        "compaction": {"enabled": False}},
            "trainer": {"tasks": {TASK: {
                "label": {"json_path": "$.category"},
                "classes": sorted(synthetic.CATEGORIES),
                "test_fraction": 0.25,
                "test_balanced_per_class": 8,
            }}},
            **({"judges": self._judges()} if self.opts.judge else {}),
        }  # fmt: skip

    def _judges(self) -> dict[str, Any]:
        """The pairwise judge, asked of the demo teacher (which judges by the known answers):
        the trainer judges the test sets with it, the gateway a sample of shadow pairs."""
        model = JUDGE_MODEL if not self.opts.teacher_url else self.opts.teacher_model
        if model is None:
            raise DemoError("--judge with --teacher-url needs --teacher-model (the judge's model)")
        return {
            "endpoint": {"base_url": self.teacher_url, "model": model},
            "max_calls_per_s": 50,
            "tasks": {TASK: {"pairwise": True, "shadow_max_per_s": 50}},
        }

    def _traffic(self) -> None:
        n = self.opts.requests
        with self.progress.stage(
            "traffic", f"{n} tickets through the openai client (teacher mode)"
        ):
            batch = self._send("traffic", n)
            self.progress.detail(f"waiting for the sidecar to ship {n} records to {self.store}")
            self._wait_shipped(n - len(batch.errors))

    def _send(self, stage: str, n: int, email_share: float = 0.0) -> Batch:
        """Send ``n`` requests as ``stage`` (its window spans every batch sent as it)."""
        assert self.app is not None
        start = datetime.now(UTC)
        batch = self.app.send(n, email_share)
        self.windows[stage] = (self.windows.get(stage, (start,))[0], datetime.now(UTC))
        self.progress.detail(batch.line())
        self.children.check("gateway")
        if len(batch.errors) == n:
            raise DemoError(f"no request of the {stage} stage was answered: {batch.errors[0]}")
        return batch

    def _wait_shipped(self, expected: int) -> None:
        from core.read import count_exchanges

        deadline = time.monotonic() + SHIPPED_S
        stored = 0
        while time.monotonic() < deadline:
            stored = count_exchanges(self.store, task=TASK, since=self.since)
            if stored >= expected:
                self.progress.detail(f"{stored} records of this run in the store")
                return
            self.children.check("gateway")
            time.sleep(0.5)
        tail = self.children.tail("gateway")
        raise DemoError(
            f"{stored} of {expected} records reached the store in {SHIPPED_S:.0f} s{tail}"
        )

    def _train(self) -> None:
        what = f"protege train on the captured logs (base {self.opts.base_model})"
        with self.progress.stage("train", what):
            code = self.children.run("train", self._train_args(), self._show_trainer)
            if code != 0:
                raise DemoError(f"protege train exited with {code}{self.children.tail('train')}")
            self.manifest = json.loads((self.run_dir / "run.json").read_text())

    def _train_args(self) -> list[str]:
        args = ["protege.cli", "train", "--task", TASK, "--config", str(self.config_file),
                "--store", self.store, "--base-model", self.opts.base_model,
                "--out", str(self.run_dir), "--no-publish"]  # fmt: skip
        return args + train_settings(self.opts)

    def _show_trainer(self, line: str) -> None:
        shown = trainer_line(line)
        if shown is not None:
            self.progress.detail(shown)

    def _publish(self) -> None:
        from trainer.publish import publish

        with self.progress.stage("publish", "publishing the adapter if it beats the baseline"):
            manifest = self.manifest or {}
            if not manifest.get("beats_baseline"):
                report = self.run_dir / "report.md"
                if not self.opts.allow_below_baseline:
                    raise NotPublished(f"the student does not beat the zero-shot base model; "
                                       f"not published (see {report})")  # fmt: skip
                self.progress.detail(
                    "below the baseline: published anyway (--allow-below-baseline)"
                )
            published = asyncio.run(publish(self.store, TASK, self.run_dir / "adapter", manifest))
            self.adapter = published.adapter_id
            self.progress.detail(f"{published.uri}")

    def _student(self) -> None:
        what = f"starting the local student server (base {self.opts.base_model})"
        with self.progress.stage("student", what):
            args = ["protege.cli", "student", "--base-model", self.opts.base_model, "--store",
                    self.store, "--port", str(self.ports["student"])]  # fmt: skip
            if self.opts.device:
                args += ["--device", self.opts.device]
            self.children.start("student", args)
            self.children.wait_ready("student", f"{self.student_root}/health", READY_S)
            self.progress.detail(f"{self.student_root} (LoRAX's API), adapters from {self.store}")

    # --- rollout ---

    def _rolling(self) -> Rollout:
        if self.rollout is None:
            assert self.operator is not None
            self.rollout = Rollout(self.operator, self._adapter(), self._send, self.progress.detail)
        return self.rollout

    def _adapter(self) -> str:
        """The adapter published here, else the newest one of the task in the store."""
        if self.adapter is None:
            from trainer.publish import list_versions, read_manifest

            versions = asyncio.run(list_versions(self.store, TASK))
            if not versions:
                raise DemoError(f"no adapter of {TASK} is published in {self.store} to roll out")
            self.adapter = f"{TASK}/{versions[-1]}"
            if self.manifest is None:
                self.manifest = asyncio.run(read_manifest(self.store, TASK, versions[-1]))
        return self.adapter

    def _shadow(self) -> None:
        n = self.opts.rollout_requests
        what = f"shadow: the teacher answers {n} tickets, the student answers them too, unseen"
        with self.progress.stage("shadow", what):
            self._rolling().shadow(n)

    def _canary(self) -> None:
        n, percent = self.opts.rollout_requests, self.opts.canary_percent
        what = f"canary: the student answers {percent:g} % of the users ({n} tickets)"
        with self.progress.stage("canary", what):
            self._rolling().canary(n, percent)

    def _full(self) -> None:
        n = self.opts.rollout_requests
        with self.progress.stage(
            "full", f"full rollout: the student answers everyone ({n} tickets)"
        ):
            self._rolling().full(n)

    # --- the end ---

    def _stop_services(self) -> None:
        """Stop the gateway and the sidecar first: on SIGTERM the sidecar ships the last records."""
        code = self.children.stop("gateway")
        if code not in (None, 0):
            self.opts.say(f"protege demo: the gateway and sidecar exited with {code}")

    def _summary(self) -> dict[str, Any]:
        records = self._records()
        report = self.run_dir / "report.md"
        out: dict[str, Any] = {
            "task": TASK,
            "total_s": round(self.progress.elapsed, 1),
            "stages": self.progress.records,
            "evaluation": summarize.evaluation(self.manifest),
            "judged": summarize.judged(records, self.manifest),
            **self._traffic_summary(records),
            "stepbacks": self.rollout.stepbacks if self.rollout else [],
            "adapter": self.adapter,
            "report": str(report) if report.exists() else None,
            "plots": sorted(str(p) for p in self.run_dir.glob("*.png")),
        }
        return self._written(out)

    def _records(self) -> list[dict[str, Any]]:
        """This run's exchanges in the store (the columns the summary reads)."""
        from core.read import read_exchanges

        columns = ["request_id", "ts", "backend", "route", "shadow_of", "status", "latency_ms",
                   "request", "response", "detail"]  # fmt: skip
        rows: list[dict[str, Any]] = read_exchanges(
            self.store, task=TASK, since=self.since, columns=columns
        ).to_pylist()
        return rows

    def _traffic_summary(self, records: list[dict[str, Any]]) -> dict[str, Any]:
        """What the records say: agreement, traffic per stage, latency."""
        return {
            "shadow": summarize.shadow_agreement(records),
            "live": summarize.live_agreement(records),
            "traffic": summarize.traffic_by_stage(records, self.windows),
            "latency": summarize.latency(records),
            "notes": self._notes(),
            "records": len(records),
            "store": self.store,
        }

    def _written(self, summary: dict[str, Any]) -> dict[str, Any]:
        """``summary`` with its file's path, written to ``<workdir>/summary.json``."""
        out = {**summary, "summary_file": str(self.workdir / "summary.json")}
        Path(out["summary_file"]).write_text(json.dumps(out, indent=2) + "\n")
        return out

    def _notes(self) -> list[str]:
        if self.fate["teacher"] == "run" and not self.opts.teacher_delay_ms:
            return ["the demo teacher answers at once; a hosted LLM takes hundreds of ms "
                    "(--teacher-delay-ms 500 mimics one)"]  # fmt: skip
        return []


def run_demo(opts: DemoOptions) -> dict[str, Any]:
    """Run the demo; its summary (also in ``<workdir>/summary.json``). Raises ``DemoError``."""
    if opts.autopilot:
        from protege.demo_autopilot import run_autopilot_demo

        return run_autopilot_demo(opts)
    summary = Demo(opts).run()
    opts.say("")
    opts.say(summarize.render(summary))
    return summary
