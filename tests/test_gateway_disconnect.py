"""A client that goes away before a plain answer: the student's call for it is cancelled (LoRAX
sees its connection close) and recorded incomplete; the teacher's is still awaited and kept."""

from __future__ import annotations

import socket
from typing import Any

import orjson
import pytest

from tests.conftest import RunningGateway
from tests.fake_lorax import FakeLorax
from tests.fake_teacher import FakeTeacher, wait_for
from tests.spooled import spooled_records

ADAPTER = "tickets/v3"
HELLO = [{"role": "user", "content": "hello there"}]


def start(make_gateway: Any, lorax: FakeLorax, **rollout: Any) -> RunningGateway:
    route = {"alias": "tickets", "task": "tickets", "rollout": {"adapter": ADAPTER, **rollout}}
    gw: RunningGateway = make_gateway(student={"base_url": lorax.base_url}, routes=[route])
    return gw


def ask_and_leave(gw: RunningGateway, asked: Any, stream: bool = False) -> None:
    """Send a chat request on a raw socket and close it once ``asked()`` says the upstream
    has the request, before any answer (or any event of a stream)."""
    body = orjson.dumps({"model": "tickets", "messages": HELLO, "stream": stream})
    head = (
        "POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    )
    with socket.create_connection(("127.0.0.1", gw.port), timeout=5) as sock:
        sock.sendall(head.encode() + body)
        assert wait_for(asked, 5), "the upstream never got the request"


@pytest.mark.parametrize(
    ("rollout", "stream"),
    [
        ({"mode": "student"}, False),
        ({"mode": "canary", "percent": 100}, False),
        ({"mode": "hybrid"}, False),
        ({"mode": "student"}, True),
        ({"mode": "hybrid"}, True),
    ],
)
def test_client_leaving_cancels_the_students_call(
    make_gateway: Any,
    lorax: FakeLorax,
    teacher: FakeTeacher,
    rollout: dict[str, Any],
    stream: bool,
) -> None:
    """The client closing before a slow student answers (or sends a stream's first event)
    closes the gateway's connection to LoRAX; the student's exchange is recorded incomplete
    and the teacher is not asked."""
    lorax.mode = "slow:8"
    gw = start(make_gateway, lorax, **rollout)
    ask_and_leave(gw, lambda: len(lorax.received) == 1, stream)
    assert wait_for(lambda: lorax.disconnects == 1, 2), "the student's call was not cancelled"
    labels = {"task": "tickets", "reason": "client_disconnect"}
    assert wait_for(lambda: gw.metric("protege_incomplete_answers_total", **labels) == 1, 2)
    gw.stop()
    (record,) = spooled_records(gw.settings.spool.dir, details=True)
    assert (record["backend"], record["adapter"], record["stream"]) == ("student", ADAPTER, stream)
    assert record["complete"] is False and record["error"] == "client disconnected"
    assert record["status"] == 499 and record["response"] is None
    assert teacher.received == []


def test_client_leaving_still_gets_the_teachers_answer_recorded(
    make_gateway: Any, lorax: FakeLorax, teacher: FakeTeacher
) -> None:
    """In teacher mode a client that leaves does not cancel the call: the teacher's answer is
    awaited and recorded complete (it is training data)."""
    teacher.mode = "slow:1"
    gw = start(make_gateway, lorax, mode="teacher")
    ask_and_leave(gw, lambda: len(teacher.received) == 1)
    labels = {"task": "tickets", "backend": "teacher", "route": "teacher", "status": "200"}
    assert wait_for(lambda: gw.metric("protege_requests_total", **labels) == 1, 5)
    gw.stop()
    (record,) = spooled_records(gw.settings.spool.dir)
    assert record["backend"] == "teacher" and record["complete"] is True
    assert record["error"] is None and lorax.received == []
