"""The console's web app in process (Starlette's TestClient) over a small file store built here,
beside a real gateway (``make_gateway``) for the rollout controls: pages, links, headers,
escaping, login, CSRF, secrets, corrections and rollout changes.
"""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from html.parser import HTMLParser
from pathlib import Path
from typing import Any
from urllib.parse import urljoin, urlsplit

import httpx
import orjson
import pytest
from starlette.testclient import TestClient

from core.events import Event
from core.events import record as record_event
from core.ids import new_id
from core.live import LiveView, write_view
from core.read import read_feedback
from core.runs import RunRecord, write_run
from core.store import open_store
from gateway.config import load_settings
from protege.cli import build_parser
from protege.console.app import create_app
from protege.console.charts import bars, line
from protege.console.markup import render_markdown, word_diff
from protege.console.security import (
    Session,
    decode_session,
    encode_session,
    same_origin,
    signing_key,
)
from protege.console.settings import load_console_settings
from sidecar.config import load_sidecar_settings
from tests.conftest import RunningGateway
from tests.fake_lorax import FakeLorax
from tests.stored import EPOCH, put_part
from tests.test_rollout_modes import publish

ADMIN = "admin-token-9f2c"
CONSOLE_TOKEN = "console-token-77ab"
SECRETS = {
    "teacher key": "sk-teacher-SECRET-1d4e",
    "client key": "client-key-SECRET-52aa",
    "hash salt": "salt-SECRET-0c9b",
    "admin token": ADMIN,
    "console token": CONSOLE_TOKEN,
}
TASK, HOSTILE = "tickets", "intake"
SCRIPT = "<script>alert(1)</script>"
IMG = '"><img src=x onerror=alert(1)>'
LINK = "javascript:alert(1)"
HOSTILE_TEXT = f'{SCRIPT} {IMG} [click]({LINK}) <a href="{LINK}">x</a>'
ORIGIN = "http://testserver"
CSP_SCRIPT = "script-src 'self'"
HEADERS = {
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
    "x-frame-options": "DENY",
    "cache-control": "no-store",
}
# A 1x1 PNG.
PNG = bytes.fromhex(
    "89504e470d0a1a0a0000000d49484452000000010000000108060000001f15c489"
    "0000000d49444154789c6360000002000154a24f5d0000000049454e44ae426082"
)


def exchange(
    request_id: str, when: datetime, task: str, prompt: str, answer: str, **extra: Any
) -> dict[str, Any]:
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": prompt}]
    response = {"choices": [{"message": {"role": "assistant", "content": answer}}]}
    return {
        "request_id": request_id, "schema_version": 2,
        "ts": (when - EPOCH) // timedelta(microseconds=1), "task": task,
        "endpoint": "chat.completions", "backend": "teacher", "route": "shadow",
        "stream": False, "complete": True, "status": 200,
        "request": orjson.dumps({"model": task, "messages": messages}).decode(),
        "response": orjson.dumps(response).decode(),
        "prompt_tokens": 12, "completion_tokens": 5, "latency_ms": 40.0,
        **extra,
    }  # fmt: skip


