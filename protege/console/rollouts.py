"""``/rollouts``: every task's rollout as the gateway's admin API shows it; ``/rollouts/{task}``:
the task's timeline (``core.events``, newest first) and the controls, which ``PUT`` to the
gateway's ``/admin/routes/{task}`` with the admin token (step back: mode shadow). The gateway
validates; its refusal is shown as it says it. Without an admin token the controls are not
shown and a POST is refused.
"""

from __future__ import annotations

import asyncio
from typing import Any, Final

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from core.errors import StoreError
from protege.console import documents
from protege.console.gateway_api import NO_TOKEN, GatewayRefused, GatewayUnavailable
from protege.console.overview import known_tasks, rollouts
from protege.console.resources import Console, console
from protege.console.security import checked_form
from protege.console.web import render

MODES: Final = ("teacher", "shadow", "canary", "hybrid", "student")


async def overview(request: Request) -> Response:
    c = console(request)
    routes, notice = await rollouts(c)
    tasks, _ = await known_tasks(c, routes)
    context = {
        "routes": [routes[t] for t in sorted(routes)],
        "other_tasks": [t for t in tasks if t not in routes],
        "gateway_notice": notice,
    }
    return render(request, "rollouts.html", context)


def _task(request: Request) -> str:
    task: str = request.path_params["task"]
    if not documents.is_name(task):
        raise HTTPException(404, f"{task!r} is not a task name")
    return task


async def task_page(request: Request) -> Response:
    return await _page(request, _task(request))


async def _page(
    request: Request, task: str, error: str | None = None, status: int = 200
) -> Response:
    c = console(request)
    (route, notice), timeline, reports, adapters = await asyncio.gather(
        _route(c, task),
        _quiet(documents.events(c.store, task), []),
        _quiet(documents.reported_runs(c.store, task), set()),
        _quiet(documents.manifests(c.store, task), []),
    )
    context = {
        "task": task,
        "route": route,
        "gateway_notice": notice,
        "error": error,
        "events": [_event(e, reports) for e in timeline],
        "controls": c.admin.enabled,
        "no_controls": NO_TOKEN[:1].upper() + NO_TOKEN[1:] + ".",
        "modes": MODES,
        "adapters": [f"{task}/{m.get('version')}" for m in adapters if m.get("version")],
    }
    return render(request, "rollout.html", context, status)


async def _route(c: Console, task: str) -> tuple[dict[str, Any] | None, str | None]:
    try:
        return await c.admin.route(task), None
    except GatewayUnavailable as exc:
        return None, f"Rollout unknown: {exc}."
    except GatewayRefused as exc:
        return None, f"Rollout unknown: the gateway refused: {exc}"


async def _quiet(reading: Any, empty: Any) -> Any:
    """A store read for the page; ``empty`` (and a log line) when the store fails."""
    try:
        return await reading
    except StoreError as exc:
        documents.log.warning("store read failed", error=str(exc))
        return empty


def _event(event: Any, reports: set[str]) -> Any:
    """The event, its run id kept only when that run has a report to link to."""
    from dataclasses import replace

    return event if event.run_id in reports else replace(event, run_id=None)


async def change(request: Request) -> Response:
    """Apply the form's mode, percent and adapter through the gateway's admin API."""
    c = console(request)
    task = _task(request)
    form = await checked_form(request)
    if not c.admin.enabled:
        return await _page(request, task, NO_TOKEN[:1].upper() + NO_TOKEN[1:] + ".", 403)
    try:
        fields = rollout_fields(form)
        await c.admin.change(task, fields)
    except ValueError as exc:
        return await _page(request, task, str(exc), 400)
    except GatewayRefused as exc:
        return await _page(request, task, f"The gateway refused: {exc}", 400)
    except GatewayUnavailable as exc:
        return await _page(request, task, f"Not changed: {exc}.", 502)
    described = ", ".join(f"{k} {v}" for k, v in fields.items())
    request.state.session.flash_next(f"rollout of {task} changed: {described}")
    return RedirectResponse(f"/rollouts/{task}", 303)


def rollout_fields(form: dict[str, str]) -> dict[str, Any]:
    """The fields of an admin API change from the form: the mode, and the percent and adapter
    when given (left out: the gateway keeps its own)."""
    mode = form.get("mode", "")
    if mode not in MODES:
        raise ValueError(f"mode must be one of {', '.join(MODES)}")
    fields: dict[str, Any] = {"mode": mode}
    percent = form.get("percent", "").strip()
    if percent:
        try:
            fields["percent"] = float(percent)
        except ValueError:
            raise ValueError(f"percent must be a number, got {percent!r}") from None
    adapter = form.get("adapter", "").strip()
    if adapter:
        fields["adapter"] = adapter
    return fields
