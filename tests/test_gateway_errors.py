"""Every failure answered in the OpenAI error shape, and recorded where an exchange happened."""

from __future__ import annotations

import socket
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import httpx
import openai
import orjson
import pytest

from tests.conftest import RunningGateway
from tests.fake_teacher import FakeTeacher, wait_for
from tests.spooled import spooled_records

CHAT = {"model": "m", "messages": [{"role": "user", "content": "hello"}]}


def post(gw: RunningGateway, body: Any, **kw: Any) -> httpx.Response:
    content = body if isinstance(body, bytes) else orjson.dumps(body)
    headers = {"content-type": "application/json", **kw.pop("headers", {})}
    return httpx.post(gw.url + "/v1/chat/completions", content=content, headers=headers, **kw)


def assert_openai_error(
    resp: httpx.Response, status: int, code: str | None = None
) -> dict[str, Any]:
    assert resp.status_code == status
    error = resp.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["message"]
    if code is not None:
        assert error["code"] == code
    return dict(error)


@pytest.mark.parametrize(
    ("body", "param"),
    [
        (b"{not json", None),
        (b"[1, 2]", None),
        ({"messages": [{"role": "user", "content": "x"}]}, "model"),
        ({"model": "m"}, "messages"),
        ({"model": "m", "messages": []}, "messages"),
        ({"model": "m", "messages": [{"role": "user", "content": "x"}], "stream": "yes"}, "stream"),
    ],
)
def test_bad_requests_are_400(
    gateway: RunningGateway, teacher: FakeTeacher, body: Any, param: str | None
) -> None:
    """Malformed JSON or a missing model/messages is a 400 naming the parameter, never forwarded."""
    error = assert_openai_error(post(gateway, body), 400)
    assert error["type"] == "invalid_request_error"
    assert error["param"] == param
    assert teacher.received == []


