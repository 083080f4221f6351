"""Each rollout mode end to end: the official openai client, the gateway, a fake teacher and a
fake LoRAX on loopback; the records say which backend answered and why."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import openai
import orjson
import pytest

from core.profile import Profile
from tests.conftest import RunningGateway
from tests.fake_lorax import FakeLorax
from tests.fake_teacher import FakeTeacher
from tests.spooled import spooled_records

ADAPTER = "tickets/v3"
SCHEMA = {
    "type": "object",
    "properties": {"label": {"type": "string"}, "confidence": {"type": "number"}},
    "required": ["label", "confidence"],
}
JSON_FORMAT = {"type": "json_schema", "json_schema": {"name": "verdict", "schema": SCHEMA}}


def ask(text: str = "hello there") -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


def echo(req: dict[str, Any]) -> str:
    """The fake teacher's answer to a plain request: a student that agrees with it."""
    return "echo: " + req["messages"][-1]["content"]


def publish(store: Path, adapter: str = ADAPTER, prompts: list[str] | None = None) -> None:
    """A published adapter's manifest, with the reference profile of its training prompts."""
    manifest: dict[str, Any] = {"task": adapter.split("/")[0], "version": adapter.split("/")[1]}
    if prompts is not None:
        manifest["input_profile"] = Profile.of(prompts).to_dict()
    path = store / "adapters" / adapter / "protege.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(orjson.dumps(manifest))


@pytest.fixture
def start(
    make_gateway: Any, lorax: FakeLorax, tmp_path: Path
) -> Any:  # a function: rollout fields -> RunningGateway
    def start(server: dict[str, Any] | None = None, **rollout: Any) -> RunningGateway:
        route = {"alias": "tickets", "task": "tickets", "rollout": {"adapter": ADAPTER, **rollout}}
        return make_gateway(
            student={"base_url": lorax.base_url}, routes=[route], server=server or {}
        )

    return start


def client(gw: RunningGateway, timeout: float = 10) -> openai.OpenAI:
    return openai.OpenAI(base_url=gw.url + "/v1", api_key="k", max_retries=0, timeout=timeout)


def records(gw: RunningGateway) -> list[dict[str, Any]]:
    """Every record, once the gateway stopped (shadow calls awaited)."""
    gw.stop()
    return spooled_records(gw.settings.spool.dir, details=True)


# -- shadow ----------------------------------------------------------------------------------


def test_shadow_scores_the_student_without_delaying_the_client(
    start: Any, lorax: FakeLorax, teacher: FakeTeacher
) -> None:
    """The teacher answers at once while a slow student is still working; the shadow record,
    written later, scores the student's answer and points at the client's request."""
    lorax.says, lorax.mode = echo, "slow:2.5"
    gw = start(mode="shadow")
    answer = client(gw, timeout=2.0).chat.completions.create(model="tickets", messages=ask())
    assert answer.choices[0].message.content == "echo: hello there"
    primary, shadow = sorted(records(gw), key=lambda r: r["shadow_of"] is not None)
    assert (primary["backend"], primary["route"], primary["detail"]) == (
        "teacher", "shadow", {"why": "shadow"},
    )  # fmt: skip
    assert (shadow["backend"], shadow["route"], shadow["shadow_of"]) == (
        "student", "shadow", primary["request_id"],
    )  # fmt: skip
    assert shadow["adapter"] == ADAPTER and shadow["complete"] and shadow["status"] == 200
    assert shadow["detail"]["agreement"]["exact"] == 1.0
    assert shadow["detail"]["checks"] == []
    assert gw.metric("protege_shadow_requests_total", task="tickets", outcome="scored") == 1
    assert gw.metric("protege_shadow_agreement_sum", task="tickets", measure="exact") == 1.0


def test_shadow_streams_are_scored_against_the_assembled_teacher_answer(
    start: Any, lorax: FakeLorax
) -> None:
    """A streamed client request is shadowed with a plain student call; the teacher's stream is
    assembled before scoring."""
    lorax.says = lambda req: "something else entirely"
    gw = start(mode="shadow")
    chunks = client(gw).chat.completions.create(model="tickets", messages=ask(), stream=True)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "echo: hello there"
    (shadow,) = [r for r in records(gw) if r["shadow_of"]]
    assert shadow["stream"] is False and lorax.received[0].json["stream"] is False
    assert 0 < shadow["detail"]["agreement"]["similarity"] < 1
    assert shadow["detail"]["agreement"]["exact"] == 0


def test_shadow_is_scored_even_when_the_spool_drops_records(start: Any, lorax: FakeLorax) -> None:
    """With the spool full (records dropped), shadow calls are still scored: the teacher's
    answer is handed over without its record."""
    lorax.says = echo
    gw = start(mode="shadow")
    gw.gateway.spool.submit = lambda ex: None  # type: ignore[method-assign]
    chunks = client(gw).chat.completions.create(model="tickets", messages=ask(), stream=True)
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    scored = {"task": "tickets", "outcome": "scored"}
    assert gw.wait_for(lambda: gw.metric("protege_shadow_requests_total", **scored) == 1)
    assert gw.metric("protege_shadow_agreement_sum", task="tickets", measure="exact") == 1.0