def shadow(client: dict[str, Any], answer: str, overall: float) -> dict[str, Any]:
    agreement = {"exact": False, "normalized": False, "similarity": overall, "fields": None,
                 "json_fields": None, "overall": overall}  # fmt: skip
    detail = {"why": "shadow", "checks": ["max_chars"] if overall < 0.5 else [],
              "agreement": agreement}  # fmt: skip
    response = {"choices": [{"message": {"role": "assistant", "content": answer}}]}
    return {
        **client, "request_id": at_time(client["ts"] // 1000 + 5), "backend": "student",
        "adapter": f"{client['task']}/v3", "shadow_of": client["request_id"],
        "response": orjson.dumps(response).decode(), "detail": orjson.dumps(detail).decode(),
    }  # fmt: skip


def at_time(ms: int) -> str:
    """A request id (a ULID) dating from ``ms`` milliseconds after the epoch."""
    return new_id(ms)


async def fill_store(root: Path, tmp: Path) -> dict[str, str]:
    """Exchanges with shadows (a hostile task among them), a snapshot, a run with its report,
    a timeline, the autopilot's status and a live view; the ids a test needs."""
    store = open_store(f"file://{root}")
    now = datetime.now(UTC).replace(minute=5, second=0, microsecond=0)
    found: dict[str, str] = {}
    tickets, pairs = [], []
    for i in range(6):
        when = now - timedelta(minutes=i)
        client = exchange(at_time(int(when.timestamp() * 1000)), when, TASK,
                          f"Where is parcel {i}?", f"It is on its way, parcel {i}.")  # fmt: skip
        tickets.append(client)
        pairs.append(shadow(client, f"It left, parcel {i}." if i else "No idea.", 0.2 + i / 10))
    found["client"], found["worst_shadow"] = tickets[0]["request_id"], pairs[0]["request_id"]
    hostile_id = at_time(int(now.timestamp() * 1000))
    hostile = exchange(hostile_id, now, HOSTILE, HOSTILE_TEXT, HOSTILE_TEXT)
    hostile_pair = shadow(hostile, HOSTILE_TEXT + " student", 0.1)
    found["hostile"], found["hostile_pair"] = hostile["request_id"], hostile_pair["request_id"]
    await put_part(store, "seg-1", [*tickets, *pairs], tmp)
    await put_part(store, "seg-2", [hostile, hostile_pair], tmp)
    card = {"task": TASK, "snapshot": "20250101-000000", "created": now.isoformat(),
            "since": None, "until": None, "seed": 1, "records_in": 6,
            "examples": {"train": 4, "test-indist": 1}, "groups": {}, "classes": {},
            "sources": {"train": {"teacher": 4}}, "drops": {"incomplete": 1},
            "tests_from": "20250101-000000", "tests_reused": False, "config": {},
            "feedback": {"records": 0}}  # fmt: skip
    await store.put(f"datasets/{TASK}/20250101-000000/card.json", orjson.dumps(card))
    await write_run(store, RunRecord(TASK, "run-1", "published", time.time() - 60,
                                     snapshot="20250101-000000", published=f"{TASK}/v4"))
    report = f"reports/{TASK}/run-1/"
    markdown = f"# Run 1\n\n![scores](scores.png)\n\n[bad]({LINK}) [good](https://example.com)\n"
    models = [{"name": "student", "role": "student"}, {"name": "base", "role": "base"}]
    evaluation = {"kind": "text", "headline_metric": "similarity", "models": models,
                  "student_beats_baseline": True,
                  "sets": {"test-indist": {"n": 1, "scores": {"student": 0.9, "base": 0.2},
                                           "student_minus_best_baseline": 0.7}}}  # fmt: skip
    mistakes = {"test-indist": [{"request_id": tickets[1]["request_id"], "prompt": SCRIPT,
                                 "reference": "a", "prediction": IMG, "score": 0.1}]}  # fmt: skip
    for name, data in (("scores.png", PNG), ("evaluation.json", orjson.dumps(evaluation)),
                       ("mistakes.json", orjson.dumps(mistakes)), ("run.json", b"{}"),
                       ("report.md", markdown.encode())):  # fmt: skip
        await store.put(report + name, data)
    for kind, summary in (("retrain_decided", "6 new exchanges"), ("published", f"{SCRIPT} v4")):
        await record_event(store, Event(TASK, kind, summary, "autopilot", run_id="run-1"))
    status = {"task": TASK, "at": time.time(), "why": "wait", "detail": "not enough data",
              "last_outcome": {"run_id": "run-1", "outcome": "published",
                               "adapter": f"{TASK}/v4", "at": time.time() - 60}}  # fmt: skip
    await store.put(f"autopilot/{TASK}/status.json", orjson.dumps(status))
    await write_view(store, LiveView(TASK, "replica-1", time.time(), f"{TASK}/v3", "shadow", 0.042))
    return found


class Console:
    """The console app over the store, driven by a TestClient (its lifespan run)."""

    def __init__(self, client: TestClient, ids: dict[str, str], store: Path) -> None:
        self.client, self.ids, self.store = client, ids, store

    def csrf(self, path: str) -> str:
        page = self.client.get(path)
        assert page.status_code == 200, (path, page.status_code, page.text[:300])
        found = re.search(r'name="csrf" value="([^"]+)"', page.text)
        assert found, f"{path} has no CSRF field"
        return found[1]

    def post(self, path: str, data: dict[str, str], origin: str | None = ORIGIN) -> httpx.Response:
        headers = {"origin": origin} if origin else {}
        return self.client.post(path, data=data, headers=headers, follow_redirects=True)


@pytest.fixture
def world(tmp_path: Path) -> dict[str, str]:
    (tmp_path / "parts").mkdir()
    for adapter in (f"{TASK}/v3", f"{TASK}/v4"):
        publish(tmp_path / "store", adapter)
    return asyncio.run(fill_store(tmp_path / "store", tmp_path / "parts"))


@pytest.fixture
def gateway(make_gateway: Callable[..., RunningGateway], lorax: FakeLorax) -> RunningGateway:
    rollout = {"mode": "shadow", "adapter": f"{TASK}/v3"}
    routes = [{"alias": TASK, "task": TASK, "rollout": rollout},
              {"alias": HOSTILE, "task": HOSTILE}]  # fmt: skip
    return make_gateway(student={"base_url": lorax.base_url}, routes=routes,
                        rollouts={"admin_token": ADMIN})  # fmt: skip


@pytest.fixture
def start(tmp_path: Path, world: dict[str, str]) -> Iterator[Callable[..., Console]]:
    clients: list[TestClient] = []

    def start(gateway_url: str, env: dict[str, str] | None = None, **console: Any) -> Console:
        env = {"PROTEGE_ADMIN_TOKEN": ADMIN, **(env or {})}
        section = {"gateway_url": gateway_url, "page_size": 3, **console}
        settings = load_console_settings(
            None, env, store=f"file://{tmp_path / 'store'}", console=section
        )
        client = TestClient(create_app(settings), base_url=ORIGIN).__enter__()
        clients.append(client)
        return Console(client, world, tmp_path / "store")

    yield start
    for client in clients:
        client.__exit__(None, None, None)


class Links(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.hrefs: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        for name, value in attrs:
            if name in ("href", "src") and value:
                self.hrefs.append(value)


def crawl(console: Console, limit: int = 120) -> dict[str, httpx.Response]:
    """Every page of the console reachable by links from ``/`` (up to ``limit``)."""
    seen: dict[str, httpx.Response] = {}
    todo = ["/"]
    while todo and len(seen) < limit:
        path = todo.pop(0)
        if path in seen:
            continue
        resp = console.client.get(path)
        seen[path] = resp
        if "text/html" not in resp.headers.get("content-type", ""):
            continue
        parser = Links()
        parser.feed(resp.text)
        for href in parser.hrefs:
            url = urlsplit(urljoin(ORIGIN + path, href))
            if url.netloc == "testserver" and url.path != "/logout":
                target = url.path + (f"?{url.query}" if url.query else "")
                if target not in seen:
                    todo.append(target)
    return seen


def test_console_every_page_is_reachable_from_the_overview(
    start: Callable[..., Console], gateway: RunningGateway
) -> None:
    """Crawling links from ``/`` reaches every kind of page, each answering 200 with the
    security headers (a CSP whose script-src is 'self' only)."""
    console = start(gateway.url)
    pages = crawl(console)
    bad = {p: r.status_code for p, r in pages.items() if r.status_code != 200}
    assert not bad, bad
    wanted = [
        "/", "/exchanges", "/disagreements", "/datasets", "/runs", "/rollouts",
        f"/exchanges/{console.ids['client']}", f"/disagreements/{console.ids['worst_shadow']}",
        f"/datasets/{TASK}/20250101-000000", f"/runs/{TASK}/run-1",
        f"/runs/{TASK}/run-1/scores.png", f"/rollouts/{TASK}", "/static/console.css",
    ]  # fmt: skip
    reached = {urlsplit(p).path for p in pages}
    assert not [w for w in wanted if w not in reached], sorted(reached)
    assert any("page=2" in p for p in pages), "no pager link followed"
    for path, resp in pages.items():
        if "text/html" in resp.headers["content-type"]:
            policy = resp.headers["content-security-policy"]
            assert CSP_SCRIPT in policy and "unsafe-inline" not in policy, path
            assert "frame-ancestors 'none'" in policy, path
            for name, value in HEADERS.items():
                assert resp.headers.get(name) == value, (path, name)
            assert '<nav id="nav">' in resp.text, path


def test_console_overview_shows_rollout_loop_and_charts(
    start: Callable[..., Console], gateway: RunningGateway
) -> None:
    """A task's section: its charts, the rollout from the gateway, the last retrain and the
    live drift, and its links."""
    page = start(gateway.url).client.get("/").text
    section = page[page.index(f'id="task-{TASK}"') :]
    section = section[: section.index("</section>")]
    assert section.count('<svg class="chart"') >= 3
    assert re.search(r'<dd class="mode">\s*shadow', section)
    assert f'<dd class="adapter">{TASK}/v3</dd>' in section
    assert "published" in section and "0.042" in section
    for css, href in (("exchanges", f"/exchanges?task={TASK}"),
                      ("disagreements", f"/disagreements?task={TASK}"),
                      ("rollout", f"/rollouts/{TASK}")):  # fmt: skip
        assert f'<a class="{css}" href="{href}">' in section


def test_console_overview_says_when_the_gateway_is_down(start: Callable[..., Console]) -> None:
    """No gateway at the configured URL: the overview still answers 200, with a notice, and
    the store's tasks still show."""
    page = start("http://127.0.0.1:9").client.get("/")
    assert page.status_code == 200
    assert 'id="gateway-notice"' in page.text and "cannot be reached" in page.text
    assert f'id="task-{TASK}"' in page.text
    rollouts = start("http://127.0.0.1:9").client.get(f"/rollouts/{TASK}")
    assert rollouts.status_code == 200 and "cannot be reached" in rollouts.text


def test_console_hostile_content_is_escaped(
    start: Callable[..., Console], gateway: RunningGateway
) -> None:
    """Script tags, attribute breakouts and javascript: links in prompts, answers, events and
    reports are shown as text: no live tag, no javascript: URL on any page."""
    console = start(gateway.url)
    paths = [
        f"/exchanges?task={HOSTILE}", f"/exchanges/{console.ids['hostile']}",
        f"/disagreements?task={HOSTILE}", f"/disagreements/{console.ids['hostile_pair']}",
        f"/rollouts/{TASK}", f"/runs/{TASK}/run-1",
    ]  # fmt: skip
    for path in paths:
        resp = console.client.get(path)
        assert resp.status_code == 200, path
        assert "<script" not in resp.text.lower(), path
        assert "<img src=x" not in resp.text, path
        assert not re.search(r'(href|src)="\s*javascript:', resp.text, re.I), path
        assert "&lt;script&gt;" in resp.text, f"{path} does not show the script tag as text"
    pair = console.client.get(f"/disagreements/{console.ids['hostile_pair']}").text
    diff = pair[pair.index('id="diff"') :]
    assert "<ins>" in diff and "&lt;script&gt;" in diff
    report = console.client.get(f"/runs/{TASK}/run-1").text
    assert '<a href="https://example.com">good</a>' in report
    assert f'<img src="/runs/{TASK}/run-1/scores.png"' in report


def test_console_login_with_a_token(
    start: Callable[..., Console], gateway: RunningGateway
) -> None:
    """With a console token every page sends to the login form; a wrong token is refused; the
    right one sets an HttpOnly, SameSite=Strict cookie and goes to the page asked for."""
    console = start(gateway.url, {"PROTEGE_CONSOLE_TOKEN": CONSOLE_TOKEN})
    first = console.client.get("/runs", follow_redirects=False)
    assert first.status_code == 303 and first.headers["location"] == "/login?next=/runs"
    assert console.client.get("/static/console.css").status_code == 200
    csrf = console.csrf("/login?next=/runs")
    wrong = console.post("/login", {"csrf": csrf, "token": "nope", "next": "/runs"})
    assert wrong.status_code == 401 and 'id="login"' in wrong.text
    login = {"csrf": csrf, "token": CONSOLE_TOKEN, "next": "/runs"}
    resp = console.client.post(
        "/login", data=login, headers={"origin": ORIGIN}, follow_redirects=False
    )
    assert resp.status_code == 303 and resp.headers["location"] == "/runs"
    cookie = resp.headers["set-cookie"].lower()
    assert "httponly" in cookie and "samesite=strict" in cookie
    assert console.client.get("/runs").status_code == 200
    evil = console.post("/login", {"csrf": console.csrf("/login"), "token": CONSOLE_TOKEN,
                                   "next": "//evil.example/"}, origin=ORIGIN)  # fmt: skip
    assert evil.url.host == "testserver"


@pytest.mark.parametrize(
    ("csrf", "origin"),
    [(None, ORIGIN), ("wrong", ORIGIN), ("right", "https://evil.example")],
    ids=["missing", "wrong", "cross-origin"],
)
def test_console_refuses_a_forged_post(
    start: Callable[..., Console], gateway: RunningGateway, csrf: str | None, origin: str
) -> None:
    """A correction or a rollout change without the session's CSRF token, or from another
    origin, is a 403 page and changes nothing."""
    console = start(gateway.url)
    pair = f"/disagreements/{console.ids['worst_shadow']}"
    token = console.csrf(pair)
    data = {"correction": "forged", "comment": ""}
    if csrf is not None:
        data["csrf"] = token if csrf == "right" else csrf
    resp = console.post(f"{pair}/correction", data, origin=origin)
    assert resp.status_code == 403 and 'id="error"' in resp.text
    change = console.post(f"/rollouts/{TASK}", {**data, "mode": "teacher"}, origin=origin)
    assert change.status_code == 403
    headers = {"authorization": f"Bearer {ADMIN}"}
    route = httpx.get(f"{gateway.url}/admin/routes/{TASK}", headers=headers).json()
    assert route["mode"] == "shadow"
    assert read_feedback(f"file://{console.store}", task=TASK).num_rows == 0


def test_console_correction_lands_as_feedback(
    start: Callable[..., Console], gateway: RunningGateway
) -> None:
    """A correction saved on a pair's page flashes, and is stored as feedback on the client's
    exchange with its comment."""
    console = start(gateway.url)
    pair = f"/disagreements/{console.ids['worst_shadow']}"
    page = console.client.get(pair).text
    assert "It is on its way, parcel 0." in page[page.index("<textarea") :]
    data = {"csrf": console.csrf(pair), "correction": "Parcel 0 arrives Friday.", "comment": "ok"}
    resp = console.post(f"{pair}/correction", data)
    assert resp.status_code == 200
    assert '<p class="flash" id="flash">correction recorded' in resp.text
    rows = read_feedback(f"file://{console.store}", task=TASK).to_pylist()
    assert [(r["request_id"], r["correction"], r["comment"]) for r in rows] == [
        (console.ids["client"], "Parcel 0 arrives Friday.", "ok")
    ]


def test_console_rollout_change_reaches_the_gateway(
    start: Callable[..., Console], gateway: RunningGateway
) -> None:
    """The rollout form changes the gateway's route; step back sets shadow; the gateway's
    refusal (an adapter not published) is shown."""
    console = start(gateway.url)
    path = f"/rollouts/{TASK}"
    admin = {"authorization": f"Bearer {ADMIN}"}
    data = {"csrf": console.csrf(path), "mode": "canary", "percent": "25", "adapter": f"{TASK}/v4"}
    resp = console.post(path, data)
    assert resp.status_code == 200 and 'id="flash"' in resp.text
    route = httpx.get(f"{gateway.url}/admin/routes", headers=admin).json()["data"]
    mine = next(r for r in route if r["task"] == TASK)
    assert (mine["mode"], mine["percent"], mine["adapter"]) == ("canary", 25, f"{TASK}/v4")
    back = console.post(path, {"csrf": data["csrf"], "mode": "shadow"})
    assert back.status_code == 200
    assert httpx.get(f"{gateway.url}/admin/routes/{TASK}", headers=admin).json()["mode"] == "shadow"
    refused = console.post(path, {**data, "adapter": f"{TASK}/v9"})
    assert refused.status_code == 400
    assert 'id="error"' in refused.text and "not published" in refused.text


def test_console_without_admin_token_shows_no_controls(
    start: Callable[..., Console], gateway: RunningGateway
) -> None:
    """Without an admin token the rollout form is not shown and a POST is refused."""
    console = start(gateway.url, {"PROTEGE_ADMIN_TOKEN": ""})
    path = f"/rollouts/{TASK}"
    page = console.client.get(path).text
    assert 'id="rollout"' not in page and "rollouts.admin_token" in page
    csrf = console.csrf(f"/disagreements/{console.ids['worst_shadow']}")
    resp = console.post(path, {"csrf": csrf, "mode": "teacher"})
    assert resp.status_code == 403 and "admin token" in resp.text


def test_console_pages_never_show_a_secret(
    start: Callable[..., Console], gateway: RunningGateway, tmp_path: Path
) -> None:
    """Configured secrets (teacher key, client keys, hash salt, admin and console tokens)
    appear on no page, the login and error pages included."""
    config = tmp_path / "protege.yaml"
    config.write_text(
        f"teacher: {{api_key: {SECRETS['teacher key']}}}\n"
        f"api_keys: [{SECRETS['client key']}]\nhash_salt: {SECRETS['hash salt']}\n"
        f"rollouts: {{admin_token: {ADMIN}}}\nconsole: {{token: {CONSOLE_TOKEN}}}\n"
    )
    settings = load_console_settings(config, {}, store=f"file://{tmp_path / 'store'}",
                                     console={"gateway_url": gateway.url})  # fmt: skip
    assert settings.token == CONSOLE_TOKEN and settings.admin_token == ADMIN
    with TestClient(create_app(settings), base_url=ORIGIN) as client:
        console = Console(client, {}, tmp_path / "store")
        pages = {"/login": client.get("/login").text}
        login = {"csrf": console.csrf("/login"), "token": CONSOLE_TOKEN, "next": "/"}
        assert console.post("/login", login).status_code == 200
        pages |= {p: r.text for p, r in crawl(console).items()}
        pages["/nowhere"] = client.get("/nowhere").text
        pages["forged"] = console.post(f"/rollouts/{TASK}", {"mode": "x"}).text
        change = {"csrf": console.csrf("/rollouts"), "mode": "canary", "adapter": "tickets/zz"}
        bad = console.post(f"/rollouts/{TASK}", change)
        pages["refused"] = bad.text
    assert len(pages) > 15
    for path, text in pages.items():
        for what, secret in SECRETS.items():
            assert secret not in text, f"{path} shows the {what}"


def test_console_refuses_to_listen_beyond_loopback_without_a_token(tmp_path: Path) -> None:
    """``protege console --host 0.0.0.0`` without a console token exits 2 naming the
    setting."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PROTEGE_")}
    cmd = [sys.executable, "-m", "protege.cli", "console", "--host", "0.0.0.0",
           "--store", f"file://{tmp_path}"]  # fmt: skip
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2, done.stderr
    assert "console.token" in done.stderr and "PROTEGE_CONSOLE_TOKEN" in done.stderr


# -- pure pieces -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("old", "new", "shown"),
    [
        ("a b c", "a x c", "a <del>b</del> <ins>x</ins> c"),
        ("<b>", "<i>", "<del>&lt;b&gt;</del> <ins>&lt;i&gt;</ins>"),
        (IMG, "same", "<del>&#34;&gt;&lt;img src=x onerror=alert(1)&gt;</del> <ins>same</ins>"),
    ],
)
def test_console_word_diff_is_built_from_escaped_words(old: str, new: str, shown: str) -> None:
    """The diff's only markup is its <ins>/<del>; every word inside is escaped."""
    assert shown in str(word_diff(old, new))


@pytest.mark.parametrize(
    ("text", "absent", "present"),
    [
        (f"[x]({LINK})", 'href="javascript:', "[x]("),
        ("[x](data:text/html,hi)", 'href="data:', "[x]("),
        (SCRIPT, "<script", "&lt;script&gt;"),
        ("![plot](loss.png)", "", '<img src="/runs/t/r/loss.png" alt="plot"'),
        ("[doc](https://example.com/a)", "", '<a href="https://example.com/a">doc</a>'),
    ],
)
def test_console_markdown_allows_only_safe_links(text: str, absent: str, present: str) -> None:
    """Report markdown: no raw HTML, links only http(s) or relative, relative ones rebased."""
    html = str(render_markdown(text, "/runs/t/r/"))
    assert present in html
    if absent:
        assert absent not in html


def test_console_session_cookie_is_signed() -> None:
    """A session cookie decodes back to itself; a tampered or foreign one is a fresh session."""
    key = signing_key("token")
    session = Session(authenticated=True)
    cookie = encode_session(session, key)
    back = decode_session(cookie, key, time.time())
    assert back.authenticated and back.csrf == session.csrf
    payload, signature = cookie.rsplit(".", 1)
    forged = encode_session(Session(authenticated=True), signing_key("other"))
    for bad in (forged, f"{payload}.{signature[:-2]}xx", "junk", ""):
        assert not decode_session(bad, key, time.time()).authenticated


@pytest.mark.parametrize(
    ("headers", "ok"),
    [
        ({"origin": ORIGIN}, True),
        ({"origin": "null", "sec-fetch-site": "same-origin"}, True),
        ({}, True),
        ({"origin": "https://evil.example"}, False),
        ({"referer": "https://evil.example/x"}, False),
        ({"origin": "null", "sec-fetch-site": "cross-site"}, False),
    ],
)
def test_console_same_origin_check(headers: dict[str, str], ok: bool) -> None:
    """A POST from another site (Origin, Referer or Sec-Fetch-Site say so) is not same-origin."""
    assert same_origin(headers, ORIGIN) is ok


def test_console_charts_are_svg_without_style_or_script() -> None:
    """Charts are inline SVG with classes only: nothing the CSP would block, labels escaped."""
    svg = str(bars("<b>", [("01-01", 3.0), ("01-02", None)]) + line("rate", [("a", 0.5)]))
    assert svg.count('<svg class="chart"') == 2 and "&lt;b&gt;" in svg
    assert "style=" not in svg and "<script" not in svg


def test_console_section_is_ignored_by_the_gateway_and_sidecar(tmp_path: Path) -> None:
    """The shared config's ``console`` section does not trouble the other services' loaders."""
    config = tmp_path / "protege.yaml"
    config.write_text("console: {port: 9000, token: t}\nstore: file:///tmp/s\n")
    assert load_settings(config, {}).store == "file:///tmp/s"
    assert load_sidecar_settings(config, {}).store == "file:///tmp/s"
    assert load_console_settings(config, {}).console.port == 9000
    assert build_parser().parse_args(["up", "--no-console"]).no_console
