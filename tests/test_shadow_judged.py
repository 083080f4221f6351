"""Judged shadow agreement end to end: the gateway, a fake teacher, a fake LoRAX and a fake LLM
judge on loopback. For a task judged pairwise, shadow pairs go to the judge off the request path,
the verdict lands in the shadow record and the metrics, and the guardrails judge the pass rate.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import orjson
import pytest

from core.errors import ConfigError
from core.judging import PAIRWISE, Calibration, JudgesConfig, version
from core.judging.calibration import save
from core.store import open_store
from gateway.config import load_settings
from gateway.judged import split
from tests.conftest import RunningGateway
from tests.fake_judge import FakeJudge, judged_answer, judged_reference
from tests.fake_lorax import FakeLorax
from tests.spooled import spooled_records
from tests.test_rollout_modes import ask, echo
from trainer.synthetic_refunds import near_copy_wrong, teacher_answer, ticket, verdict

ADAPTER = "tickets/v3"
TOKEN = "admin-secret"
PRICE = 0.5  # per 1k judge tokens


@pytest.fixture
def lorax() -> Iterator[FakeLorax]:
    with FakeLorax() as fake:
        fake.says = echo
        yield fake


@pytest.fixture
def judge() -> Iterator[FakeJudge]:
    with FakeJudge() as fake:
        yield fake
        fake.gate.set()  # let whatever is held go, so that the server stops


def judges(fake: FakeJudge, tasks: dict[str, Any] | None = None) -> dict[str, Any]:
    """A judges section pointing at ``fake``; by default ``tickets`` is judged pairwise."""
    return {
        "endpoint": {"base_url": fake.base_url, "model": "judge-1"},
        "max_calls_per_s": 1000,
        "retry_base_s": 0.01,
        "price_per_1k_tokens": PRICE,
        "tasks": tasks if tasks is not None else
                 {"tickets": {"pairwise": True, "shadow_max_per_s": 1000}},
    }  # fmt: skip


@pytest.fixture
def start(make_gateway: Any, lorax: FakeLorax, judge: FakeJudge) -> Any:
    def start(
        rollout: dict[str, Any] | None = None,
        rollouts: dict[str, Any] | None = None,
        tasks: dict[str, Any] | None = None,
    ) -> RunningGateway:
        policy = {"adapter": ADAPTER, "mode": "shadow", **(rollout or {})}
        route = {"alias": "tickets", "task": "tickets", "rollout": policy}
        return make_gateway(
            student={"base_url": lorax.base_url}, routes=[route],
            judges=judges(judge, tasks), rollouts=rollouts or {},
        )  # fmt: skip

    return start


def client(gw: RunningGateway, timeout: float = 5) -> openai.OpenAI:
    return openai.OpenAI(base_url=gw.url + "/v1", api_key="k", max_retries=0, timeout=timeout)


def shadows(gw: RunningGateway) -> list[dict[str, Any]]:
    """The shadow records, once the gateway stopped (shadow work awaited)."""
    gw.stop()
    records = spooled_records(gw.settings.spool.dir, details=True)
    return [r for r in records if r["shadow_of"]]


def judged(gw: RunningGateway, verdict: str) -> float:
    return gw.metric("protege_shadow_judged_total", task="tickets", verdict=verdict)


def test_shadow_pairs_are_judged_and_recorded(start: Any, judge: FakeJudge) -> None:
    """Each shadow pair is judged against the teacher's answer: the verdict is in the shadow
    record, counted, and the window's agreement is the pass rate, not character agreement."""
    gw = start()
    c = client(gw)
    c.chat.completions.create(model="tickets", messages=ask("a fine answer"))
    c.chat.completions.create(model="tickets", messages=ask("a wrong answer"))
    assert gw.wait_for(lambda: judged(gw, "pass") + judged(gw, "fail") == 2)
    stats = gw.gateway.dispatch.monitor.stats("tickets")
    assert (stats.scored, stats.agreement) == (2, 1.0)  # exact copies: 2.0 by characters
    assert gw.metric("protege_shadow_judged_pass_rate", task="tickets") == 0.5
    records = shadows(gw)
    assert [r["detail"]["judged"] for r in records] == [
        {"criterion": PAIRWISE, "verdict": "pass", "reason": "rule says pass"},
        {"criterion": PAIRWISE, "verdict": "fail", "reason": "rule says fail"},
    ]
    assert all(r["detail"]["agreement"]["exact"] == 1.0 for r in records)
    user = judge.received[0].json["messages"][-1]["content"]
    assert judged_reference(user) == "echo: a fine answer" == judged_answer(user)
    assert "[user]\na fine answer" in user
    calls = {"task": "tickets", "criterion": PAIRWISE}
    assert gw.metric("protege_judge_calls_total", **calls, outcome="pass") == 1
    assert gw.metric("protege_judge_calls_total", **calls, outcome="fail") == 1
    assert gw.metric("protege_judge_tokens_total", **calls) == judge.tokens > 0
    cost = gw.metric("protege_judge_cost_total", task="tickets")
    assert cost == pytest.approx(judge.tokens / 1000 * PRICE)


