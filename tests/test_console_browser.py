"""The console as an operator uses it: real traffic through a real gateway (a fake teacher, a fake
LoRAX student), shipped to a real store by the sidecar, then ``protege console`` in its own
process, driven by headless Chromium (``tests.browser``). The page contract the tests hold the
console to: ids, routes and forms of ``protege/console``'s pages.

One world serves the whole module (the traffic, the store, the console); the tests run in file
order and the later ones see what the earlier ones did (the correction, the canary). The last
one saves a screenshot of every page (``make screenshots``: to ``docs/console/``, for the README).
"""

from __future__ import annotations

import asyncio
import io
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import openai
import orjson
import psutil
import pytest
from selenium import webdriver
from selenium.webdriver.common.by import By

from core.events import Event
from core.events import record as record_event
from core.read import read_feedback
from core.runs import RunRecord, write_run
from core.store import open_store
from gateway.config import load_settings
from protege.cli import main
from sidecar.service import run as run_sidecar
from tests.browser import (
    DESKTOP,
    PHONE,
    alert_text,
    fill,
    javascript_links,
    layout_widths,
    open_browser,
    resize,
    row_ids,
    screenshot,
    submit,
    text_of,
    wait_css,
)
from tests.conftest import RunningGateway
from tests.fake_lorax import FakeLorax
from tests.fake_teacher import FakeTeacher, wait_for
from tests.s3_server import free_port
from tests.spooled import spooled_records
from tests.test_rollout_modes import publish
from tests.test_sidecar import settings_for

pytestmark = [pytest.mark.slow, pytest.mark.timeout(60)]

TOKEN = "admin-secret"
TASK, TEACHER_TASK, HOSTILE_TASK = "tickets", "drafts", "intake"
CHAMPION, NEW_ADAPTER, HOSTILE_ADAPTER = "tickets/v3", "tickets/v4", "intake/v1"
SYSTEM = "You are the support desk of Acme. Answer in one sentence."
# The student's answer to each tickets prompt: the teacher says "echo: <prompt>"; None: the same.
TICKETS: dict[str, str | None] = {
    "Where is my parcel 1182?": None,
    "Can I change the delivery address for order 5521?": None,
    "My invoice shows the wrong VAT number.": "echo: My invoice shows a wrong tax number.",
    "How do I reset my password?": "echo: How can I reset the password?",
    "The app crashes when I open the settings page.": None,
    "Do you ship to Norway?": "echo: Yes, we ship to Norway and Sweden.",
    "Is there a discount for students?": None,
    "Please cancel my subscription before Friday.": "Our opening hours are nine to five.",
}
WORST = "Please cancel my subscription before Friday."
OPENED = "Do you ship to Norway?"  # asked with a system message; the exchange page opened
STREAMED = "Is there a discount for students?"
# Content that runs script wherever a page puts it into HTML unescaped.
SCRIPT = "<script>window.__pwned=1</script>"
IMG = '"><img src=x onerror="window.__pwned=1">'
LINK = "javascript:window.__pwned=1"
HOSTILE_PROMPTS = (
    f"Hello {SCRIPT}",
    f"My name is {IMG}",
    f'See [my order]({LINK}) or <a href="{LINK}">this link</a>',
)
HOSTILE_ANSWER = f'{IMG} <a href="{LINK}">open your order</a> [track it]({LINK}) {SCRIPT}'
CORRECTION = "I have cancelled your subscription; it ends on Friday."
CONSOLE_TOKEN = "console-secret"
HEADERS = {
    "x-content-type-options": "nosniff",
    "x-frame-options": "DENY",
    "referrer-policy": "no-referrer",
}
CSP = ("default-src 'self'", "script-src 'self'", "object-src 'none'", "frame-ancestors 'none'")


@dataclass
class World:
    """What the module's tests share: the store, the gateway, the console, the request ids."""

    store: str
    gateway: str
    console: str
    ids: dict[str, str] = field(default_factory=dict)  # prompt -> the client's request id
    shadows: dict[str, dict[str, Any]] = field(default_factory=dict)  # client id -> shadow
    tmp: Path = Path()  # where the module's files and logs are

    def url(self, path: str) -> str:
        return self.console + path

    @property
    def worst_pair(self) -> set[str]:
        """The ids a link to the worst pair may carry: the client's request or its shadow."""
        client = self.ids[WORST]
        return {client, self.shadows[client]["request_id"]}