def test_a_failing_student_never_fails_the_client_in_shadow(start: Any, lorax: FakeLorax) -> None:
    """A student answering 500 in shadow mode: the client still gets the teacher's answer, the
    shadow call is recorded as failed and counted."""
    lorax.mode = "status:500"
    gw = start(mode="shadow")
    answer = client(gw).chat.completions.create(model="tickets", messages=ask())
    assert answer.choices[0].message.content == "echo: hello there"
    (shadow,) = [r for r in records(gw) if r["shadow_of"]]
    assert shadow["status"] == 502 and "HTTP 500" in shadow["error"] and not shadow["complete"]
    assert gw.metric("protege_shadow_requests_total", task="tickets", outcome="failed") == 1


def test_shadow_concurrency_is_bounded(
    make_gateway: Any, lorax: FakeLorax, teacher: FakeTeacher
) -> None:
    """With one shadow slot taken by a slow student, further requests are not shadowed."""
    lorax.mode = "slow:1.5"
    route = {"alias": "tickets", "task": "tickets",
             "rollout": {"adapter": ADAPTER, "mode": "shadow"}}  # fmt: skip
    gw = make_gateway(
        student={"base_url": lorax.base_url}, routes=[route], rollouts={"shadow_concurrency": 1}
    )
    c = client(gw)
    for _ in range(3):
        c.chat.completions.create(model="tickets", messages=ask())
    assert gw.metric("protege_shadow_requests_total", task="tickets", outcome="skipped") == 2
    assert len([r for r in records(gw) if r["shadow_of"]]) == 1


def test_shadow_calls_are_capped_per_second(start: Any, lorax: FakeLorax) -> None:
    """With shadow_max_per_s 0.1 (one call, then one every 10 s), 4 requests in a row get one
    shadow call; the other 3 are counted as limited and their records say so."""
    lorax.says = echo
    gw = start(mode="shadow", shadow_max_per_s=0.1)
    c = client(gw)
    for _ in range(4):
        c.chat.completions.create(model="tickets", messages=ask())
    assert gw.metric("protege_shadow_requests_total", task="tickets", outcome="limited") == 3
    out = records(gw)
    shadows = [r for r in out if r["shadow_of"]]
    primaries = [r for r in out if not r["shadow_of"]]
    (shadowed,) = [p for p in primaries if p["detail"] == {"why": "shadow"}]
    assert [s["shadow_of"] for s in shadows] == [shadowed["request_id"]]
    assert sorted(p["detail"]["why"] for p in primaries) == ["shadow"] + ["shadow_skipped"] * 3


def test_workers_split_the_shadow_cap(start: Any, lorax: FakeLorax) -> None:
    """shadow_max_per_s is the gateway's: one worker of two may make half of it. With 2 a
    second (a burst of 2 alone), the worker's 1 a second lets 1 of 4 requests in a row through."""
    lorax.says = echo
    gw = start(mode="shadow", shadow_max_per_s=2, server={"workers": 2})
    c = client(gw)
    for _ in range(4):
        c.chat.completions.create(model="tickets", messages=ask())
    assert gw.metric("protege_shadow_requests_total", task="tickets", outcome="limited") == 3
    assert len([r for r in records(gw) if r["shadow_of"]]) == 1


# -- canary ----------------------------------------------------------------------------------


def test_canary_splits_by_user_and_sticks(
    start: Any, lorax: FakeLorax, teacher: FakeTeacher
) -> None:
    """A 50 % canary sends some users to the student and the rest to the teacher; each user
    keeps their backend."""
    gw = start(mode="canary", percent=50, shadow_percent=0)
    c = client(gw)
    seen: dict[str, set[str]] = {}
    for i in range(40):
        user = f"user-{i % 20}"
        answer = c.chat.completions.create(model="tickets", messages=ask(), user=user)
        content = answer.choices[0].message.content or ""
        seen.setdefault(user, set()).add(content.split(":")[0])
    assert all(len(backends) == 1 for backends in seen.values())
    assert 3 <= sum(b == {"student"} for b in seen.values()) <= 17
    rows = records(gw)
    assert {(r["backend"], r["route"], r["detail"]["why"]) for r in rows} == {
        ("student", "canary", "canary"),
        ("teacher", "canary", "not_canary"),
    }


# -- hybrid ----------------------------------------------------------------------------------


def test_hybrid_falls_back_when_the_answer_fails_its_schema(start: Any, lorax: FakeLorax) -> None:
    """A student answer that is not the JSON the request's schema asks for is replaced by the
    teacher's before any byte reaches the client; both are recorded."""
    gw = start(mode="hybrid")
    answer = client(gw).chat.completions.create(
        model="tickets",
        messages=ask(),
        response_format=JSON_FORMAT,  # type: ignore[arg-type]
    )
    assert json.loads(answer.choices[0].message.content or "") == {
        "label": "positive", "confidence": 0.9,
    }  # fmt: skip
    rows = {r["backend"]: r for r in records(gw)}
    assert rows["student"]["detail"] == {"why": "hybrid", "checks": ["json_parse"]}
    assert rows["student"]["request_id"] != rows["teacher"]["request_id"]
    assert rows["teacher"]["route"] == "fallback"
    assert rows["teacher"]["detail"] == {"why": "check_failed"}
    assert gw.metric("protege_fallbacks_total", task="tickets", reason="check_json_parse") == 1
    assert gw.metric("protege_output_check_failures_total", task="tickets", check="json_parse") == 1


