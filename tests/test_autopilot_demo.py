"""``protege demo --autopilot``: the closed loop end to end (tiny base model), and its parts."""

from __future__ import annotations

import asyncio
import json
import random
from dataclasses import asdict
from pathlib import Path
from typing import Any

import psutil
import pytest
import yaml

from core.events import Event, record
from core.profile import Profile, drift
from core.read import read_exchanges
from core.store import open_store
from core.text import prompt_text
from protege.cli import main
from protege.demo_autopilot import STAGES, AutopilotDemo, autopilot_plan
from protege.demo_options import DemoOptions
from protege.demo_procs import DemoError
from protege.demo_summary import render
from protege.demo_watch import Watch, route_line
from trainer import synthetic
from trainer.autopilot.decide import Decision
from trainer.autopilot.status import Run, Status, write_status
from trainer.tiny import save_tiny

REQUESTS, BATCH = 40, 20
# The timeline of a loop that ran through: v1 for new data, v2 for drift, v2 promoted.
LOOP = (
    "retrain_decided", "run_started", "published", "first_rollout", "climbed",
    "retrain_decided", "run_started", "published", "challenger_started", "promoted",
)  # fmt: skip


@pytest.fixture(scope="module")
def tiny_base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny model whose tokenizer knows both kinds of ticket."""
    rng = random.Random(1)
    texts = [synthetic.SYSTEM, *(synthetic.ticket(rng)[0] for _ in range(60))]
    texts += [synthetic.email_thread(rng)[0] for _ in range(30)]
    texts += [synthetic.answer(c) for c in synthetic.CATEGORIES]
    base = tmp_path_factory.mktemp("autopilot-demo") / "tiny"
    save_tiny(base, texts)
    return base


def _in_order(kinds: list[str], wanted: tuple[str, ...]) -> bool:
    """Whether ``wanted`` is a subsequence of ``kinds``."""
    left = iter(kinds)
    return all(kind in left for kind in wanted)


@pytest.mark.slow
@pytest.mark.timeout(420)
def test_closed_loop_demo_retrains_for_drift_and_promotes_v2(
    tmp_path: Path,
    tiny_base: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """With nobody at the keyboard the autopilot trains v1 and puts it in shadow, the gateway
    promotes it to canary, the shifted traffic makes the autopilot retrain for drift, and the
    gateway promotes v2 over v1; the timeline says so in order, and no process the demo
    started outlives it."""
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # tiny models: threads only add overhead
    workdir = tmp_path / "demo"
    code = main([
        "demo", "--autopilot", "--workdir", str(workdir), "--base-model", str(tiny_base),
        "--device", "cpu", "--requests", str(REQUESTS), "--rollout-requests", str(BATCH),
        "--window-s", "20", "--phase-timeout-s", "150",
        # A tiny, barely trained student must still flow through every step.
        "--min-agreement", "0", "--max-check-failure-rate", "1", "--champion-margin", "-1",
        "--challenge-margin", "-1", "--drift-threshold", "1",
        "--set", "max_steps=4", "--set", "eval_max_new_tokens=16",
    ])  # fmt: skip
    out = capsys.readouterr().out
    assert code == 0, out
    summary: dict[str, Any] = json.loads((workdir / "summary.json").read_text())
    assert [(s["name"], s["status"]) for s in summary["stages"]] == [(s, "ran") for s in STAGES]
    for stage in STAGES:
        assert f" {stage} " in out  # a progress line per stage
    assert "timeline  retrain_decided" in out and "Summary: task demo-tickets" in out

    v1, v2 = summary["adapters"]["v1"], summary["adapters"]["v2"]
    assert v1 and v2 and v1 != v2
    assert summary["canary"]["source"] == "promotion"  # the gateway's auto_promote, not ours
    assert summary["route"]["adapter"] == v2 and summary["route"]["mode"] == "canary"
    assert summary["outcome"] == "promoted"

    events = summary["timeline"]
    assert _in_order([e["kind"] for e in events], LOOP), [e["kind"] for e in events]
    decided = [e for e in events if e["kind"] == "retrain_decided"]
    assert decided[0]["figures"]["why"] == "new_data"
    assert decided[1]["figures"]["why"] == "drift" and "drift" in decided[1]["summary"]
    published = [e["adapter"] for e in events if e["kind"] == "published"]
    assert published[:2] == [v1, v2]
    assert [e["adapter"] for e in events if e["kind"] == "promoted"] == [v2]

    traffic = summary["traffic"]
    assert traffic["learn"] == {"requests": REQUESTS, "student": 0, "teacher": REQUESTS,
                                "student_share": 0.0}  # fmt: skip
    assert traffic["shift"]["student"] > 0 and summary["live"]["answers"] > 0
    stored = read_exchanges(summary["store"], task="demo-tickets").to_pylist()
    emails = [r for r in stored if "Subject: Fwd:" in r["request"] and r["backend"] == "student"]
    assert emails  # the shifted traffic reached the students
    assert not psutil.Process().children(recursive=True)


@pytest.mark.parametrize(
    ("changes", "flag"),
    [
        ({"skip": frozenset({"train"})}, "--skip"),
        ({"judge": True}, "--judge"),
        ({"allow_below_baseline": True}, "--allow-below-baseline"),
    ],
)
def test_autopilot_plan_refuses_what_the_loop_decides_itself(
    changes: dict[str, Any], flag: str
) -> None:
    """Options that skip a step or overrule publication are refused up front, by name."""
    with pytest.raises(DemoError, match=f"--autopilot does not take {flag}"):
        autopilot_plan(DemoOptions(autopilot=True, **changes))


def test_autopilot_plan_runs_every_stage_or_uses_the_real_components() -> None:
    """Every stage runs; a real teacher or student is used instead of starting one."""
    assert autopilot_plan(DemoOptions()) == dict.fromkeys(STAGES, "run")
    fate = autopilot_plan(DemoOptions(teacher_url="http://t/v1", student_url="http://l:8080"))
    assert fate == {**dict.fromkeys(STAGES, "run"), "teacher": "external", "student": "external"}


def test_the_config_it_writes_is_one_the_gateway_and_the_autopilot_load(tmp_path: Path) -> None:
    """The demo's config loads as the gateway's and the autopilot's settings: the rollout
    starts in teacher mode and promotes itself to canary, and the thresholds given reach
    the guardrails, the challenge and the autopilot's rules."""
    from gateway.config import load_settings
    from trainer.autopilot.config import load_autopilot_settings

    opts = DemoOptions(
        workdir=tmp_path, autopilot=True, requests=30, canary_percent=25, window_s=15,
        min_agreement=0, champion_margin=-1, challenge_margin=-0.5, drift_threshold=0.7,
        device="cpu", train_set=["max_steps=3"],
    )  # fmt: skip
    demo = AutopilotDemo(opts)
    demo.config_file.write_text(yaml.safe_dump(demo._config()))
    policy = load_settings(demo.config_file).routes[0].rollout
    assert policy.mode == "teacher" and policy.window_s == 15
    assert [(s.mode, s.percent) for s in policy.auto_promote] == [("canary", 25)]
    assert policy.guardrails.min_agreement == 0 and policy.challenge.margin == -0.5
    auto = load_autopilot_settings(demo.config_file)
    rules = auto.autopilot.tasks["demo-tickets"]
    assert auto.store == demo.store and demo.store.startswith(f"file://{demo.run_dir}")
    assert rules.min_new_exchanges == 30 and rules.drift_threshold == 0.7
    assert rules.champion_margin == -1 and rules.min_interval_s >= 3600
    assert "max_steps=3" in rules.train_args and "cpu" in rules.train_args