def student_says(req: dict[str, Any]) -> str:
    prompt = req["messages"][-1]["content"]
    if req["model"] == HOSTILE_ADAPTER:
        return HOSTILE_ANSWER
    return TICKETS.get(prompt) or f"echo: {prompt}"


def route(alias: str, adapter: str | None = None) -> dict[str, Any]:
    if adapter is None:
        return {"alias": alias, "task": alias}
    rollout = {"mode": "shadow", "adapter": adapter, "shadow_max_per_s": 1000,
               "guardrails": {"enabled": False}}  # fmt: skip
    return {"alias": alias, "task": alias, "rollout": rollout}


def start_gateway(tmp: Path, teacher: FakeTeacher, lorax: FakeLorax) -> RunningGateway:
    env = {
        "PROTEGE_TEACHER_BASE_URL": teacher.base_url,
        "PROTEGE_TEACHER_API_KEY": "teacher-secret",
        "PROTEGE_SPOOL_DIR": str(tmp / "spool"),
        "PROTEGE_STORE": f"file://{tmp / 'store'}",
    }
    settings = load_settings(
        env=env,
        student={"base_url": lorax.base_url},
        routes=[route(TASK, CHAMPION), route(TEACHER_TASK), route(HOSTILE_TASK, HOSTILE_ADAPTER)],
        rollouts={"admin_token": TOKEN},
        spool={"segment_max_age_s": 0.2},
    )
    return RunningGateway(settings).start()


def ask(client: openai.OpenAI, model: str, prompt: str, **extra: Any) -> str:
    """One chat request through the official client; the gateway's request id."""
    messages = [{"role": "user", "content": prompt}]
    if prompt == OPENED:
        messages.insert(0, {"role": "system", "content": SYSTEM})
    raw = client.chat.completions.with_raw_response.create(
        model=model, messages=messages, user="alice", **extra
    )
    if extra.get("stream"):
        for _chunk in raw.parse():
            pass
    return raw.headers["x-protege-request-id"]


def send_traffic(gw: RunningGateway) -> dict[str, str]:
    ids = {}
    with openai.OpenAI(base_url=gw.url + "/v1", api_key="k", max_retries=0, timeout=10) as c:
        for prompt in TICKETS:
            ids[prompt] = ask(c, TASK, prompt, stream=prompt == STREAMED)
        for prompt in HOSTILE_PROMPTS:
            ids[prompt] = ask(c, HOSTILE_TASK, prompt)
        ids["draft"] = ask(c, TEACHER_TASK, "Draft a two-line apology for a late parcel.")
        weather = {"type": "function", "function": {"name": "get_weather", "parameters": {
            "type": "object", "properties": {"city": {"type": "string"}}}}}  # fmt: skip
        ids["tool"] = ask(c, TEACHER_TASK, "What is the weather in Paris?", tools=[weather])
    return ids


def settle(gw: RunningGateway, shadowed: int, total: int) -> list[dict[str, Any]]:
    """Every record sealed in the spool, once the shadow calls have been written."""
    spool = Path(gw.settings.spool.dir)

    def done() -> bool:
        return not list(spool.glob("*.open")) and len(spooled_records(spool)) == total

    assert wait_for(done, 20), f"spool did not settle: {len(spooled_records(spool))}/{total}"
    records = spooled_records(spool, details=True)
    assert sum(r["shadow_of"] is not None for r in records) == shadowed
    return records


def build_dataset(store_dir: Path) -> str:
    """``protege dataset build`` of the tickets; the snapshot's name."""
    assert main(["dataset", "build", "--task", TASK, "--store", f"file://{store_dir}"]) == 0
    (snapshot,) = (p.name for p in (store_dir / "datasets" / TASK).iterdir() if p.name != "tests")
    return snapshot