def test_the_client_never_waits_for_the_judge(start: Any, judge: FakeJudge) -> None:
    """With the judge holding every answer, the client's answer still comes back; the pair is
    in the judge's hands, and the record gets the verdict once the judge answers."""
    judge.gate.clear()
    gw = start()
    answer = client(gw).chat.completions.create(model="tickets", messages=ask())
    assert answer.choices[0].message.content == "echo: hello there"
    assert gw.wait_for(lambda: judge.in_flight == 1)
    assert judged(gw, "pass") == 0
    judge.gate.set()
    assert gw.wait_for(lambda: judged(gw, "pass") == 1)
    (record,) = shadows(gw)
    assert record["detail"]["judged"]["verdict"] == "pass"


def test_a_late_verdict_is_pending_in_the_record_and_still_counted(
    start: Any, judge: FakeJudge
) -> None:
    """A record waits judge_wait_s for its verdict, then is written as pending; the verdict,
    when the judge gives it, still counts."""
    judge.gate.clear()
    gw = start(rollouts={"judge_wait_s": 0.2})
    client(gw).chat.completions.create(model="tickets", messages=ask())
    assert gw.wait_for(lambda: gw.metric("protege_spool_records_total") == 2)  # both written
    assert judged(gw, "pass") == 0
    judge.gate.set()
    assert gw.wait_for(lambda: judged(gw, "pass") == 1)
    assert gw.gateway.dispatch.monitor.stats("tickets").scored == 1
    (record,) = shadows(gw)
    assert record["detail"]["judged"]["verdict"] == "pending"


def test_shutdown_writes_waiting_records_at_once(start: Any, judge: FakeJudge) -> None:
    """Stopping while the judge holds a pair: the record waiting for it is written (pending)
    within the shadow grace, not lost, and the unjudged pair is counted as dropped."""
    judge.gate.clear()
    gw = start(rollouts={"shadow_timeout_s": 3})
    client(gw).chat.completions.create(model="tickets", messages=ask())
    assert gw.wait_for(lambda: judge.in_flight == 1)
    (record,) = shadows(gw)
    assert record["detail"]["judged"]["verdict"] == "pending"
    assert judged(gw, "dropped") == 1 and judged(gw, "pass") == 0


def test_a_full_queue_drops_the_pair_and_counts_it(start: Any, judge: FakeJudge) -> None:
    """One worker busy, one pair queued: the next pair finds the queue full and is recorded
    and counted as dropped, never judged."""
    judge.gate.clear()
    gw = start(rollouts={"judge_queue": 1, "judge_workers": 1})
    c = client(gw)
    c.chat.completions.create(model="tickets", messages=ask("one"))
    assert gw.wait_for(lambda: judge.in_flight == 1)
    c.chat.completions.create(model="tickets", messages=ask("two"))
    assert gw.wait_for(lambda: gw.gateway.judging.queued == 1)
    c.chat.completions.create(model="tickets", messages=ask("three"))
    assert gw.wait_for(lambda: judged(gw, "dropped") == 1)
    judge.gate.set()
    assert gw.wait_for(lambda: judged(gw, "pass") == 2)
    records = {r["detail"]["judged"]["verdict"]: r for r in shadows(gw)}
    assert sorted(records) == ["dropped", "pass"]
    assert records["dropped"]["detail"]["judged"]["reason"] == "the judge queue is full"
    assert judge.calls == 2