def test_email_threads_are_the_same_task_in_a_shape_that_drifts() -> None:
    """The demo teacher routes every e-mail thread by its cue, and a traffic mix of them
    drifts far past the threshold from short tickets, which hardly drift from themselves."""
    rng = random.Random(7)
    for _ in range(300):
        text, category = synthetic.email_thread(rng)
        assert synthetic.teacher_answer(text) == synthetic.answer(category)

    def profile(n: int, share: float) -> Profile:
        texts = (synthetic.mixed(rng, share)[0] for _ in range(n))
        return Profile.of(prompt_text(synthetic.messages(t)) for t in texts)

    reference = profile(150, 0.0)
    same = max(max(m.values()) for m in drift(reference, profile(200, 0.0)).values())
    shifted = max(max(m.values()) for m in drift(reference, profile(200, 0.7)).values())
    assert same < 0.2 < 1.0 < shifted


class _Operator:
    task = "demo-tickets"

    def __init__(self) -> None:
        self.route: dict[str, Any] = {
            "mode": "teacher", "percent": 0, "adapter": None, "challenger": None,
            "source": "config", "reason": None,
        }  # fmt: skip

    def rollout(self) -> dict[str, Any]:
        return dict(self.route)


def test_watch_shows_each_change_once_and_a_runs_progress_as_it_is_written(
    tmp_path: Path,
) -> None:
    """Each look shows the new events, a changed route and the new complete lines of the
    running training's log; nothing is shown twice."""
    store_uri, task = f"file://{tmp_path / 'store'}", "demo-tickets"
    op, lines = _Operator(), []
    watch = Watch(store_uri, op, tmp_path / "runs", lines.append)  # type: ignore[arg-type]
    log = tmp_path / "runs" / task / "r1" / "train.log"
    log.parent.mkdir(parents=True)
    log.write_text("[data] built snapshot s1\n[train] step 1")

    async def write(status: Status, kinds: list[str]) -> None:
        async with open_store(store_uri) as store:
            await write_status(store, status)
            for kind in kinds:
                await record(store, Event(task, kind, f"{kind} now", "autopilot"))

    run = Run("r1", 0.0, "new_data", None, "local")
    status = Status(task).decided(0.0, Decision("new_data", "40 new"), "me").started(run)
    asyncio.run(write(status, ["retrain_decided", "run_started"]))
    watch.look()
    watch.look()
    assert [ln.split(":")[0] for ln in lines if ln.startswith("timeline")] == [
        "timeline  retrain_decided", "timeline  run_started",
    ]  # fmt: skip
    assert sum("[data] built snapshot s1" in ln for ln in lines) == 1
    assert not any("step 1" in ln for ln in lines)  # a line still being written waits
    with log.open("a") as f:
        f.write(": loss 1.0\n")
    op.route = {**op.route, "mode": "shadow", "adapter": f"{task}/v1", "source": "admin"}
    watch.look()
    assert any(ln.startswith("[train] step 1: loss 1.0") for ln in lines)
    assert sum("route: shadow demo-tickets/v1 (admin)" in ln for ln in lines) == 1
    assert watch.last_decision() == "training run r1 (new_data)"