async def write_history(store_uri: str, snapshot: str) -> None:
    """A retraining as the autopilot and the trainer leave it in the store: its events and its
    run record (``tests.test_autopilot_service`` does the same)."""
    now = time.time()
    store = open_store(store_uri)
    evaluation = {"student": {"test-indist": 0.91}, "base": {"test-indist": 0.22}}
    figures = {"data": {"train": 40, "test-indist": 5}, "training": {"steps": 30},
               "evaluation": evaluation}  # fmt: skip
    await write_run(store, RunRecord(
        TASK, "run-1", "published", now - 60, snapshot=snapshot, champion=CHAMPION,
        published=NEW_ADAPTER, started_at=now - 600, figures=figures,
    ))  # fmt: skip
    steps = [
        ("retrain_decided", "autopilot", "12 new exchanges since tickets/v3"),
        ("run_started", "autopilot", "local process"),
        ("trained", "trainer", "30 steps, final loss 0.41"),
        ("evaluated", "trainer", "student 0.91 vs base 0.22 on test-indist"),
        ("published", "trainer", f"{NEW_ADAPTER} published"),
    ]
    for i, (kind, source, summary) in enumerate(steps):
        at = now - 600 + 100 * i
        await record_event(store, Event(TASK, kind, summary, source, at=at, run_id="run-1"))


async def write_report(store_uri: str, snapshot: str, worst: str) -> None:
    """The report ``protege train`` leaves for run-1 (``trainer.report_store``): a plot, the
    headline table, the worst mistakes (a hostile one among them) and ``report.md`` last, its
    mistake's prompt and answer carrying HTML and a javascript: link as the trainer copies
    them."""
    store, prefix = open_store(store_uri), f"reports/{TASK}/run-1/"
    evaluation = {
        "kind": "text", "headline_metric": "agreement", "student_beats_baseline": True,
        "models": [{"name": "student", "role": "student"}, {"name": "base", "role": "base"}],
        "sets": {"test-indist": {"n": 5, "scores": {"student": 0.91, "base": 0.22},
                                 "student_minus_best_baseline": 0.69}},
    }  # fmt: skip
    mistake = {"request_id": worst, "prompt": HOSTILE_PROMPTS[0], "reference": f"echo: {WORST}",
               "prediction": HOSTILE_ANSWER, "score": 0.12, "correct": False,
               "reference_label": None, "predicted_label": None}  # fmt: skip
    report = "\n\n".join([
        f"# {TASK}: run-1", f"- snapshot: `{snapshot}`\n- adapter version: `v4`",
        "## Headline",
        "| test set | student | base |\n|---|---|---|\n| test-indist | 0.91 | 0.22 |",
        "![scores per test set](scores.png)", "## Worst mistakes of the student",
        f"#### 1. `{worst}`, score 0.120", f"Prompt: {HOSTILE_PROMPTS[0]}",
        f"Prediction: {HOSTILE_ANSWER}",
    ])  # fmt: skip
    await store.put(prefix + "scores.png", scores_plot())
    await store.put(prefix + "evaluation.json", orjson.dumps(evaluation))
    await store.put(prefix + "mistakes.json", orjson.dumps({"test-indist": [mistake]}))
    await store.put(prefix + "report.md", report.encode())


def scores_plot() -> bytes:
    """A bar chart of the headline per model, as the trainer draws it (matplotlib's Agg)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(4, 2.5), dpi=80)
    axes = figure.add_subplot()
    axes.bar(["student", "base"], [0.91, 0.22], color=["#2b6cb0", "#a0aec0"])
    axes.set_ylabel("agreement")
    out = io.BytesIO()
    FigureCanvasAgg(figure).print_png(out)
    return out.getvalue()


def start_console(
    tmp: Path, world: World, stack: ExitStack, token: str | None = None
) -> str:
    """``protege console`` on a free loopback port (with a console token if given); its URL
    once it answers. ``stack`` stops it."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k != "PROTEGE_CONSOLE_TOKEN"}
    env["PROTEGE_ADMIN_TOKEN"] = TOKEN
    if token is not None:
        env["PROTEGE_CONSOLE_TOKEN"] = token
    cmd = [sys.executable, "-m", "protege.cli", "console", "--store", world.store,
           "--gateway", world.gateway, "--port", str(port)]  # fmt: skip
    log = tmp / f"console-{port}.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT)
    stack.callback(stop, proc)
    url = f"http://127.0.0.1:{port}"

    def answers() -> bool:
        if proc.poll() is not None:
            return True
        try:
            return httpx.get(url + "/login", timeout=1).status_code < 500
        except httpx.HTTPError:
            return False

    up = wait_for(answers, 30)
    assert up and proc.poll() is None, f"`protege console` did not answer:\n{log.read_text()}"
    return url


def stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    tmp = tmp_path_factory.mktemp("console")
    store = f"file://{tmp / 'store'}"
    with ExitStack() as stack:
        teacher = stack.enter_context(FakeTeacher())
        lorax = stack.enter_context(FakeLorax(says=student_says))
        for adapter in (CHAMPION, NEW_ADAPTER, HOSTILE_ADAPTER):
            publish(tmp / "store", adapter)
        gw = start_gateway(tmp, teacher, lorax)
        stack.callback(gw.stop)
        ids = send_traffic(gw)
        shadowed = len(TICKETS) + len(HOSTILE_PROMPTS)
        records = settle(gw, shadowed, len(ids) + shadowed)
        assert asyncio.run(run_sidecar(settings_for(gw.settings.spool.dir, store), once=True)) == 0
        snapshot = build_dataset(tmp / "store")
        asyncio.run(write_history(store, snapshot))
        asyncio.run(write_report(store, snapshot, ids[WORST]))
        shadows = {r["shadow_of"]: r for r in records if r["shadow_of"]}
        world = World(store, gw.url, "", ids, shadows, tmp)
        world.console = start_console(tmp, world, stack)
        yield world
    assert not psutil.Process().children(recursive=True), "a process outlived the tests"


@pytest.fixture(scope="module")
def browser(world: World) -> Iterator[webdriver.Chrome]:
    """One browser for the module (torn down before the world, which checks no process is
    left)."""
    with open_browser() as driver:
        yield driver


@pytest.fixture
def page(browser: webdriver.Chrome) -> webdriver.Chrome:
    """The browser at the desktop size, on a blank page, without cookies."""
    resize(browser, *DESKTOP)
    browser.get("about:blank")
    browser.execute_cdp_cmd("Network.clearBrowserCookies", {})
    return browser


# -- helpers ---------------------------------------------------------------------------------


def assert_inert(driver: webdriver.Chrome) -> None:
    """No hostile script ran on the page: no flag set, no alert, no javascript: link."""
    where = driver.current_url
    assert alert_text(driver) is None, f"an alert opened on {where}"
    assert driver.execute_script("return window.__pwned") is None, f"script ran on {where}"
    assert not javascript_links(driver), f"javascript: link on {where}"


def assert_safe_headers(url: str) -> None:
    resp = httpx.get(url, timeout=10)
    assert resp.status_code == 200, (url, resp.status_code)
    policy = resp.headers.get("content-security-policy", "")
    for directive in CSP:
        assert directive in policy, f"{url}: CSP lacks {directive!r}: {policy!r}"
    for name, value in HEADERS.items():
        assert resp.headers.get(name) == value, f"{url}: {name} is {resp.headers.get(name)!r}"
    assert resp.headers.get("cache-control") == "no-store", url


def worst_agreement(world: World, task: str) -> float:
    scores = [s["detail"]["agreement"] for s in world.shadows.values() if s["task"] == task]
    return min(scores)


# -- the pages -------------------------------------------------------------------------------


def test_console_overview_shows_each_task_its_charts_and_mode(
    world: World, page: webdriver.Chrome
) -> None:
    """The overview has a section per task: its name, its SVG charts, its rollout mode and
    adapter, and links to its exchanges, disagreements and rollout."""
    page.get(world.url("/"))
    wait_css(page, "nav#nav")
    tickets = wait_css(page, f"section.task#task-{TASK}")
    assert tickets.find_element(By.TAG_NAME, "h2").text.strip() == TASK
    assert len(tickets.find_elements(By.CSS_SELECTOR, "svg.chart")) >= 3
    assert "shadow" in tickets.find_element(By.CSS_SELECTOR, "dd.mode").text
    assert CHAMPION in tickets.find_element(By.CSS_SELECTOR, "dd.adapter").text
    for css, path in (("a.exchanges", f"/exchanges?task={TASK}"),
                      ("a.disagreements", f"/disagreements?task={TASK}"),
                      ("a.rollout", f"/rollouts/{TASK}")):  # fmt: skip
        href = tickets.find_element(By.CSS_SELECTOR, css).get_attribute("href") or ""
        assert href.endswith(path), (css, href)
    drafts = wait_css(page, f"section.task#task-{TEACHER_TASK}")
    assert "teacher" in drafts.find_element(By.CSS_SELECTOR, "dd.mode").text