def test_hybrid_answers_from_the_student_when_checks_pass(start: Any, lorax: FakeLorax) -> None:
    """A student answer passing its checks is the client's, streamed when asked for."""
    lorax.says = lambda req: '{"label": "negative", "confidence": 0.7}'
    gw = start(mode="hybrid")
    c = client(gw)
    plain = c.chat.completions.create(
        model="tickets",
        messages=ask(),
        response_format=JSON_FORMAT,  # type: ignore[arg-type]
    )
    assert json.loads(plain.choices[0].message.content or "")["label"] == "negative"
    chunks = list(
        c.chat.completions.create(
            model="tickets", messages=ask(), response_format=JSON_FORMAT,  # type: ignore[arg-type]
            stream=True, stream_options={"include_usage": True},
        )
    )  # fmt: skip
    text = "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
    assert json.loads(text)["label"] == "negative"
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens > 0
    rows = records(gw)
    assert [(r["backend"], r["route"], r["stream"], r["complete"]) for r in rows] == [
        ("student", "hybrid", False, True),
        ("student", "hybrid", True, True),
    ]
    assert json.loads(rows[1]["response"])["choices"][0]["message"]["content"] == text


def test_hybrid_sends_out_of_distribution_prompts_to_the_teacher(
    start: Any, lorax: FakeLorax, tmp_path: Path
) -> None:
    """A prompt in a script the adapter never saw goes to the teacher (why=charset), a familiar
    one to the student."""
    publish(tmp_path / "store", prompts=[f"please route ticket {i} to billing" for i in range(50)])
    gw = start(mode="hybrid")
    c = client(gw)
    assert gw.wait_for(lambda: gw.gateway.dispatch.references.profile("tickets") is not None)
    familiar = c.chat.completions.create(model="tickets", messages=ask("route ticket 7 please"))
    foreign = c.chat.completions.create(model="tickets", messages=ask("Пожалуйста, помогите мне"))
    assert (familiar.choices[0].message.content or "").startswith("student:")
    assert (foreign.choices[0].message.content or "").startswith("echo:")
    assert gw.metric("protege_hybrid_declined_total", task="tickets", reason="charset") == 1
    assert [r["detail"]["why"] for r in records(gw)] == ["hybrid", "charset"]


# -- student ---------------------------------------------------------------------------------


def test_student_mode_counts_output_checks(start: Any, lorax: FakeLorax) -> None:
    """Full rollout: the student answers; its answers are checked and counted, not acted on."""
    lorax.says = lambda req: "I cannot help with that."
    gw = start(mode="student")
    answer = client(gw).chat.completions.create(model="tickets", messages=ask())
    assert answer.choices[0].message.content == "I cannot help with that."
    # The failure is counted last, once its answer is counted: wait for it, then read both.
    failures = {"task": "tickets", "check": "refusal"}
    assert gw.wait_for(lambda: gw.metric("protege_output_check_failures_total", **failures) == 1)
    assert gw.metric("protege_output_checks_total", task="tickets") == 1


def test_a_degrading_student_steps_back_to_shadow(
    start: Any, lorax: FakeLorax, teacher: FakeTeacher, tmp_path: Path
) -> None:
    """When the student's error rate crosses its threshold the task steps back to shadow on its
    own: counted, stored for every replica, and the next requests are answered by the teacher."""
    guard = {"min_samples": 5, "max_error_rate": 0.2}
    gw = start(mode="canary", percent=100, guardrails=guard, shadow_percent=0)
    c = client(gw)
    c.chat.completions.create(model="tickets", messages=ask())
    lorax.mode = "status:500"
    for _ in range(5):
        answer = c.chat.completions.create(model="tickets", messages=ask())
        assert (answer.choices[0].message.content or "").startswith("echo:")
    assert gw.wait_for(lambda: gw.metric(
        "protege_rollout_stepbacks_total", task="tickets", reason="error_rate") == 1
    )  # fmt: skip
    # The step-back is counted when the guardrail trips; the rollout changes right after, in
    # the background (written to the store, then applied).
    shadow = {"task": "tickets", "mode": "shadow"}
    assert gw.wait_for(lambda: gw.metric("protege_rollout_mode", **shadow) == 1)
    stored = json.loads((tmp_path / "store" / "rollouts" / "routes.json").read_bytes())
    entry = stored["tasks"]["tickets"]
    assert (entry["policy"]["mode"], entry["source"], entry["reason"]) == (
        "shadow", "guardrail", "error_rate",
    )  # fmt: skip
    asked = len(lorax.received)
    lorax.mode = "ok"
    c.chat.completions.create(model="tickets", messages=ask())
    assert records(gw)[-1]["route"] == "shadow" and len(lorax.received) == asked
