"""``protege demo --autopilot``: the closed loop on one machine, offline, nobody at the keyboard.

    teacher   the demo teacher, as in ``protege demo``
    student   the local student server: it serves whatever adapter the store publishes
    gateway   ``protege up --autopilot``: gateway, sidecar and autopilot, from a config whose
              rollout starts in teacher mode and climbs to canary by itself (``auto_promote``)
    learn     tickets until the autopilot has trained v1 on ``--requests`` new exchanges,
              published it and put it in shadow, and the gateway has promoted it to canary
    shift     the traffic changes: most tickets are now long forwarded e-mail threads; the
              gateway measures the input drift, the autopilot retrains for it (v2, measured
              against v1 offline), publishes v2 as the challenger, and the gateway promotes v2
              once it proves as good on live traffic (or retires it)

After the start the demo only sends traffic and watches (``protege.demo_watch``): every step is
the autopilot's or the gateway's, and the summary ends with the task's timeline. Each run has a
store of its own (``<workdir>/runs/<time>/store`` unless ``--store``): the loop's memory starts
empty. Exit codes: 0 v2 took over, 1 a phase failed or timed out (with the autopilot's last
decision and its log), 3 a run was not published, 4 v2 was retired, 130 interrupted.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from dataclasses import asdict
from typing import Any, Final

from core.events import Event
from protege import demo_summary as summarize
from protege.demo import TASK, Demo
from protege.demo_options import DemoOptions, train_settings
from protege.demo_procs import DemoError, NotPromoted, NotPublished, tail_of
from protege.demo_summary import span
from protege.demo_watch import Look, Watch, route_line

STAGES: Final = ("teacher", "student", "gateway", "learn", "shift")
EMAIL_SHARE: Final = 0.7  # of the shifted traffic: long forwarded e-mail threads
# Guardrail and challenge evidence: enough to show the loop, far from production's hundreds.
SAMPLES: Final = 10
CHALLENGE_WINDOWS: Final = 10  # the challenger is retired after this many windows without a win
DRIFT_EXCHANGES: Final = 40  # new exchanges a drift retraining needs
POLL_S: Final = 1.0


def autopilot_plan(opts: DemoOptions) -> dict[str, str]:
    """Each stage's fate (``run`` or ``external``); a ``DemoError`` for options the closed
    loop does not take."""
    refused = [flag for flag, given in (
        ("--skip", bool(opts.skip)), ("--judge", opts.judge),
        ("--allow-below-baseline", opts.allow_below_baseline),
    ) if given]  # fmt: skip
    if refused:
        raise DemoError(
            f"--autopilot does not take {', '.join(refused)}: the autopilot runs every step, "
            "and the trainer publishes only a student at least as good as the zero-shot base "
            "and the champion (--champion-margin loosens the latter)"
        )
    fate = dict.fromkeys(STAGES, "run")
    if opts.teacher_url:
        fate["teacher"] = "external"
    if opts.student_url:
        fate["student"] = "external"
    return fate


class AutopilotDemo(Demo):
    """The closed-loop demo: the plain demo's services, then two phases of traffic."""

    stages = STAGES

    def __init__(self, opts: DemoOptions) -> None:
        super().__init__(opts)
        if not opts.store:  # a store of this run's own: no earlier status, adapter or event
            self.store = f"file://{self.run_dir / 'store'}"
        self.pilot_dir = self.run_dir / "autopilot"
        self.watch: Watch | None = None
        self.v1: str | None = None
        self.v2: str | None = None
        self.canary: dict[str, Any] = {}  # the route as it reached canary
        self.outcome: str | None = None  # promoted | retired

    def _plan(self) -> dict[str, str]:
        return autopilot_plan(self.opts)

    def run(self) -> dict[str, Any]:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        return super().run()

    # --- the services ---

    def _up(self) -> tuple[str, list[str]]:
        args = ["protege.cli", "up", "--autopilot", "--config", str(self.config_file),
                "--port", str(self.ports["gateway"])]  # fmt: skip
        return "starting the gateway, the sidecar and the autopilot (protege up --autopilot)", args

    def _gateway(self) -> None:
        super()._gateway()
        assert self.operator is not None
        self.watch = Watch(self.store, self.operator, self.pilot_dir, self.progress.detail)
        self.progress.detail(f"autopilot runs in {self.pilot_dir}")

    def _config(self) -> dict[str, Any]:
        config = super()._config()
        route = config["routes"][0]
        route["rollout"] = {**route["rollout"], **self._rollout()}
        config["spool"]["dir"] = str(self.run_dir / "spool")
        config["autopilot"] = self._autopilot()
        return config

    def _rollout(self) -> dict[str, Any]:
        """Teacher mode to start; the gateway promotes shadow to canary and referees the
        challenge on its own, over short windows and small samples (a demo's)."""
        o = self.opts
        return {
            "window_s": o.window_s, "shadow_percent": 100, "shadow_max_per_s": None,
            "guardrails": {"min_samples": SAMPLES, "min_agreement": o.min_agreement,
                           "max_check_failure_rate": o.max_check_failure_rate},
            "auto_promote": [{"mode": "canary", "percent": o.canary_percent}],
            "challenge": {"margin": o.challenge_margin, "min_samples": SAMPLES,
                          "deadline_s": CHALLENGE_WINDOWS * o.window_s, "percent": 100,
                          "max_per_s": 1000},
        }  # fmt: skip

    def _autopilot(self) -> dict[str, Any]:
        """The first run after ``--requests`` exchanges; the second only for drift (an hour's
        ``min_interval_s`` holds back a retraining for new data alone)."""
        o = self.opts
        rules = {
            "min_new_exchanges": o.requests, "min_interval_s": 3600,
            "drift_threshold": o.drift_threshold,
            "min_drift_exchanges": min(DRIFT_EXCHANGES, o.requests),
            "base_model": o.base_model, "train_args": train_settings(o),
            "champion_margin": o.champion_margin,
        }  # fmt: skip
        return {
            "interval_s": 2, "lease_ttl_s": 30, "poll_s": 1, "gateway_url": self.gateway_url,
            "metrics_port": None, "run_dir": str(self.pilot_dir), "tasks": {TASK: rules},
        }  # fmt: skip

    # --- the phases ---

    def _learn(self) -> None:
        n, batch = self.opts.requests, self.opts.rollout_requests
        what = (f"tickets until the autopilot trains v1 on {n} new exchanges and puts it in "
                "shadow, and the gateway promotes it to canary by itself")  # fmt: skip
        with self.progress.stage("learn", what):
            answered = 0
            for look in self._looks("learn", "v1 promoted to canary"):
                self._no_failed_run(look.events)
                route = look.route
                if route["adapter"] and route["mode"] == "canary":
                    self.v1, self.canary = route["adapter"], route
                    return
                if look.status.current is not None or (not route["adapter"] and answered >= n):
                    time.sleep(POLL_S)  # training, or the autopilot still counting
                elif not route["adapter"]:
                    sent = self._send("learn", min(batch, n - answered))
                    answered += len(sent.sent) - len(sent.errors)
                else:  # a few batches a window: the guardrails' samples, not a flood
                    started = time.monotonic()
                    self._send("shadow", batch)
                    time.sleep(max(POLL_S, self.opts.window_s / 4 - time.monotonic() + started))

    def _shift(self) -> None:
        what = (f"the traffic changes: {EMAIL_SHARE:.0%} long forwarded e-mail threads, until "
                "the autopilot retrains for the drift and the gateway promotes v2 over "
                f"{self.v1}")  # fmt: skip
        assert self.watch is not None and self.watch.last is not None
        start = len(self.watch.last.events)
        with self.progress.stage("shift", what):
            for look in self._looks("shift", "a drift retraining and its challenge decided"):
                events = look.since(start)
                self._no_failed_run(events)
                ended = [e for e in events if e.kind in ("promoted", "retired")]
                if ended:
                    self.outcome, self.v2 = ended[0].kind, ended[0].adapter
                    return
                if look.status.current is not None:
                    time.sleep(POLL_S)  # retraining
                    continue
                stage = "challenge" if look.route.get("challenger") else "shift"
                self._send(stage, self.opts.rollout_requests, EMAIL_SHARE)

    def _looks(self, phase: str, awaited: str) -> Iterator[Look]:
        """Looks at the loop, one per iteration, until the caller has seen enough; a
        ``DemoError`` if a child exits or the phase outlasts ``--phase-timeout-s``."""
        assert self.watch is not None
        deadline = time.monotonic() + self.opts.phase_timeout_s
        while True:
            self.children.check()
            yield self.watch.look()
            if time.monotonic() > deadline:
                raise self._timed_out(phase, awaited)

    def _timed_out(self, phase: str, awaited: str) -> DemoError:
        """Which phase, what it waited for, the route and the autopilot's last decision, and
        the tails of ``protege up``'s log and of the latest run's."""
        assert self.watch is not None
        last = self.watch.last
        route = route_line(last.route) if last else "unknown"
        runs = sorted(self.pilot_dir.glob(f"{TASK}/*/train.log"), key=lambda p: p.stat().st_mtime)
        return DemoError(
            f"the {phase} phase timed out after {span(self.opts.phase_timeout_s)} waiting for "
            f"{awaited}\n  route now: {route}\n  the autopilot's last decision: "
            f"{self.watch.last_decision()}{self.children.tail('gateway')}"
            + (tail_of(runs[-1]) if runs else "")
        )

    def _no_failed_run(self, events: list[Event]) -> None:
        """A run that ended without publishing ends the demo, saying why."""
        for event in events:
            if event.kind == "rejected":
                raise NotPublished(f"the autopilot's run {event.run_id} was not published: "
                                   f"{event.summary} (see {self.pilot_dir})")  # fmt: skip
            if event.kind in ("run_failed", "run_abandoned"):
                folder = self.pilot_dir / TASK / str(event.run_id)
                raise DemoError(f"the autopilot's run {event.run_id}: {event.summary} "
                                f"(its folder: {folder})")  # fmt: skip

    # --- the end ---

    def _summary(self) -> dict[str, Any]:
        records = self._records()
        events = asyncio.run(_timeline(self.store))
        final = self.watch.last.route if self.watch and self.watch.last else {}
        reports = sorted(self.pilot_dir.glob(f"{TASK}/*/run/report.md"))
        out: dict[str, Any] = {
            "task": TASK,
            "total_s": round(self.progress.elapsed, 1),
            "stages": self.progress.records,
            "outcome": self.outcome,
            "outcome_text": self._outcome_text(final),
            "adapters": {"v1": self.v1, "v2": self.v2},
            "adapter": final.get("adapter"),
            "route": {k: final.get(k) for k in ("mode", "percent", "adapter", "source", "reason")},
            "canary": {k: self.canary.get(k) for k in ("mode", "percent", "source", "reason")},
            "evaluation": summarize.evaluation(self._manifest(self.v2 or self.v1)),
            **self._traffic_summary(records),
            "stepbacks": [e.summary for e in events if e.kind == "stepped_back"],
            "report": str(reports[-1]) if reports else None,
            "plots": sorted(str(p) for p in reports[-1].parent.glob("*.png")) if reports else [],
            "timeline": [asdict(e) for e in events],
        }
        return self._written(out)

    def _outcome_text(self, route: dict[str, Any]) -> str:
        now = f"the route is now {route_line(route, why=False)}" if route else "route unknown"
        if self.outcome == "promoted":
            return f"{self.v2} took over from {self.v1} by itself; {now}"
        if self.outcome == "retired":
            return f"the gateway retired {self.v2}: {self.v1} keeps serving; {now}"
        return f"the loop did not finish; {now}"

    def _manifest(self, adapter: str | None) -> dict[str, Any] | None:
        if adapter is None:
            return None
        from trainer.publish import read_manifest

        manifest: dict[str, Any] = asyncio.run(
            read_manifest(self.store, TASK, adapter.split("/", 1)[1])
        )
        return manifest

    def _notes(self) -> list[str]:
        logs = self.children.log("gateway")
        return [*super()._notes(), f"the gateway, the sidecar and the autopilot log to {logs}"]


async def _timeline(store_uri: str) -> list[Event]:
    from core.events import timeline
    from core.store import open_store

    async with open_store(store_uri) as store:
        return await timeline(store, TASK)


def run_autopilot_demo(opts: DemoOptions) -> dict[str, Any]:
    """Run the closed-loop demo; its summary (also in ``<workdir>/summary.json``). Raises
    ``DemoError`` (``NotPromoted`` once the summary is shown, if v2 was retired)."""
    summary = AutopilotDemo(opts).run()
    opts.say("")
    opts.say(summarize.render(summary))
    if summary["outcome"] != "promoted":
        raise NotPromoted(summary["outcome_text"])
    return summary