def test_a_garbage_verdict_is_an_error_never_a_pass(start: Any, judge: FakeJudge) -> None:
    """A judge answering prose: each pair is an error (recorded, counted), and none counts
    toward the agreement the guardrails judge, though the answers agree character for
    character."""
    judge.mode = "garbage"
    gw = start()
    c = client(gw)
    for _ in range(3):
        c.chat.completions.create(model="tickets", messages=ask())
    assert gw.wait_for(lambda: judged(gw, "error") == 3)
    assert judged(gw, "pass") == 0
    stats = gw.gateway.dispatch.monitor.stats("tickets")
    assert (stats.scored, stats.mean_agreement) == (0, None)
    assert gw.metrics.registry.get_sample_value(
        "protege_shadow_judged_pass_rate", {"task": "tickets"}
    ) is None  # fmt: skip
    calls = {"task": "tickets", "criterion": PAIRWISE, "outcome": "error"}
    assert gw.metric("protege_judge_calls_total", **calls) == 3
    notes = [r["detail"]["judged"] for r in shadows(gw)]
    assert {(n["verdict"], n["reason"]) for n in notes} == {
        ("error", "the judge did not answer a JSON object"),
    }  # fmt: skip


def test_pairs_over_the_judging_rate_are_limited(start: Any, judge: FakeJudge) -> None:
    """With shadow_max_per_s 0.1 the first pair is judged; the next ones are limited."""
    gw = start(tasks={"tickets": {"pairwise": True, "shadow_max_per_s": 0.1}})
    c = client(gw)
    for _ in range(3):
        c.chat.completions.create(model="tickets", messages=ask())
    assert gw.wait_for(lambda: judged(gw, "limited") == 2 and judged(gw, "pass") == 1)
    verdicts = sorted(r["detail"]["judged"]["verdict"] for r in shadows(gw))
    assert verdicts == ["limited", "limited", "pass"] and judge.calls == 1


def publish(store: Path) -> None:
    path = store / "adapters" / ADAPTER / "protege.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(orjson.dumps({"task": "tickets", "version": "v3"}))


def same_refund_verdict(user: str) -> bool:
    """The refund task's judging rule: the student gives the teacher's yes/no."""
    student = judged_answer(user).removeprefix("echo: ")
    teacher = judged_reference(user).removeprefix("echo: ")
    return verdict(student) == verdict(teacher) is not None


def test_a_canary_steps_back_on_the_judged_rate_not_on_similarity(
    start: Any, lorax: FakeLorax, judge: FakeJudge, tmp_path: Path
) -> None:
    """The student copies the teacher's sentence with the verdict flipped: similar enough by
    characters to pass min_agreement, judged wrong every time. Judgements landing once the
    task is a canary step it back to shadow, for agreement."""
    tickets = [ticket(random.Random(i)) for i in range(3)]
    wrong = {teacher_answer(t): near_copy_wrong(t) for t in tickets}
    lorax.says = lambda req: "echo: " + wrong[req["messages"][-1]["content"]]
    judge.rule = same_refund_verdict
    judge.gate.clear()
    publish(tmp_path / "store")
    guard = {"min_samples": 3, "min_agreement": 0.8}
    gw = start(rollout={"guardrails": guard}, rollouts={"admin_token": TOKEN})
    c = client(gw)
    for t in tickets:
        c.chat.completions.create(model="tickets", messages=ask(teacher_answer(t)))
    assert gw.wait_for(lambda: judge.in_flight == 3)
    put = httpx.put(
        f"{gw.url}/admin/routes/tickets", json={"mode": "canary", "percent": 0},
        headers={"Authorization": f"Bearer {TOKEN}"},
    )  # fmt: skip
    assert put.status_code == 200, put.text
    judge.gate.set()
    step = {"task": "tickets", "reason": "agreement"}
    assert gw.wait_for(lambda: gw.metric("protege_rollout_stepbacks_total", **step) == 1)
    assert gw.wait_for(lambda: gw.metric("protege_rollout_mode", task="tickets", mode="shadow"))
    assert judged(gw, "fail") == 3
    records = shadows(gw)
    assert [r["detail"]["judged"]["verdict"] for r in records] == ["fail"] * 3
    assert min(r["detail"]["agreement"]["overall"] for r in records) >= 0.8