def test_console_exchanges_filter_and_open_one(world: World, page: webdriver.Chrome) -> None:
    """Filtering by task and route=shadow lists only those exchanges; opening one shows its
    messages, its answer and its facts."""
    page.get(world.url("/exchanges"))
    form = wait_css(page, "form#filters")
    fill(form, "task", TASK)
    fill(form, "route", "shadow")
    submit(page, "apply-filters")
    wait_css(page, "table#exchanges tr.exchange")
    assert "route=shadow" in page.current_url and f"task={TASK}" in page.current_url
    shown = set(row_ids(page, "tr.exchange"))
    clients = {world.ids[p] for p in TICKETS}
    wanted = clients | {world.shadows[c]["request_id"] for c in clients}
    assert shown <= wanted, f"rows of other tasks or routes: {shown - wanted}"
    if not page.find_elements(By.ID, "next-page"):
        assert shown == wanted, f"missing rows: {wanted - shown}"
    opened = world.ids[OPENED]
    if opened not in shown:  # on a later page: open it by its address
        page.get(world.url(f"/exchanges/{opened}"))
    else:
        page.find_element(By.CSS_SELECTOR, f'tr.exchange[data-id="{opened}"] a.open').click()
    wait_css(page, "article#exchange")
    assert SYSTEM in text_of(page, "#messages .message.role-system")
    assert OPENED in text_of(page, "#messages .message.role-user")
    assert f"echo: {OPENED}" in text_of(page, "section#answer")
    facts = text_of(page, "dl#facts")
    assert TASK in facts and "shadow" in facts and "teacher" in facts


def test_console_disagreements_worst_first_and_a_correction_is_stored(
    world: World, page: webdriver.Chrome
) -> None:
    """The worst pair (lowest agreement) comes first; its page shows both answers and their
    diff; a correction saved there flashes and lands in the store as feedback."""
    page.get(world.url(f"/disagreements?task={TASK}"))
    first = wait_css(page, "table#disagreements tr.pair")
    assert first.get_attribute("data-id") in world.worst_pair, (
        f"first row {first.get_attribute('data-id')} is not the worst pair "
        f"(agreement {worst_agreement(world, TASK):.2f}): {world.worst_pair}"
    )
    first.find_element(By.CSS_SELECTOR, "a.open").click()
    wait_css(page, "div#pair")
    assert f"echo: {WORST}" in text_of(page, "section#teacher")
    assert TICKETS[WORST] in text_of(page, "section#student")
    diff = wait_css(page, "section#diff")
    assert diff.find_elements(By.CSS_SELECTOR, "ins, del"), "the diff marks no change"
    form = wait_css(page, "form#correction")
    box = form.find_element(By.NAME, "correction")
    assert (box.get_attribute("value") or "").strip() == f"echo: {WORST}"
    assert form.find_element(By.CSS_SELECTOR, 'input[type="hidden"][name="csrf"]')
    fill(form, "correction", CORRECTION)
    fill(form, "comment", "promise the date")
    submit(page, "save-correction")
    assert "correction recorded" in text_of(page, "p.flash#flash")

    def stored() -> list[dict[str, Any]]:
        rows = read_feedback(world.store, task=TASK).to_pylist()
        return [r for r in rows if r["correction"] == CORRECTION]

    assert wait_for(lambda: bool(stored()), 10), "no correction in the store's feedback/"
    (feedback,) = stored()
    assert feedback["request_id"] in world.worst_pair
    assert feedback["comment"] == "promise the date"


