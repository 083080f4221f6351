"""``POST /v1/feedback`` through the real gateway: checked, resolved, redacted, durable,
shipped to its own table."""

from __future__ import annotations

import asyncio
import shutil
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from core.feedback import UNRESOLVED, feedback_spool
from core.ids import new_id
from core.read import read_feedback
from core.segment import recover_orphans, sealed_segments
from core.store import open_store
from gateway.errors import InvalidRequest, NotFound
from gateway.feedback import resolve
from gateway.metrics import Metrics
from gateway.recent import RecentRequests
from sidecar.service import run
from tests.conftest import RunningGateway
from tests.fake_teacher import FakeTeacher
from tests.spooled import spooled_records
from tests.stored import put_part, record
from tests.test_gateway_crash import free_port, start_gateway
from tests.test_sidecar import BUCKET, s3, settings_for

__all__ = ["s3"]  # the moto S3 fixture, used by this module

CHAT = {"model": "support", "messages": [{"role": "user", "content": "hi"}]}


def ask(gw: RunningGateway, key: str = "k") -> str:
    """One chat through the gateway; its request id."""
    resp = httpx.post(gw.url + "/v1/chat/completions", json=CHAT,
                      headers={"authorization": f"Bearer {key}"}, timeout=10)  # fmt: skip
    assert resp.status_code == 200
    return resp.headers["x-protege-request-id"]


def give(gw: RunningGateway | str, body: Any, key: str = "k") -> httpx.Response:
    url = gw if isinstance(gw, str) else gw.url
    return httpx.post(url + "/v1/feedback", json=body,
                      headers={"authorization": f"Bearer {key}"}, timeout=10)  # fmt: skip


def stored_feedback(gw: RunningGateway) -> list[dict[str, Any]]:
    """The feedback records a stopped gateway spooled."""
    return spooled_records(feedback_spool(gw.settings.spool.dir))


def old_id(hours: float = 2) -> str:
    return new_id(int((time.time() - hours * 3600) * 1000))


def test_feedback_for_an_answered_request(gateway: RunningGateway) -> None:
    """Feedback on a request the gateway answered, with httpx and with the openai client's raw
    POST: 200 once spooled, the task resolved, the record in the feedback spool, counted."""
    rid = ask(gateway)
    first = give(gateway, {"request_id": rid, "score": 4, "label": "good"})
    assert first.status_code == 200
    assert first.json()["request_id"] == rid and first.json()["task"] == "support"
    client = openai.OpenAI(base_url=gateway.url + "/v1", api_key="k", max_retries=0, timeout=10)
    body = {"request_id": rid, "correction": {"answer": "hello"}, "feedback_id": "app-1"}
    second = client.post("/feedback", body=body, cast_to=httpx.Response)
    assert second.status_code == 200 and second.json()["id"] == "app-1"
    assert gateway.metric("protege_feedback_total", task="support", kind="correction") == 1
    assert gateway.metric("protege_feedback_total", task="support", kind="score") == 1
    gateway.stop()
    rows = {r["feedback_id"]: r for r in stored_feedback(gateway)}
    assert rows[first.json()["id"]]["score"] == 4.0 and rows["app-1"]["task"] == "support"
    assert rows["app-1"]["correction"] == '{"answer":"hello"}' and rows["app-1"]["correction_json"]
    assert rows["app-1"]["client"] is not None and rows["app-1"]["client"] != "k"


RID = new_id()


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ([1, 2], None),
        ({"score": 1}, "request_id"),
        ({"request_id": "not-an-id", "score": 1}, "request_id"),
        ({"request_id": RID}, "score"),
        ({"request_id": RID, "score": "high"}, "score"),
        ({"request_id": RID, "score": True}, "score"),
        ({"request_id": RID, "label": ""}, "label"),
        ({"request_id": RID, "correction": " "}, "correction"),
        ({"request_id": RID, "label": "ok", "comment": 3}, "comment"),
        ({"request_id": RID, "label": "ok", "feedback_id": "x" * 200}, "feedback_id"),
        ({"request_id": RID, "label": "ok", "rating": 5}, "rating"),
    ],
)
def test_bad_bodies_are_400_naming_the_field(
    gateway: RunningGateway, body: Any, param: str | None
) -> None:
    """A malformed body is refused in the OpenAI error shape, naming the field at fault."""
    resp = give(gateway, body)
    assert resp.status_code == 400
    error = resp.json()["error"]
    assert error["type"] == "invalid_request_error" and error["param"] == param


def test_wrong_key_is_401(make_gateway: Callable[..., RunningGateway]) -> None:
    """Feedback needs a gateway key, like every /v1 route."""
    gw = make_gateway(api_keys=["right"])
    rid = ask(gw, key="right")
    assert give(gw, {"request_id": rid, "label": "bad"}, key="wrong").status_code == 401
    assert give(gw, {"request_id": rid, "label": "bad"}, key="right").status_code == 200


def test_unknown_ids_old_404_recent_unresolved_future_400(gateway: RunningGateway) -> None:
    """An old id found nowhere is 404; a recent one is kept unresolved; a future one is 400."""
    gone = give(gateway, {"request_id": old_id(), "label": "bad"})
    assert gone.status_code == 404 and gone.json()["error"]["code"] == "unknown_request_id"
    fresh = give(gateway, {"request_id": new_id(), "label": "bad"})
    assert fresh.status_code == 200 and fresh.json()["task"] is None
    ahead = new_id(int((time.time() + 7200) * 1000))
    assert give(gateway, {"request_id": ahead, "label": "bad"}).status_code == 400
    gateway.stop()
    assert [r["task"] for r in stored_feedback(gateway)] == [UNRESOLVED]