def test_a_task_without_pairwise_is_unchanged(start: Any, judge: FakeJudge) -> None:
    """Another task is judged, not this one: its shadow pairs are scored by characters as
    before, nothing is asked of the judge, and its records carry no judgement."""
    gw = start(tasks={"other": {"pairwise": True}})
    client(gw).chat.completions.create(model="tickets", messages=ask())
    scored = {"task": "tickets", "outcome": "scored"}
    assert gw.wait_for(lambda: gw.metric("protege_shadow_requests_total", **scored) == 1)
    stats = gw.gateway.dispatch.monitor.stats("tickets")
    assert (stats.scored, stats.agreement) == (1, 1.0)
    (record,) = shadows(gw)
    assert "judged" not in record["detail"] and judge.calls == 0
    assert judged(gw, "pass") == judged(gw, "dropped") == 0


@pytest.mark.parametrize(
    ("overrides", "named"),
    [
        ({"judges": {"tasks": {"t": {"shadow_percent": 140}}}}, "judges.tasks.t.shadow_percent"),
        ({"judges": {"tasks": {"t": {"shadow_max_per_s": 0}}}},
         "judges.tasks.t.shadow_max_per_s"),
        ({"judges": {"tasks": {"t": {"pairwise": True}}}}, "judges.endpoint.model"),
        ({"rollouts": {"judge_queue": 0}}, "rollouts.judge_queue"),
        ({"rollouts": {"judge_wait_s": 0}}, "rollouts.judge_wait_s"),
    ],
)
def test_bad_judging_settings_name_their_key(overrides: dict[str, Any], named: str) -> None:
    """The gateway validates the judges section and its own judging knobs at start-up."""
    with pytest.raises(ConfigError, match=rf"config: {named} "):
        load_settings(env={}, **overrides)


def test_the_judges_section_is_optional_and_borrows_the_teacher() -> None:
    """Without a judges section nothing is judged; the judge's default endpoint is the
    teacher's, with the teacher's key."""
    teacher = {"base_url": "https://t.example/v1", "api_key": "k"}
    assert load_settings(env={}, teacher=teacher).judges.tasks == {}
    settings = load_settings(env={}, teacher=teacher, judges={"endpoint": {"model": "m"}})
    endpoint = settings.judge_settings().endpoint(env={})
    assert (endpoint.base_url, endpoint.model) == ("https://t.example/v1", "m")
    assert endpoint.api_key is not None and endpoint.api_key.get_secret_value() == "k"


def test_the_criterion_judging_shadow_pairs_is_flagged_until_calibrated(
    start: Any, tmp_path: Path
) -> None:
    """At start the gateway exports whether the pairwise criterion's calibration vouches for
    it: 1 while uncalibrated, 0 once a calibration of its version at or above
    min_agreement is in the store."""
    gw = start()
    labels = {"task": "tickets", "criterion": PAIRWISE}
    assert gw.metric("protege_judge_flagged", **labels) == 1
    criterion = gw.settings.judge_settings().criterion("tickets", PAIRWISE)
    gw.stop()
    calibration = Calibration(
        task="tickets", criterion=PAIRWISE, version=version(criterion), model="judge-1",
        min_agreement=0.8, n=10, agreement=0.9, tpr=0.9, tnr=0.9, tp=5, tn=4, fp=1, fn=0,
        errors=0, skipped=0,
    )  # fmt: skip

    async def store_it() -> None:
        async with open_store(f"file://{tmp_path / 'store'}") as store:
            await save(store, calibration)

    asyncio.run(store_it())
    assert start().metric("protege_judge_flagged", **labels) == 0


def test_workers_split_the_judges_spending() -> None:
    """Each of 4 workers may spend a quarter of the judge's rate and budget and of every
    task's shadow rate (its concurrency rounded up, never 0); one worker spends it all."""
    config = JudgesConfig.model_validate({
        "endpoint": {"base_url": "http://127.0.0.1:9/v1", "model": "judge-1"},
        "max_calls_per_s": 5, "max_concurrency": 6,
        "budget": {"calls": 2001, "tokens": 1000, "gateway_period_s": 60},
        "tasks": {"a": {"pairwise": True, "shadow_max_per_s": 2}, "b": {"shadow_max_per_s": 8}},
    })  # fmt: skip
    assert split(config, 1.0) is config
    quarter = split(config, 0.25)
    assert (quarter.max_calls_per_s, quarter.max_concurrency) == (1.25, 2)
    assert (quarter.budget.calls, quarter.budget.tokens) == (500, 250)
    assert quarter.budget.gateway_period_s == 60
    assert [t.shadow_max_per_s for t in quarter.tasks.values()] == [0.5, 2.0]
    assert quarter.tasks["a"].pairwise and split(config, 1 / 8).max_concurrency == 1
