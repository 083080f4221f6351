"""A challenger proven on live traffic: the pure decision, its bookkeeping, and the whole loop
through the real gateway (a fake teacher and a fake LoRAX on loopback, adapters published in a
file store): promoted when better, retired at its deadline, always behind the guardrails."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import openai
import orjson
import pytest
from pydantic import ValidationError

from core.errors import ConfigError
from core.live import Scores
from core.store import FileStore
from gateway.background import Background
from gateway.challenge import outcome
from gateway.config import load_settings
from gateway.guard import Stats
from gateway.metrics import Metrics
from gateway.monitor import Monitor
from gateway.policy import RolloutPolicy
from gateway.rollouts import Active, Doc, Rollouts
from tests.conftest import RunningGateway
from tests.fake_lorax import FakeLorax
from tests.fake_teacher import FakeTeacher, wait_for
from tests.spooled import spooled_records
from tests.test_monitor import Tracked
from tests.test_rollout_modes import ask, echo, publish

TOKEN = "admin-secret"
CHAMPION, CHALLENGER = "tickets/v3", "tickets/v4"


def stats(scored: int, mean: float) -> Stats:
    return Stats(scored=scored, agreement=scored * mean)


def challenged(**challenge: Any) -> RolloutPolicy:
    return RolloutPolicy.model_validate(
        {"mode": "canary", "percent": 10, "adapter": CHAMPION, "challenger": CHALLENGER,
         "challenge": {"min_samples": 10, "margin": 0.05, "deadline_s": 100, **challenge}}
    )  # fmt: skip


# -- the decision ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("champion", "challenger", "elapsed_s", "expected"),
    [
        (stats(10, 0.80), stats(10, 0.85), 1, "promote"),  # exactly the margin
        (stats(10, 0.80), stats(10, 0.84), 1, None),  # short of the margin
        (stats(10, 0.80), stats(9, 0.99), 1, None),  # the challenger lacks samples
        (stats(9, 0.10), stats(10, 0.99), 1, None),  # the champion lacks samples
        (stats(10, 0.80), stats(10, 0.84), 100, "retire"),  # deadline, not better
        (stats(0, 0.0), stats(0, 0.0), 150, "retire"),  # deadline, no evidence at all
        (stats(10, 0.80), stats(10, 0.90), 100, "promote"),  # a win at the deadline counts
        (stats(50, 0.95), stats(50, 0.20), 99.9, None),  # worse, but time is left
    ],
)
def test_autopilot_outcome_table(
    champion: Stats, challenger: Stats, elapsed_s: float, expected: str | None
) -> None:
    """Promote on enough samples each side and challenger >= champion + margin; retire at the
    deadline otherwise; else the duel goes on."""
    assert outcome(challenged(), champion, challenger, elapsed_s) == expected


def test_autopilot_outcome_without_a_challenger_is_none() -> None:
    """A policy with no challenger has nothing to decide, however late."""
    policy = challenged().model_copy(update={"challenger": None})
    assert outcome(policy, stats(99, 0.1), stats(99, 1.0), 1e9) is None


def test_autopilot_negative_margin_lets_a_slightly_worse_challenger_win() -> None:
    """A margin below 0 accepts a challenger a little worse than the champion."""
    policy = challenged(margin=-0.1)
    assert outcome(policy, stats(10, 0.9), stats(10, 0.81), 1) == "promote"


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"challenger": CHALLENGER}, "needs an adapter"),
        ({"adapter": CHAMPION, "challenger": CHAMPION}, "must differ from the adapter"),
        ({"adapter": CHAMPION, "challenger": "v4"}, "should match pattern"),
        ({"adapter": CHAMPION, "challenge": {"margin": 1.5}}, "less than or equal to 1"),
        ({"adapter": CHAMPION, "challenge": {"max_per_s": 0}}, "greater than 0"),
    ],
)
def test_autopilot_policy_refuses_a_bad_challenger(fields: dict[str, Any], message: str) -> None:
    """The challenger needs a champion, differs from it, and is a <task>/<version>."""
    with pytest.raises(ValidationError, match=message):
        RolloutPolicy.model_validate(fields)


def test_autopilot_config_names_the_challenger_key() -> None:
    """In the config file a bad challenger fails start-up naming its key; an ``autopilot``
    section (another service's) is ignored."""
    route = {"alias": "t", "task": "t", "rollout": {"challenger": "t/v2"}}
    with pytest.raises(ConfigError, match=r"routes\[0\]\.rollout\.challenger needs an adapter"):
        load_settings(env={}, routes=[route])
    settings = load_settings(env={}, autopilot={"anything": 1})
    assert settings.routes == ()


# -- bookkeeping: when the challenge began, and the duel ------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def test_autopilot_challenge_started_follows_the_challenger(tmp_path: Path) -> None:
    """Set when a change brings a new challenger, kept across other changes (a step-back),
    cleared with the challenger, stored in the shared document."""
    clock, metrics = Clock(), Metrics()
    rollouts = Rollouts({}, FileStore(tmp_path), metrics, str, clock)
    await rollouts.load()
    policy = challenged()
    await rollouts.change("tickets", policy, "admin")
    assert rollouts.get("tickets").challenge_started == 1000.0  # type: ignore[union-attr]
    clock.now = 1050.0
    await rollouts.force("tickets", policy.model_copy(update={"mode": "shadow"}), "guardrail", "x")
    assert rollouts.get("tickets").challenge_started == 1000.0  # type: ignore[union-attr]
    other = policy.model_copy(update={"challenger": "tickets/v5"})
    await rollouts.change("tickets", other, "admin")
    assert rollouts.get("tickets").challenge_started == 1050.0  # type: ignore[union-attr]
    stored = Doc.decode((tmp_path / "rollouts" / "routes.json").read_bytes())
    assert stored.tasks["tickets"].challenge_started == 1050.0
    await rollouts.change("tickets", other.model_copy(update={"challenger": None}), "admin")
    assert rollouts.get("tickets").challenge_started is None  # type: ignore[union-attr]
    started = {"task": "tickets", "outcome": "started"}
    assert metrics.registry.get_sample_value("protege_challenges_total", started) == 2


def test_autopilot_old_documents_decode_without_challenge_started() -> None:
    """An entry written before challenges were timed decodes: no start without a challenger,
    its change's time with one."""
    plain = Active(RolloutPolicy(mode="canary", adapter=CHAMPION), "admin", 5.0)
    dueling = Active(challenged(), "admin", 7.0, None, 7.0)
    raw = {"plain": plain.to_json(), "dueling": dueling.to_json()}
    for entry in raw.values():
        del entry["challenge_started"]
    body = orjson.dumps({"version": 1, "revision": 3, "tasks": raw})
    assert Doc.decode(body).tasks == {"plain": plain, "dueling": dueling}


async def test_autopilot_duel_scores_only_the_current_pair(tmp_path: Path) -> None:
    """Scores land per role; a score of an adapter no longer in the duel is dropped; the
    challenger's scores never reach the guardrail window."""
    rollouts = Rollouts({"tickets": challenged()}, FileStore(tmp_path), Metrics(), str)
    await rollouts.load()
    monitor = Monitor(rollouts, Metrics(), Background(), str, Clock())
    assert monitor.duel("tickets") == (Scores(CHAMPION, 0, None), Scores(CHALLENGER, 0, None))
    monitor.dueled("tickets", "champion", CHAMPION, 0.5)
    monitor.dueled("tickets", "challenger", CHALLENGER, 1.0)
    monitor.dueled("tickets", "challenger", "tickets/v1", 0.0)  # an old challenger's
    assert monitor.duel("tickets") == (Scores(CHAMPION, 1, 0.5), Scores(CHALLENGER, 1, 1.0))
    assert monitor.stats("tickets").scored == 0
    assert monitor.duel("drafts") == (None, None)


# -- through the gateway ------------------------------------------------------------------------


def answers_well(good: str) -> Callable[[dict[str, Any]], str]:
    """A student whose adapter ``good`` agrees with the teacher and whose others do not."""

    def says(req: dict[str, Any]) -> str:
        return echo(req) if req["model"] == good else "no idea, sorry"

    return says


@pytest.fixture
def start(make_gateway: Any, lorax: FakeLorax, tmp_path: Path) -> Any:
    for adapter in (CHAMPION, CHALLENGER):
        publish(tmp_path / "store", adapter)

    def start(**rollout: Any) -> RunningGateway:
        route = {"alias": "tickets", "task": "tickets", "rollout": {"adapter": CHAMPION, **rollout}}
        rollouts = {"admin_token": TOKEN, "sync_interval_s": 0.2}
        return make_gateway(student={"base_url": lorax.base_url}, routes=[route], rollouts=rollouts)

    return start


def admin(gw: RunningGateway, method: str, body: dict[str, Any] | None = None) -> httpx.Response:
    headers = {"authorization": f"Bearer {TOKEN}"}
    with httpx.Client(base_url=gw.url, headers=headers, timeout=10) as c:
        return c.request(method, "/admin/routes/tickets", json=body)


def send(gw: RunningGateway, user: str = "someone") -> None:
    with openai.OpenAI(base_url=gw.url + "/v1", api_key="k", max_retries=0, timeout=10) as c:
        answer = c.chat.completions.create(model="tickets", messages=ask(), user=user)
    assert answer.choices[0].message.content


def events(tmp_path: Path, wanted: int) -> list[dict[str, Any]]:
    """The task's timeline in the store once it holds ``wanted`` events, oldest first."""
    folder = tmp_path / "store" / "events" / "tickets"
    assert wait_for(lambda: len(list(folder.glob("*.json"))) >= wanted, 5)
    found = [orjson.loads(p.read_bytes()) for p in folder.glob("*.json")]
    return sorted(found, key=lambda e: e["at"])


def policy_of(gw: RunningGateway) -> RolloutPolicy:
    policy = gw.gateway.rollouts.policy("tickets")
    assert policy is not None
    return policy


def test_autopilot_better_challenger_takes_over_a_canary_keeping_its_percent(
    start: Any, lorax: FakeLorax, tmp_path: Path
) -> None:
    """Set through the admin API, a challenger that agrees with the teacher where the champion
    does not is promoted after min_samples on the canary's teacher share: same mode, same
    percent; the change, the metrics and the store's timeline say so."""
    lorax.says = answers_well(CHALLENGER)
    gw = start(mode="canary", percent=50)
    challenge = {"min_samples": 3, "max_per_s": 100}
    assert admin(gw, "PUT", {"challenger": CHALLENGER, "challenge": challenge}).status_code == 200
    for i in range(40):
        send(gw, user=f"user-{i}")
        if gw.wait_for(lambda: policy_of(gw).challenger is None, 0.05):
            break
    policy, active = policy_of(gw), gw.gateway.rollouts.get("tickets")
    assert (policy.mode, policy.percent, policy.adapter) == ("canary", 50, CHALLENGER)
    assert active is not None and active.source == "challenge"
    assert active.reason and "over 3" in active.reason and "1.000" in active.reason
    assert gw.metric("protege_challenges_total", task="tickets", outcome="started") == 1
    assert gw.metric("protege_challenges_total", task="tickets", outcome="promoted") == 1
    assert gw.metric("protege_challenge_samples", task="tickets", role="challenger") == 0
    (promoted,) = events(tmp_path, 1)
    assert (promoted["kind"], promoted["source"], promoted["adapter"]) == (
        "promoted", "gateway", CHALLENGER,
    )  # fmt: skip
    assert promoted["figures"]["challenger_agreement"] == 1.0
    assert promoted["figures"]["champion_samples"] >= 3
    assert promoted["figures"]["champion_agreement"] < 0.5


def test_autopilot_worse_challenger_is_retired_at_the_deadline(
    start: Any, lorax: FakeLorax, tmp_path: Path
) -> None:
    """In shadow mode the request's shadow call is the champion's side; a worse challenger is
    scored beside it, then retired at its deadline with no further traffic."""
    lorax.says = answers_well(CHAMPION)
    challenge = {"deadline_s": 2.0, "min_samples": 50, "max_per_s": 100}
    gw = start(mode="shadow", challenger=CHALLENGER, challenge=challenge)
    send(gw)
    scored = {"task": "tickets", "outcome": "scored"}
    assert gw.wait_for(lambda: gw.metric("protege_shadow_requests_total", **scored) == 2)
    champion, challenger = gw.gateway.monitor.duel("tickets")
    assert champion == Scores(CHAMPION, 1, 1.0)
    assert challenger is not None and challenger.scored == 1
    assert (challenger.agreement or 0) < 0.5
    agreement = gw.metric("protege_challenge_agreement", task="tickets", role="champion")
    assert agreement == 1.0
    assert gw.wait_for(lambda: policy_of(gw).challenger is None, 5)
    assert (policy_of(gw).mode, policy_of(gw).adapter) == ("shadow", CHAMPION)
    assert gw.metric("protege_challenges_total", task="tickets", outcome="retired") == 1
    (retired,) = events(tmp_path, 1)
    assert (retired["kind"], retired["adapter"]) == ("retired", CHALLENGER)
    assert retired["figures"]["challenger_samples"] == 1
    gw.stop()
    shadows = [r for r in spooled_records(gw.settings.spool.dir, details=True) if r["shadow_of"]]
    roles = {r["detail"]["role"]: (r["adapter"], r["detail"]["why"]) for r in shadows}
    assert roles == {"champion": (CHAMPION, "shadow"), "challenger": (CHALLENGER, "challenge")}
    assert len(lorax.received) == 2  # the champion was asked once, not twice


def test_autopilot_guardrail_step_back_wins_over_the_challenge(
    start: Any, lorax: FakeLorax, tmp_path: Path
) -> None:
    """A champion failing its checks in student mode is stepped back to shadow with the
    challenger kept; the challenger, proven in shadow, is then promoted into shadow mode (not
    the mode before the step-back)."""
    lorax.says = answers_well(CHALLENGER)
    gw = start(
        mode="student",
        challenger=CHALLENGER,
        challenge={"min_samples": 3, "max_per_s": 100},  # more than the step-back needs
        checks={"must_match": ["^echo"]},
        guardrails={"min_samples": 2},
    )
    for _ in range(30):
        send(gw)
        if gw.wait_for(lambda: policy_of(gw).adapter == CHALLENGER, 0.05):
            break
    policy = policy_of(gw)
    assert (policy.mode, policy.adapter, policy.challenger) == ("shadow", CHALLENGER, None)
    stepped, promoted = events(tmp_path, 2)
    assert (stepped["kind"], stepped["adapter"]) == ("stepped_back", CHAMPION)
    assert stepped["figures"]["reason"] == "check_failures"
    assert stepped["figures"]["failed_checks"] >= 2 and stepped["figures"]["checked"] >= 2
    assert (promoted["kind"], promoted["adapter"]) == ("promoted", CHALLENGER)
    assert gw.metric("protege_rollout_stepbacks_total", task="tickets", reason="check_failures")


def test_autopilot_student_mode_is_refereed_by_the_teacher(
    start: Any, lorax: FakeLorax, teacher: FakeTeacher, tmp_path: Path
) -> None:
    """With the champion answering every client, a sampled request is also put to the teacher
    in the background (recorded as route=referee, shadow_of the client's request) and both the
    champion's client answer and a challenger call are scored against it."""
    lorax.says = answers_well(CHALLENGER)
    challenge = {"min_samples": 2, "max_per_s": 100}
    gw = start(mode="student", challenger=CHALLENGER, challenge=challenge)
    send(gw)
    both = gw.gateway.monitor.duel
    assert gw.wait_for(lambda: [s.scored for s in both("tickets") if s] == [1, 1])
    champion, challenger = both("tickets")
    assert champion is not None and (champion.agreement or 0) < 0.5
    assert challenger == Scores(CHALLENGER, 1, 1.0)
    send(gw)
    assert gw.wait_for(lambda: policy_of(gw).adapter == CHALLENGER)
    assert (policy_of(gw).mode, policy_of(gw).challenger) == ("student", None)
    gw.stop()
    records = spooled_records(gw.settings.spool.dir, details=True)
    clients = {r["request_id"] for r in records if r["shadow_of"] is None}
    referees = [r for r in records if r["route"] == "referee"]
    assert len(referees) == 2 and {r["shadow_of"] for r in referees} == clients
    assert all(r["backend"] == "teacher" and r["status"] == 200 for r in referees)
    assert len(teacher.received) == 2  # the referee calls: the clients were answered by v3


def test_autopilot_admin_accepts_and_refuses_a_challenger(start: Any) -> None:
    """The admin API takes a published challenger and shows when its challenge began; it
    refuses one unpublished, equal to the adapter or malformed, naming ``challenger``."""
    gw = start(mode="shadow")
    refused = [
        ({"challenger": "tickets/v9"}, "challenger 'tickets/v9' is not published in the store"),
        ({"challenger": CHAMPION}, "challenger must differ from the adapter"),
        ({"challenger": "v4"}, "challenger must match pattern"),
        ({"adapter": None, "mode": "teacher", "challenger": CHALLENGER}, "challenger needs"),
    ]
    for body, message in refused:
        resp = admin(gw, "PUT", body)
        error = resp.json()["error"]
        assert (resp.status_code, error["param"], error["type"]) == (
            400, "challenger", "invalid_request_error",
        ), body  # fmt: skip
        assert error["message"].startswith(message)
    assert admin(gw, "GET").json()["challenge_started"] is None
    shown = admin(gw, "PUT", {"challenger": CHALLENGER}).json()
    assert shown["challenger"] == CHALLENGER and shown["challenge"]["min_samples"] == 50
    began = shown["challenge_started"]
    assert isinstance(began, float)
    assert admin(gw, "PUT", {"percent": 5}).json()["challenge_started"] == began
    assert admin(gw, "PUT", {"challenger": None}).json()["challenge_started"] is None


async def test_autopilot_a_tripped_guardrail_is_judged_before_the_duel(tmp_path: Path) -> None:
    """With the guardrail tripped and the duel won at once, the step-back comes first (the
    challenger kept); the next duel score then promotes it into shadow mode."""
    policy = challenged(min_samples=1, margin=0.0).model_copy(
        update={"guardrails": challenged().guardrails.model_copy(update={"min_samples": 1})}
    )
    rollouts = Rollouts({"tickets": policy}, FileStore(tmp_path), Metrics(), str)
    await rollouts.load()
    background = Tracked()
    monitor = Monitor(rollouts, Metrics(), background, str, Clock())
    monitor.dueled("tickets", "champion", CHAMPION, 0.2)
    monitor.called("tickets", failed=True)  # the guardrail trips; the duel is not judged
    monitor.dueled("tickets", "challenger", CHALLENGER, 1.0)  # while the step-back is in flight
    assert await background.drained() == 1
    stepped = rollouts.get("tickets")
    assert stepped is not None and stepped.source == "guardrail"
    assert (stepped.policy.mode, stepped.policy.challenger) == ("shadow", CHALLENGER)
    monitor.dueled("tickets", "challenger", CHALLENGER, 1.0)
    await background.drained()
    promoted = rollouts.policy("tickets")
    assert promoted is not None
    assert (promoted.mode, promoted.adapter, promoted.challenger) == ("shadow", CHALLENGER, None)