def test_route_line_says_mode_adapter_challenger_and_why() -> None:
    """One line per route: mode (with the canary's percent), adapters, and who set it why."""
    route = {"mode": "canary", "percent": 50.0, "adapter": "t/v1", "challenger": "t/v2",
             "source": "promotion", "reason": "held for 20s"}  # fmt: skip
    assert route_line(route) == "canary 50 % t/v1, challenger t/v2 (promotion: held for 20s)"
    assert route_line(route, why=False) == "canary 50 % t/v1, challenger t/v2"


def test_the_summary_shows_the_loop_and_its_timeline() -> None:
    """The closed loop's summary says how it ended, how v1 reached canary, and the timeline."""
    event = Event("demo-tickets", "promoted", "promoted: t/v2 0.9 vs t/v1 0.8", "gateway", 0.0)
    summary = {
        "task": "demo-tickets", "total_s": 61.0, "stages": [], "traffic": {}, "latency": {},
        "records": 3, "store": "file:///s", "summary_file": "/s.json",
        "outcome_text": "t/v2 took over from t/v1 by itself",
        "adapters": {"v1": "t/v1", "v2": "t/v2"},
        "canary": {"mode": "canary", "percent": 50.0, "source": "promotion",
                   "reason": "held for 20s"},
        "timeline": [asdict(event)],
    }  # fmt: skip
    text = render(summary)
    assert "loop       t/v2 took over from t/v1 by itself" in text
    assert "t/v1 reached canary 50 % by promotion (held for 20s)" in text
    assert "1970-01-01 00:00:00  promoted" in text
