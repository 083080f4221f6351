"""The admin API: authentication, validation, effect without restart, persistence across one."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from core.errors import StoreError
from tests.conftest import RunningGateway
from tests.fake_lorax import FakeLorax
from tests.test_rollout_modes import ADAPTER, ask, publish

TOKEN = "admin-secret"
ROUTES = [
    {"alias": "tickets", "task": "tickets"},
    {"alias": "tickets-fast", "task": "tickets"},
    {"alias": "drafts", "task": "drafts", "rollout": {"mode": "shadow", "adapter": "drafts/v1"}},
]


@pytest.fixture
def start(make_gateway: Any, lorax: FakeLorax, tmp_path: Path) -> Any:
    publish(tmp_path / "store")

    def start(**overrides: Any) -> RunningGateway:
        settings: dict[str, Any] = {
            "student": {"base_url": lorax.base_url},
            "routes": ROUTES,
            "rollouts": {"admin_token": TOKEN},
            **overrides,
        }
        return make_gateway(**settings)

    return start


class Admin:
    """Calls to one gateway's admin API, each on a connection of its own."""

    def __init__(self, gw: RunningGateway, token: str | None = TOKEN) -> None:
        self._url = gw.url
        self._headers = {"authorization": f"Bearer {token}"} if token else {}

    def _call(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        with httpx.Client(base_url=self._url, headers=self._headers, timeout=10) as c:
            return c.request(method, path, **kwargs)

    def get(self, path: str) -> httpx.Response:
        return self._call("GET", path)

    def put(self, path: str, **kwargs: Any) -> httpx.Response:
        return self._call("PUT", path, **kwargs)

    def delete(self, path: str) -> httpx.Response:
        return self._call("DELETE", path)


admin = Admin


def who_answers(gw: RunningGateway) -> str:
    with openai.OpenAI(base_url=gw.url + "/v1", api_key="k", max_retries=0, timeout=10) as c:
        answer = c.chat.completions.create(model="tickets", messages=ask(), user="someone")
    return (answer.choices[0].message.content or "").split(":")[0]


def test_without_a_token_the_admin_api_does_not_exist(make_gateway: Any) -> None:
    """No admin token configured: /admin/routes is a 404 in the OpenAI error shape."""
    gw = make_gateway()
    resp = admin(gw).get("/admin/routes")
    assert resp.status_code == 404 and resp.json()["error"]["code"] == "not_found"


@pytest.mark.parametrize("token", [None, "wrong", TOKEN + "x"])
def test_a_missing_or_wrong_token_is_refused(start: Any, token: str | None) -> None:
    """Every admin call needs the configured bearer token."""
    gw = start()
    c = admin(gw, token)
    for resp in (c.get("/admin/routes"), c.put("/admin/routes/tickets", json={})):
        assert resp.status_code == 401
        assert resp.json()["error"]["code"] == "invalid_api_key"


def test_list_shows_each_task_with_its_aliases_and_source(start: Any) -> None:
    """GET lists every configured task's rollout, its aliases and where it comes from."""
    gw = start()
    body = admin(gw).get("/admin/routes").json()
    by_task = {e["task"]: e for e in body["data"]}
    assert by_task["tickets"]["aliases"] == ["tickets", "tickets-fast"]
    assert (by_task["tickets"]["mode"], by_task["tickets"]["source"]) == ("teacher", "config")
    assert (by_task["drafts"]["mode"], by_task["drafts"]["adapter"]) == ("shadow", "drafts/v1")
    assert body["revision"] == 0


@pytest.mark.parametrize(
    ("body", "status", "param", "message"),
    [
        (b"{nope", 400, None, "the body is not valid JSON"),
        (b"[1]", 400, None, "the body must be a JSON object"),
        (b'{"mode": "canary", "percent": 140, "adapter": "tickets/v3"}', 400, "percent",
         "percent must be less than or equal to 100, got 140"),
        (b'{"mode": "blue"}', 400, "mode", "mode must be 'teacher', 'shadow'"),
        (b'{"shadow_max_per_s": 0}', 400, "shadow_max_per_s",
         "shadow_max_per_s must be greater than 0, got 0"),
        (b'{"colour": "red"}', 400, "colour", "colour is not a known setting"),
        (b'{"mode": "canary", "percent": 5}', 400, "adapter",
         "adapter is required when mode is 'canary'"),
        (b'{"mode": "canary", "percent": 5, "adapter": "tickets/v9"}', 400, "adapter",
         "adapter 'tickets/v9' is not published in the store"),
        (b'{"checks": {"must_match": ["("]}}', 400, "checks.must_match",
         "checks.must_match '(' is not a valid RE2 pattern"),
    ],
)  # fmt: skip
def test_bad_changes_are_refused_naming_the_key(
    start: Any, body: bytes, status: int, param: str | None, message: str
) -> None:
    """Each invalid change is a 400 in the OpenAI shape naming the key; nothing changes."""
    gw = start()
    resp = admin(gw).put("/admin/routes/tickets", content=body)
    assert resp.status_code == status
    error = resp.json()["error"]
    assert error["message"].startswith(message), error["message"]
    assert (error["param"], error["type"]) == (param, "invalid_request_error")
    assert gw.gateway.rollouts.policy("tickets") is not None
    assert gw.gateway.rollouts.revision == 0


def test_a_student_mode_needs_a_student(make_gateway: Any, tmp_path: Path) -> None:
    """Without student.base_url, no mode but teacher can be set."""
    publish(tmp_path / "store")
    gw = make_gateway(rollouts={"admin_token": TOKEN})
    resp = admin(gw).put("/admin/routes/tickets", json={"mode": "shadow", "adapter": ADAPTER})
    assert resp.status_code == 400 and resp.json()["error"]["param"] == "mode"


def test_a_change_takes_effect_at_once_and_survives_a_restart(start: Any) -> None:
    """PUT moves traffic without a restart; a new gateway on the same store keeps the change;
    DELETE returns the task to its config."""
    gw = start()
    assert who_answers(gw) == "echo"
    change = {"mode": "canary", "percent": 100, "adapter": ADAPTER}
    resp = admin(gw).put("/admin/routes/tickets", json=change)
    assert resp.status_code == 200, resp.text
    assert (resp.json()["mode"], resp.json()["source"]) == ("canary", "admin")
    assert who_answers(gw) == "student"
    assert gw.metric("protege_rollout_percent", task="tickets") == 100
    gw.stop()

    again = start()
    entry = admin(again).get("/admin/routes/tickets").json()
    assert (entry["mode"], entry["percent"], entry["source"]) == ("canary", 100, "admin")
    assert who_answers(again) == "student"
    partial = admin(again).put("/admin/routes/tickets", json={"percent": 0})
    assert (partial.json()["mode"], partial.json()["percent"]) == ("canary", 0)
    reset = admin(again).delete("/admin/routes/tickets").json()
    assert (reset["mode"], reset["source"]) == ("teacher", "config")
    assert who_answers(again) == "echo"


def test_a_change_the_store_cannot_take_is_not_applied(start: Any) -> None:
    """With the store failing, PUT answers 503 and the rollout stays as it was."""
    gw = start()

    async def broken(*args: Any, **kwargs: Any) -> Any:
        raise StoreError("store unreachable")

    gw.gateway.store.put = broken  # type: ignore[method-assign]
    resp = admin(gw).put("/admin/routes/tickets", json={"mode": "shadow", "adapter": ADAPTER})
    assert resp.status_code == 503 and resp.json()["error"]["code"] == "store_error"
    assert admin(gw).get("/admin/routes/tickets").json()["mode"] == "teacher"


def test_unknown_tasks_can_be_rolled_out_and_bad_names_cannot(start: Any) -> None:
    """A task no route names (header or model derived) can get a rollout; a name that is not
    a task name cannot; an unknown task reads as 404."""
    gw = start()
    c = admin(gw)
    assert c.get("/admin/routes/ghost").status_code == 404
    ok = c.put("/admin/routes/ghost", json={"mode": "shadow", "adapter": ADAPTER})
    assert ok.status_code == 200 and ok.json()["aliases"] == []
    bad = c.put("/admin/routes/-bad", json={})
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "task"
