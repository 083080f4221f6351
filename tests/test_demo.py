"""``protege demo``: a reduced demo end to end (tiny base model, few requests), and its parts."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import psutil
import pytest

from core.read import read_exchanges
from protege.cli import main
from protege.demo import Demo, DemoOptions, plan
from protege.demo_cli import STAGES
from protege.demo_procs import DemoError, NotPublished
from trainer import synthetic
from trainer.tiny import save_tiny

REQUESTS, ROLLOUT_REQUESTS = 48, 6


@pytest.fixture(scope="module")
def tiny_base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny model whose tokenizer knows the ticket task's words."""
    rng = random.Random(1)
    texts = [synthetic.SYSTEM, *(synthetic.ticket(rng)[0] for _ in range(60))]
    texts += [synthetic.answer(c) for c in synthetic.CATEGORIES]
    base = tmp_path_factory.mktemp("demo") / "tiny"
    save_tiny(base, texts)
    return base


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_reduced_demo_runs_every_stage(
    tmp_path: Path,
    tiny_base: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Every stage runs, the student answers canary and full traffic, the records are in the
    store, the judges (--judge) judged the test sets and the shadow pairs, the summary says so,
    and no process the demo started outlives it."""
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # tiny models: threads only add overhead
    workdir = tmp_path / "demo"
    code = main([
        "demo", "--workdir", str(workdir), "--base-model", str(tiny_base), "--device", "cpu",
        "--requests", str(REQUESTS), "--rollout-requests", str(ROLLOUT_REQUESTS),
        "--allow-below-baseline", "--set", "max_steps=4", "--set", "eval_max_new_tokens=16",
        "--judge",
    ])  # fmt: skip
    out = capsys.readouterr().out
    assert code == 0, out
    summary: dict[str, Any] = json.loads((workdir / "summary.json").read_text())
    assert [(s["name"], s["status"]) for s in summary["stages"]] == [(s, "ran") for s in STAGES]
    for stage in STAGES:
        assert f" {stage} " in out  # a progress line per stage
    assert "DEMO TEACHER" in out and "Summary: task demo-tickets" in out

    traffic = summary["traffic"]
    assert traffic["traffic"] == {"requests": REQUESTS, "student": 0, "teacher": REQUESTS,
                                  "student_share": 0.0}  # fmt: skip
    assert traffic["shadow"]["requests"] == ROLLOUT_REQUESTS and traffic["shadow"]["student"] == 0
    assert 0 < traffic["canary"]["student"] < ROLLOUT_REQUESTS
    assert traffic["full"] == {"requests": ROLLOUT_REQUESTS, "student": ROLLOUT_REQUESTS,
                               "teacher": 0, "student_share": 1.0}  # fmt: skip
    assert summary["shadow"]["calls"] == summary["shadow"]["scored"] == ROLLOUT_REQUESTS
    assert summary["live"]["answers"] == traffic["canary"]["student"] + ROLLOUT_REQUESTS
    assert set(summary["latency"]) == {"teacher", "student"}
    assert summary["evaluation"]["sets"]["test-balanced"]["student"] is not None
    assert summary["adapter"].startswith("demo-tickets/v")
    # --judge: the demo teacher judged the test sets and every shadow pair.
    judged = summary["judged"]
    assert set(judged["evaluation"]) == {"test-indist", "test-balanced"}
    assert sum(judged["shadow"].values()) == ROLLOUT_REQUESTS
    assert set(judged["shadow"]) <= {"pass", "fail"}
    assert "judged as good as the teacher" in out
    assert Path(summary["report"]).is_file() and summary["plots"]

    stored = read_exchanges(summary["store"], task="demo-tickets").to_pylist()
    assert len(stored) == summary["records"] == REQUESTS + 4 * ROLLOUT_REQUESTS
    assert {r["backend"] for r in stored if r["route"] == "student"} == {"student"}
    assert not psutil.Process().children(recursive=True)


@pytest.mark.parametrize("allowed", [False, True])
def test_a_student_below_the_baseline_is_published_only_when_allowed(
    tmp_path: Path, allowed: bool
) -> None:
    """A run whose student lost to the zero-shot base stops the demo at publication with exit
    code 3 and says why; with --allow-below-baseline it is published anyway."""
    demo = Demo(DemoOptions(workdir=tmp_path, allow_below_baseline=allowed, say=lambda _: None))
    (demo.run_dir / "adapter").mkdir(parents=True)
    for name in ("adapter_config.json", "adapter_model.safetensors"):
        (demo.run_dir / "adapter" / name).write_bytes(b"{}")
    demo.manifest = {"beats_baseline": False, "base_model": "tiny"}
    if allowed:
        demo._publish()
        assert demo.adapter is not None and demo.adapter.startswith("demo-tickets/v")
        return
    with pytest.raises(NotPublished, match="does not beat the zero-shot base") as caught:
        demo._publish()
    assert caught.value.exit_code == 3
    assert not (tmp_path / "store" / "adapters").exists()


@pytest.mark.parametrize(
    ("changes", "fate", "error"),
    [
        ({}, dict.fromkeys(STAGES, "run"), None),
        ({"teacher_url": "http://t/v1", "student_url": "http://lorax:8080"},
         {**dict.fromkeys(STAGES, "run"), "teacher": "external", "student": "external"}, None),
        ({"skip": frozenset({"train"})},
         {**dict.fromkeys(STAGES, "run"), "train": "skipped", "publish": "skipped"}, None),
        ({"skip": frozenset({"teacher"})}, None, "--skip teacher needs --teacher-url"),
        ({"skip": frozenset({"student"})}, None, "--skip student needs --student-url"),
        ({"skip": frozenset({"gateway"})}, None, "--skip gateway leaves nothing"),
        ({"skip": frozenset({"gateway", "traffic", "shadow", "canary", "full"})},
         {**dict.fromkeys(STAGES, "run"),
          **dict.fromkeys(("gateway", "traffic", "student", "shadow", "canary", "full"),
                          "skipped")}, None),
    ],
)  # fmt: skip
def test_plan_names_what_a_skipped_stage_leaves_missing(
    changes: dict[str, Any], fate: dict[str, str] | None, error: str | None
) -> None:
    """Each stage's fate follows from --skip and the real components given; a plan leaving a
    stage without what it needs is refused up front, naming the option."""
    opts = DemoOptions(**changes)
    if error is None:
        assert plan(opts) == fate
    else:
        with pytest.raises(DemoError, match=error):
            plan(opts)


async def test_demo_teacher_answers_the_task_and_says_it_is_a_demo() -> None:
    """The demo teacher labels itself in its model list and answers each ticket with the
    known category, the same whether streamed or not."""
    from aiohttp.test_utils import TestClient, TestServer

    from protege.demo_teacher import LABEL, create_app

    text, category = synthetic.ticket(random.Random(3))
    body = {"model": "tickets", "messages": synthetic.messages(text)}
    async with TestClient(TestServer(create_app())) as client:
        models = await (await client.get("/v1/models")).json()
        assert models["data"][0]["owned_by"] == LABEL and "not an LLM" in LABEL
        plain = await (await client.post("/v1/chat/completions", json=body)).json()
        stream = await client.post(
            "/v1/chat/completions",
            json={**body, "stream": True, "stream_options": {"include_usage": True}},
        )
        events = [line[6:] for line in (await stream.text()).splitlines() if line]
    assert plain["choices"][0]["message"]["content"] == synthetic.answer(category)
    assert plain["usage"]["total_tokens"] > 0
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    streamed = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"])
    assert streamed == synthetic.answer(category) and chunks[-1]["usage"]["total_tokens"] > 0


@pytest.mark.parametrize(
    ("teacher", "student", "verdict"),
    [
        ('{"category": "bug"}', '{"category":"bug"}', "pass"),  # the same JSON, other spacing
        ('{"category": "bug"}', '{"category": "billing"}', "fail"),
        ('{"category": "bug"}', "bug", "fail"),
        ("plain words", "  plain words ", "pass"),
    ],
)
def test_the_demo_teacher_judges_by_the_known_answer(
    teacher: str, student: str, verdict: str
) -> None:
    """As ``demo-judge`` it answers a pairwise judge's message in the strict verdict format,
    passing a student answer that is the teacher's JSON (or text)."""
    from core.judging import JudgeItem, parse_verdict
    from core.judging.config import pairwise_criterion
    from core.judging.prompts import user_message
    from protege.demo_teacher import JUDGE_MODEL, completion

    criterion = pairwise_criterion("demo-tickets", JUDGE_MODEL, 0.8)
    user = user_message(criterion, JudgeItem(student, request="a ticket", reference=teacher))
    body = {"model": JUDGE_MODEL, "messages": [{"role": "user", "content": user}]}
    answer = completion(body)["choices"][0]["message"]["content"]
    assert parse_verdict(answer).verdict == verdict