def test_console_rollout_change_reaches_the_gateway(world: World, page: webdriver.Chrome) -> None:
    """Setting canary 25% on a published adapter from the rollout page changes the gateway's
    route (its admin API says so); an adapter the gateway refuses shows the gateway's reason."""
    page.get(world.url(f"/rollouts/{TASK}"))
    wait_css(page, "ol#timeline li.event")
    for adapter in (f"{TASK}/v9", NEW_ADAPTER):
        form = wait_css(page, "form#rollout")
        assert form.find_element(By.CSS_SELECTOR, 'input[type="hidden"][name="csrf"]')
        fill(form, "mode", "canary")
        fill(form, "percent", "25")
        fill(form, "adapter", adapter)
        submit(page, "apply-rollout")
        wait_css(page, "form#rollout")
        errors = [e.text for e in page.find_elements(By.ID, "error")]
        if adapter == NEW_ADAPTER:
            assert not errors, errors
        else:
            assert errors and "not published" in errors[0], errors
            page.get(world.url(f"/rollouts/{TASK}"))
    headers = {"authorization": f"Bearer {TOKEN}"}
    route_ = httpx.get(f"{world.gateway}/admin/routes/{TASK}", headers=headers, timeout=10).json()
    assert (route_["mode"], route_["percent"], route_["adapter"]) == ("canary", 25, NEW_ADAPTER)
    page.get(world.url("/rollouts"))
    assert "canary" in text_of(page, "body")


def test_console_hostile_content_never_runs(world: World, page: webdriver.Chrome) -> None:
    """Prompts and answers carrying script, an onerror attribute and javascript: links show as
    text on every page that shows them; nothing runs; every page sends the CSP."""
    client = world.ids[HOSTILE_PROMPTS[0]]
    urls = [
        "/",
        f"/exchanges?task={HOSTILE_TASK}",
        *(f"/exchanges/{world.ids[p]}" for p in HOSTILE_PROMPTS),
        f"/disagreements?task={HOSTILE_TASK}",
    ]
    for path in urls:
        page.get(world.url(path))
        wait_css(page, "nav#nav")
        assert_inert(page)
        assert_safe_headers(world.url(path))
    page.get(world.url(f"/exchanges/{client}"))
    assert SCRIPT in text_of(page, "#messages"), "the script tag is not shown as text"
    page.get(world.url(f"/disagreements?task={HOSTILE_TASK}"))
    links = page.find_elements(By.CSS_SELECTOR, "tr.pair a.open")
    pairs = [a.get_attribute("href") or "" for a in links]
    assert len(pairs) == len(HOSTILE_PROMPTS), pairs
    for href in pairs:
        page.get(href)
        wait_css(page, "div#pair")
        assert_inert(page)
        assert_safe_headers(href)
        assert 'onerror="window.__pwned=1"' in text_of(page, "section#student")


def test_console_run_report_shows_plots_evaluation_and_mistakes(
    world: World, page: webdriver.Chrome
) -> None:
    """A run's report page renders its markdown (HTML in it as text, javascript: links
    dropped), its plot, its evaluation table and its mistakes linked to their exchanges."""
    page.get(world.url("/runs"))
    wait_css(page, 'tr.run[data-id="run-1"] a[href$="/runs/tickets/run-1"]').click()
    wait_css(page, "table#evaluation")
    assert_inert(page)
    assert_safe_headers(page.current_url)
    assert "0.91" in text_of(page, "table#evaluation")
    assert SCRIPT in text_of(page, "#report"), "the report's HTML is not shown as text"
    plot = wait_css(page, 'img[src$="scores.png"]')
    assert page.execute_script("return arguments[0].naturalWidth", plot) > 0, "plot not served"
    mistake = wait_css(page, f'table#mistakes a[href="/exchanges/{world.ids[WORST]}"]')
    mistake.click()
    assert OPENED not in text_of(page, "article#exchange") and WORST in text_of(page, "#messages")


