"""The autopilot's admin API: pause and resume a task, read the holds, errors in OpenAI's shape."""

from __future__ import annotations

import hmac
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from fastapi import FastAPI, Request

from core.control import read_holds
from core.events import timeline
from core.keys import run_key, status_key
from gateway.admin_autopilot import AutopilotAdmin, add_autopilot_routes
from gateway.app import _add_error_handlers
from gateway.auth import bearer
from gateway.background import Background
from gateway.errors import Unauthorized
from tests.stored import FlakyStore

TOKEN = "admin-secret"
AUTH = {"authorization": f"Bearer {TOKEN}"}




def authorize(request: Request) -> None:
    """The admin API's check, as ``gateway.admin.Admin.authorize`` does it."""
    token = bearer(request.headers.get("authorization")) or ""
    if not hmac.compare_digest(token.encode(), TOKEN.encode()):
        raise Unauthorized("the admin API needs Authorization: Bearer <admin token>")


class Api:
    """The routes on a bare app, with the gateway's error handlers and background."""

    def __init__(self, store: FlakyStore) -> None:
        self.store = store
        self.background = Background()
        app = FastAPI()
        _add_error_handlers(app)
        add_autopilot_routes(app, AutopilotAdmin(authorize, store, self.background.spawn))
        self.client = httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://gateway", headers=AUTH
        )

    async def put(self, task: str, body: Any) -> httpx.Response:
        return await self.client.put(f"/admin/autopilot/{task}", content=orjson.dumps(body))

    async def settled(self) -> None:
        """Background work (event recording) done."""
        await self.background.aclose(grace_s=10)


@pytest.fixture
async def api(tmp_path: Path) -> AsyncIterator[Api]:
    api = Api(FlakyStore(tmp_path / "store"))
    async with api.client:
        yield api
    await api.settled()


def error(resp: httpx.Response) -> dict[str, Any]:
    body = resp.json()
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}
    err: dict[str, Any] = body["error"]
    return err


@pytest.mark.parametrize("headers", [{}, {"authorization": "Bearer wrong"}])
@pytest.mark.parametrize(
    ("method", "path"),
    [("GET", "/admin/autopilot"), ("GET", "/admin/autopilot/t"), ("PUT", "/admin/autopilot/t")],
)
async def test_autopilot_admin_needs_the_token(
    api: Api, headers: dict[str, str], method: str, path: str
) -> None:
    """Without the admin token every route is a 401 in the OpenAI error shape; nothing changes."""
    api.client.headers.pop("authorization")
    resp = await api.client.request(method, path, headers=headers, json={"paused": True})
    assert resp.status_code == 401
    assert error(resp)["code"] == "invalid_api_key"
    assert await read_holds(api.store) == {}


async def test_autopilot_pause_resume_round_trip(api: Api) -> None:
    """A pause holds the task with its reason; a resume releases it; both answer the entry."""
    paused = await api.put("tickets", {"paused": True, "reason": "holiday freeze"})
    assert paused.status_code == 200
    assert paused.json() | {"at": None} == {
        "task": "tickets", "paused": True, "reason": "holiday freeze", "at": None, "status": None,
    }  # fmt: skip
    assert (await api.client.get("/admin/autopilot/tickets")).json() == paused.json()
    assert (await read_holds(api.store))["tickets"].paused

    resumed = await api.put("tickets", {"paused": False})
    assert resumed.status_code == 200
    assert (resumed.json()["paused"], resumed.json()["reason"]) == (False, None)
    assert not (await read_holds(api.store))["tickets"].paused


async def test_autopilot_changes_recorded_on_the_timeline(api: Api) -> None:
    """Each change becomes a paused/resumed event from the admin, the reason in its summary."""
    await api.put("tickets", {"paused": True, "reason": "holiday freeze"})
    await api.put("tickets", {"paused": False, "reason": "back"})
    await api.settled()
    events = await timeline(api.store, "tickets")
    assert [(e.kind, e.source) for e in events] == [("paused", "admin"), ("resumed", "admin")]
    assert "holiday freeze" in events[0].summary and "back" in events[1].summary


async def test_autopilot_never_paused_task(api: Api) -> None:
    """A task never paused reads as not paused, with no reason, time or status."""
    resp = await api.client.get("/admin/autopilot/drafts")
    assert resp.json() == {
        "task": "drafts", "paused": False, "reason": None, "at": None, "status": None,
    }  # fmt: skip


async def test_autopilot_list_holds_and_statuses(api: Api) -> None:
    """The list names every held task and every task with a status, the status verbatim."""
    status = {"decision": "wait", "why": "no new data", "at": 1.5}
    await api.store.put(status_key("drafts"), orjson.dumps(status))
    await api.store.put(run_key("drafts", "r1"), b"{}")
    await api.store.put(status_key("broken"), b"not json")
    await api.put("tickets", {"paused": True})
    resp = await api.client.get("/admin/autopilot")
    assert resp.status_code == 200
    body = resp.json()
    assert body["object"] == "list"
    listed = {e["task"]: (e["paused"], e["status"]) for e in body["data"]}
    assert listed == {"broken": (False, None), "drafts": (False, status), "tickets": (True, None)}
    assert [e["task"] for e in body["data"]] == ["broken", "drafts", "tickets"]


@pytest.mark.parametrize(
    ("task", "body", "param"),
    [
        ("tickets", {}, "paused"),
        ("tickets", {"paused": "yes"}, "paused"),
        ("tickets", {"paused": None}, "paused"),
        ("tickets", {"paused": 1}, "paused"),
        ("tickets", {"paused": True, "until": "monday"}, "until"),
        ("tickets", {"paused": True, "reason": 5}, "reason"),
        ("tickets", {"paused": True, "reason": "x" * 501}, "reason"),
        ("tickets", ["paused"], None),
        ("-tickets", {"paused": True}, "task"),
    ],
)
async def test_autopilot_invalid_change_refused(
    api: Api, task: str, body: Any, param: str | None
) -> None:
    """A bad change is a 400 naming the key, and changes nothing."""
    resp = await api.put(task, body)
    assert resp.status_code == 400
    assert error(resp)["type"] == "invalid_request_error"
    assert error(resp)["param"] == param
    assert await read_holds(api.store) == {}


async def test_autopilot_body_not_json_refused(api: Api) -> None:
    """A body that is not JSON is a 400."""
    resp = await api.client.put("/admin/autopilot/tickets", content=b"{paused")
    assert resp.status_code == 400
    assert "not valid JSON" in error(resp)["message"]


async def test_autopilot_reason_of_500_chars_accepted(api: Api) -> None:
    """A reason of exactly 500 characters is kept."""
    resp = await api.put("tickets", {"paused": True, "reason": "x" * 500})
    assert resp.status_code == 200 and resp.json()["reason"] == "x" * 500


async def test_autopilot_store_down_is_503(api: Api) -> None:
    """A store that is down: every route is a 503 store_error, and nothing is changed."""
    api.store.down = True
    for resp in [
        await api.put("tickets", {"paused": True}),
        await api.client.get("/admin/autopilot"),
        await api.client.get("/admin/autopilot/tickets"),
    ]:
        assert resp.status_code == 503
        assert (error(resp)["type"], error(resp)["code"]) == ("server_error", "store_error")
    api.store.down = False
    await api.settled()
    assert await read_holds(api.store) == {}
    assert await timeline(api.store, "tickets") == []