def test_wrong_key_is_401(make_gateway: Any, teacher: FakeTeacher) -> None:
    """With gateway keys configured, a missing or wrong key is a 401; a right one passes."""
    gw = make_gateway(api_keys=["good-key"])
    c = openai.OpenAI(base_url=gw.url + "/v1", api_key="bad-key", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        c.chat.completions.create(**CHAT)
    assert_openai_error(post(gw, CHAT), 401, "invalid_api_key")
    ok = post(gw, CHAT, headers={"authorization": "Bearer good-key"})
    assert ok.status_code == 200
    assert len(teacher.received) == 1


def test_unknown_path_is_openai_404(gateway: RunningGateway) -> None:
    """An unknown route answers 404 in the OpenAI error shape."""
    assert_openai_error(httpx.post(gateway.url + "/v1/nope", json={}), 404, "not_found")


@pytest.mark.parametrize(
    ("method", "path"),
    [("GET", "/healthz/"), ("GET", "/v1/models/"), ("POST", "/v1/chat/completions/"),
     ("GET", "/admin/routes/%2F")],
)  # fmt: skip
def test_a_near_miss_path_is_a_404_not_a_redirect(
    gateway: RunningGateway, method: str, path: str
) -> None:
    """A known path with a slash too many is unknown: 404 in the OpenAI shape, no redirect."""
    resp = httpx.request(method, gateway.url + path, json={}, follow_redirects=False)
    assert_openai_error(resp, 404, "not_found")


def test_body_over_limit_is_413(make_gateway: Any, teacher: FakeTeacher) -> None:
    """A body over max_body_bytes is refused before it is forwarded."""
    gw = make_gateway(max_body_bytes=2048)
    big = {"model": "m", "messages": [{"role": "user", "content": "x" * 4096}]}
    assert_openai_error(post(gw, big), 413, "payload_too_large")
    assert teacher.received == []


def test_unreachable_teacher_is_502_after_retries(make_gateway: Any) -> None:
    """A teacher nobody listens for is a 502 after the configured connect retries."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    gw = make_gateway(teacher={"base_url": f"http://127.0.0.1:{port}/v1", "connect_retries": 2})
    assert_openai_error(post(gw, CHAT), 502, "upstream_unreachable")
    assert gw.metric("protege_upstream_retries_total", backend="teacher") == 2
    gw.stop()
    (record,) = spooled_records(gw.settings.spool.dir)
    assert record["status"] == 502 and record["complete"] is False


def test_teacher_timeout_is_504(make_gateway: Any, teacher: FakeTeacher) -> None:
    """A teacher silent past the read timeout is a 504 and is not retried."""
    gw = make_gateway(teacher={"read_timeout_s": 0.3})
    teacher.mode = "slow:2"
    assert_openai_error(post(gw, CHAT, timeout=10), 504, "upstream_timeout")
    assert len(teacher.received) == 1


@pytest.mark.parametrize("status", [400, 429, 500, 503])
def test_teacher_errors_pass_through(
    gateway: RunningGateway, teacher: FakeTeacher, status: int
) -> None:
    """A teacher 4xx/5xx reaches the client with its status, body and retry-after untouched."""
    teacher.mode = f"status:{status}"
    resp = post(gateway, CHAT)
    assert resp.status_code == status
    assert resp.content == teacher.sent[-1]
    if status == 429:
        assert resp.headers["retry-after"] == "7"
    assert len(teacher.received) == 1


@pytest.mark.parametrize("status", [429, 500])
def test_teacher_errors_to_stream_requests_pass_through(
    gateway: RunningGateway, teacher: FakeTeacher, status: int
) -> None:
    """A teacher error answering a stream request reaches the client as it came, recorded."""
    teacher.mode = f"status:{status}"
    code, body = stream_body(gateway)
    assert code == status and body == teacher.sent[-1]
    gateway.stop()
    (record,) = spooled_records(gateway.settings.spool.dir)
    assert record["status"] == status and record["complete"] is False


def stream_body(gw: RunningGateway, **kw: Any) -> tuple[int, bytes]:
    with httpx.stream(
        "POST", gw.url + "/v1/chat/completions", json={**CHAT, "stream": True}, timeout=10, **kw
    ) as resp:
        return resp.status_code, resp.read()


def test_stream_cut_midway_gives_error_event(gateway: RunningGateway, teacher: FakeTeacher) -> None:
    """A teacher stream cut mid-way ends with an SSE error event, no [DONE], complete=false."""
    teacher.mode = "cut"
    status, body = stream_body(gateway)
    assert status == 200
    assert body.startswith(teacher.sent[-1])
    last = body.rstrip().rsplit(b"\n\n", 1)[-1]
    assert orjson.loads(last.removeprefix(b"data: "))["error"]["code"] == "stream_interrupted"
    assert b"data: [DONE]" not in body
    gateway.stop()
    (record,) = spooled_records(gateway.settings.spool.dir)
    assert record["complete"] is False and record["error"]


def test_stream_without_done_is_incomplete(gateway: RunningGateway, teacher: FakeTeacher) -> None:
    """A stream that ends cleanly but without [DONE] is not passed off as complete."""
    teacher.mode = "no_done"
    _, body = stream_body(gateway)
    assert b"data: [DONE]" not in body and b'"error"' in body
    gateway.stop()
    (record,) = spooled_records(gateway.settings.spool.dir)
    assert record["complete"] is False


def test_error_as_first_stream_event_is_an_error(
    gateway: RunningGateway, teacher: FakeTeacher
) -> None:
    """A 200 stream whose first event is an error is answered as an HTTP error, not a stream."""
    teacher.mode = "error_first"
    with pytest.raises(openai.APIStatusError) as info:
        openai.OpenAI(
            base_url=gateway.url + "/v1", api_key="k", max_retries=0
        ).chat.completions.create(**CHAT, stream=True)
    assert info.value.status_code == 502
    assert "model overloaded" in info.value.message
    gateway.stop()
    (record,) = spooled_records(gateway.settings.spool.dir)
    assert record["status"] == 502 and record["complete"] is False


def test_client_disconnect_cancels_teacher_stream(
    gateway: RunningGateway, teacher: FakeTeacher
) -> None:
    """A client leaving mid-stream cancels the teacher request and is recorded incomplete."""
    teacher.mode = "hang_stream"
    got_first = threading.Event()

    def reader() -> None:
        with httpx.stream(
            "POST", gateway.url + "/v1/chat/completions", json={**CHAT, "stream": True}, timeout=10
        ) as resp:
            for _ in resp.iter_raw():
                got_first.set()
                return

    t = threading.Thread(target=reader)
    t.start()
    assert got_first.wait(5)
    t.join(5)
    assert wait_for(lambda: teacher.disconnects == 1, 5)
    metric = "protege_incomplete_streams_total"
    assert wait_for(lambda: gateway.metric(metric, task="m", reason="client_disconnect") == 1)
    gateway.stop()
    (record,) = spooled_records(gateway.settings.spool.dir)
    assert record["complete"] is False and record["error"] == "client disconnected"


def test_metrics_count_requests(gateway: RunningGateway) -> None:
    """/metrics exports protege_ request counters by task, backend, route and status."""
    post(gateway, CHAT)
    text = httpx.get(gateway.url + "/metrics").text
    assert (
        'protege_requests_total{backend="teacher",route="teacher",status="200",task="m"} 1.0'
        in text
    )
    assert "protege_gateway_overhead_seconds_bucket" in text


def test_bad_config_fails_startup_naming_the_key(tmp_path: Path) -> None:
    """protege gateway with a bad config exits 2 and names the offending key."""
    config = tmp_path / "bad.yaml"
    config.write_text("routes:\n  - alias: a\n    task: ok\n  - alias: b\n    task: 'bad task'\n")
    proc = subprocess.run(
        [sys.executable, "-m", "protege.cli", "gateway", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2
    assert "routes[1].task" in proc.stderr