def test_console_refuses_a_correction_without_csrf_or_from_elsewhere(
    world: World, page: webdriver.Chrome
) -> None:
    """A correction posted without the form's csrf token, or with it from another origin, is a
    403 and stores nothing; the same post from the console itself is taken."""
    page.get(world.url(f"/disagreements?task={TASK}"))
    page.get(wait_css(page, "tr.pair a.open").get_attribute("href") or "")
    form = wait_css(page, "form#correction")
    action = form.get_attribute("action") or ""
    csrf = form.find_element(By.NAME, "csrf").get_attribute("value") or ""
    cookies = {c["name"]: c["value"] for c in page.get_cookies()}
    own = {"origin": world.console, "referer": page.current_url}
    with httpx.Client(cookies=cookies, timeout=10) as c:
        bare = c.post(action, data={"correction": "forged"}, headers=own)
        foreign = c.post(action, data={"correction": "forged", "csrf": csrf},
                         headers={"origin": "http://evil.example"})  # fmt: skip
        taken = c.post(action, data={"correction": "taken", "csrf": csrf}, headers=own)
    assert (bare.status_code, foreign.status_code) == (403, 403)
    assert taken.status_code in (200, 302, 303), taken.status_code
    corrections = read_feedback(world.store, task=TASK).column("correction").to_pylist()
    assert "taken" in corrections and "forged" not in corrections


def test_console_token_is_asked_once_per_session(world: World, page: webdriver.Chrome) -> None:
    """With a console token every page leads to the login form first; a wrong token is refused;
    the right one opens the page asked for and sets an HttpOnly, SameSite=Strict cookie."""
    wanted = f"/exchanges?task={TASK}"
    with ExitStack() as stack:
        url = start_console(world.tmp, world, stack, token=CONSOLE_TOKEN)
        assert httpx.get(url + wanted, timeout=10).status_code in (302, 303, 307)
        page.get(url + wanted)
        fill(wait_css(page, "form#login"), "token", "wrong")
        submit(page, "login-submit")
        fill(wait_css(page, "form#login"), "token", CONSOLE_TOKEN)
        submit(page, "login-submit")
        wait_css(page, "table#exchanges")
        assert page.current_url == url + wanted
        session = [c for c in page.get_cookies() if c.get("httpOnly")]
        assert session and all(c.get("sameSite") == "Strict" for c in session), session


def test_console_fits_a_phone(world: World, page: webdriver.Chrome) -> None:
    """At a phone's width (390 px) the overview, the exchanges list and an exchange lay out at
    device width without the page scrolling sideways (wide tables scroll in their own box)."""
    resize(page, *PHONE)
    for name, path in (("overview-phone", "/"), ("exchanges-phone", f"/exchanges?task={TASK}"),
                       ("exchange-phone", f"/exchanges/{world.ids[OPENED]}")):  # fmt: skip
        page.get(world.url(path))
        wait_css(page, "nav#nav")
        viewport, document = layout_widths(page)
        assert viewport == PHONE[0], f"{path}: laid out {viewport} px wide (no device viewport)"
        assert document <= viewport + 1, f"{path}: {document} px wide on a {viewport} px phone"
        screenshot(page, name)


def test_console_screenshots_of_every_page(world: World, page: webdriver.Chrome) -> None:
    """Each page, at 1280 by 800, saved for the README (``make screenshots``)."""
    client = world.ids[OPENED]
    pages = [
        ("overview", "/", f"section#task-{TASK}"),
        ("exchanges", f"/exchanges?task={TASK}", "table#exchanges tr.exchange"),
        ("exchange", f"/exchanges/{client}", "article#exchange"),
        ("disagreements", f"/disagreements?task={TASK}", "table#disagreements tr.pair"),
        ("runs", "/runs", "table#runs tr.run"),
        ("run", f"/runs/{TASK}/run-1", "table#evaluation"),
        ("datasets", "/datasets", "table#snapshots tr.snapshot"),
        ("rollouts", "/rollouts", "table#rollouts tr.rollout"),
        ("rollout", f"/rollouts/{TASK}", "form#rollout"),
    ]
    for name, path, css in pages:
        page.get(world.url(path))
        wait_css(page, css)
        screenshot(page, name)
    for name, listing, link, css in (
        ("pair", f"/disagreements?task={TASK}", "tr.pair a.open", "div#pair"),
        ("dataset", "/datasets", "tr.snapshot a.open", "#card"),
    ):
        page.get(world.url(listing))
        wait_css(page, link).click()
        wait_css(page, css)
        screenshot(page, name)
