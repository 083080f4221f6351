"""``/``: every task at a glance: its traffic over the last days as small charts, its rollout
(from the gateway's admin API: a gateway that is down is said, the rest still shows), the
autopilot's last retrain and decision, and the live input drift the gateways report.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any, Final

import structlog
from markupsafe import Markup
from starlette.requests import Request
from starlette.responses import Response

from core.errors import StoreError
from core.live import LiveView
from protege.console import charts, documents
from protege.console.gateway_api import GatewayRefused, GatewayUnavailable
from protege.console.resources import Console, console
from protege.console.web import render
from trainer.autopilot.status import Status

log = structlog.get_logger("console")

DAYS: Final = 14


@dataclass
class TaskView:
    name: str
    rollout: dict[str, Any] | None
    status: Status
    last_run: dict[str, Any] | None = None
    drift: float | None = None
    views: list[LiveView] = field(default_factory=list)
    charts: list[Markup] = field(default_factory=list)


async def rollouts(c: Console) -> tuple[dict[str, dict[str, Any]], str | None]:
    """Every task's rollout, and a notice for the page when the gateway cannot say."""
    try:
        return await c.admin.routes(), None
    except GatewayUnavailable as exc:
        return {}, f"Rollouts unknown: {exc}."
    except GatewayRefused as exc:
        return {}, f"Rollouts unknown: the gateway refused: {exc}"


async def known_tasks(c: Console, routes: dict[str, Any]) -> tuple[list[str], str | None]:
    """Tasks with exchanges in the store or a route at the gateway; a notice if the store
    cannot be read."""
    try:
        stored = await c.query(c.catalog.tasks)
    except StoreError as exc:
        log.warning("tasks not listed", error=str(exc))
        return sorted(routes), f"The store cannot be read: {exc}"
    return sorted(set(stored) | set(routes)), None


async def overview(request: Request) -> Response:
    c = console(request)
    routes, gateway_notice = await rollouts(c)
    tasks, store_notice = await known_tasks(c, routes)
    today = datetime.now(UTC).date()
    views = await asyncio.gather(*(_task(c, t, routes.get(t), today) for t in tasks))
    context = {"tasks": views, "gateway_notice": gateway_notice, "store_notice": store_notice}
    return render(request, "overview.html", context)


async def _task(c: Console, task: str, rollout: dict[str, Any] | None, today: date) -> TaskView:
    adapter = rollout.get("adapter") if rollout else None
    try:
        loop = await documents.loop(c.store, task, adapter, c.settings.console.live_max_age_s)
        view = TaskView(task, rollout, loop.status, loop.last_run, loop.drift, loop.views)
    except StoreError as exc:
        log.warning("task's loop not read", task=task, error=str(exc))
        view = TaskView(task, rollout, Status(task))
    since = today - timedelta(days=DAYS - 1)
    try:
        days = await c.query(c.catalog.days, task, since, today)
    except StoreError as exc:
        log.warning("task's days not read", task=task, error=str(exc))
        days = []
    view.charts = day_charts(days, since, today)
    return view


def day_charts(days: list[Any], since: date, until: date) -> list[Markup]:
    """The overview's charts of a task from its ``Day`` rows (days without a row: none)."""
    by_date = {_as_date(d.date): d for d in days}
    dates = [since + timedelta(days=i) for i in range((until - since).days + 1)]
    rows = [(d.strftime("%m-%d"), by_date.get(d)) for d in dates]
    requests = [(label, float(r.requests) if r else 0.0) for label, r in rows]
    share = [(label, r.student / r.requests if r and r.requests else None) for label, r in rows]
    agreement = [(label, r.agreement if r and r.shadow_scored else None) for label, r in rows]
    out = [
        charts.bars("requests per day", requests),
        charts.line("student share", share),
        charts.line("shadow agreement", agreement),
    ]
    if any(r and r.judged for _, r in rows):
        judged = [(day, r.judged_pass if r and r.judged else None) for day, r in rows]
        out.append(charts.line("judged pass rate", judged))
    return out


def _as_date(value: Any) -> date:
    if isinstance(value, datetime):
        return value.date()
    if isinstance(value, date):
        return value
    return date.fromisoformat(str(value)[:10])