def test_an_old_request_is_found_in_the_store(gateway: RunningGateway, tmp_path: Path) -> None:
    """An id the gateway no longer holds is looked up in its hour partition of the store."""
    from datetime import UTC, datetime

    rid = old_id(3)
    when = datetime.fromtimestamp(time.time() - 3 * 3600 + 0.5, tz=UTC)

    async def put() -> None:
        async with open_store(gateway.settings.store) as store:
            await put_part(store, new_id(), [record(rid, when, "archived")], tmp_path)

    asyncio.run(put())
    resp = give(gateway, {"request_id": rid, "score": -1})
    assert resp.status_code == 200 and resp.json()["task"] == "archived"


def test_comment_and_correction_are_redacted(gateway: RunningGateway) -> None:
    """Emails in the comment and in a JSON correction's strings never reach the spool."""
    rid = ask(gateway)
    body = {"request_id": rid, "label": "wrong", "comment": "mail alice@example.com back",
            "correction": {"to": "bob@example.com", "n": 3}}  # fmt: skip
    assert give(gateway, body).status_code == 200
    gateway.stop()
    (row,) = stored_feedback(gateway)
    assert "example.com" not in row["comment"] + row["correction"]
    assert row["comment"].startswith("mail ") and '"n":3' in row["correction"]


@pytest.mark.parametrize(
    ("task", "age_s", "expected"),
    [("t", 5.0, "t"), ("t", 10_000.0, "t"), (None, 5.0, UNRESOLVED), (None, -5.0, UNRESOLVED)],
)
def test_resolve_rule(task: str | None, age_s: float, expected: str) -> None:
    """Known tasks stand; an unknown id within the horizon is kept unresolved."""
    assert resolve(task, age_s, 900) == expected


def test_resolve_refuses_old_unknown_and_future_ids() -> None:
    with pytest.raises(NotFound):
        resolve(None, 901, 900)
    with pytest.raises(InvalidRequest):
        resolve("t", -901, 900)


def test_recent_requests_forget_the_oldest() -> None:
    """The map holds the last ``capacity`` ids; capacity 0 holds none."""
    recent = RecentRequests(2)
    for rid, task in (("a", "x"), ("b", "y"), ("c", "z")):
        recent.add(rid, task)
    assert [recent.task(rid) for rid in "abc"] == [None, "y", "z"] and len(recent) == 2
    none = RecentRequests(0)
    none.add("a", "x")
    assert none.task("a") is None


def test_feedback_answered_before_sigkill_is_kept_and_shipped(
    tmp_path: Path, teacher: FakeTeacher
) -> None:
    """Every feedback answered 200 before a kill -9 is in the spool after recovery, and the
    sidecar ships it to feedback/task=…/date=…."""
    spool = tmp_path / "spool"
    port = free_port()
    proc = start_gateway(teacher, spool, port)
    url = f"http://127.0.0.1:{port}"
    try:
        rid = httpx.post(url + "/v1/chat/completions", json=CHAT).headers["x-protege-request-id"]
        answered = [give(url, {"request_id": rid, "score": i}).json()["id"] for i in range(20)]
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
    finally:
        if proc.poll() is None:
            proc.kill()
    recover_orphans(feedback_spool(spool), Metrics().feedback_spool)
    assert {r["feedback_id"] for r in spooled_records(feedback_spool(spool))} == set(answered)
    store = f"file://{tmp_path / 'store'}"
    assert asyncio.run(run(settings_for(spool, store), once=True)) == 0
    shipped = read_feedback(store, task="support")
    assert sorted(shipped.column("feedback_id").to_pylist()) == sorted(answered)
    assert list((tmp_path / "store" / "feedback" / "task=support").glob("date=*/*.parquet"))


def test_shipping_to_s3_twice_does_not_duplicate(
    s3: Any, gateway: RunningGateway, tmp_path: Path
) -> None:
    """Feedback segments ship to feedback/task=…/date=… on S3; a segment shipped again (a crash
    before its delete) overwrites its part, and a client's retry (same feedback id) reads once."""
    rid = ask(gateway)
    for _ in range(2):  # the client retries with its own id
        assert give(gateway, {"request_id": rid, "label": "bad", "feedback_id": "f1"}).is_success
    assert give(gateway, {"request_id": rid, "score": 1}).is_success
    gateway.stop()
    spool = gateway.settings.spool.dir
    (segment,) = sealed_segments(feedback_spool(spool))
    kept = shutil.copy(segment, tmp_path / segment.name)
    # Its own prefix: the S3 server's buckets outlive the test (moto keeps them per process).
    store = f"s3://{BUCKET}/feedback-shipping"
    assert asyncio.run(run(settings_for(spool, store), once=True)) == 0
    shutil.copy(kept, segment)  # as if the sidecar died between upload and delete
    assert asyncio.run(run(settings_for(spool, store), once=True)) == 0
    keys = [o["Key"] for o in s3.client().list_objects_v2(Bucket=BUCKET)["Contents"]]
    parts = [k for k in keys if k.startswith("feedback-shipping/feedback/")]
    assert len(parts) == 1
    assert parts[0].startswith("feedback-shipping/feedback/task=support/date=")
    table = read_feedback(store, task="support")
    assert table.num_rows == 2 and sorted(table.column("feedback_id").to_pylist())[-1] == "f1"
