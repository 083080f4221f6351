"""The console's web app: routes, the lifespan that opens what the pages read, the login, and
the one place errors become pages.

    GET  /                                   overview
    GET  /exchanges, /exchanges/{id}         exchanges, one exchange
    GET  /disagreements, /disagreements/{id} scored pairs, one pair
    POST /disagreements/{id}/correction      record a correction as feedback
    GET  /datasets, /datasets/{task}/{snap}  snapshot cards
    GET  /runs, /runs/{task}/{run}           runs and adapters, one run's report
    GET  /runs/{task}/{run}/{file}.png       a report's plot
    GET  /rollouts, /rollouts/{task}         rollouts, one task's timeline and controls
    POST /rollouts/{task}                    change it through the gateway's admin API
    GET  /login, POST /login, POST /logout   the console token (when one is set)
    GET  /static/console.css

Every page is server-rendered (Jinja2, autoescape on), without script; ``security`` adds the
headers, the session and the guards.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from importlib.resources import files
from typing import Any

import httpx
import structlog
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from core.errors import StoreError
from core.store import open_store
from protege.console import disagreements, exchanges, overview, rollouts, runs
from protege.console.gateway_api import TIMEOUT, GatewayAdmin
from protege.console.queries import Catalog
from protege.console.resources import Console
from protege.console.security import (
    HEADERS,
    Guard,
    Refused,
    Session,
    checked_form,
    login_ok,
    safe_next,
    signing_key,
)
from protege.console.settings import ConsoleSettings
from protege.console.web import environment, render

log = structlog.get_logger("console")


async def login_form(request: Request) -> Response:
    if request.app.state.console.settings.token is None:
        return RedirectResponse("/", 303)
    context = {"next": safe_next(request.query_params.get("next")), "error": None}
    return render(request, "login.html", context)


async def login(request: Request) -> Response:
    token = request.app.state.console.settings.token
    form = await checked_form(request)
    target = safe_next(form.get("next"))
    if token is None:
        return RedirectResponse(target, 303)
    if not login_ok(form.get("token", ""), token):
        await asyncio.sleep(0.25)  # a guess costs time
        context = {"next": target, "error": "That is not the console token."}
        return render(request, "login.html", context, status=401)
    request.state.session = Session(authenticated=True)  # a new session, a new CSRF token
    return RedirectResponse(target, 303)


async def logout(request: Request) -> Response:
    await checked_form(request)
    request.state.session = Session()
    return RedirectResponse("/login" if request.app.state.console.settings.token else "/", 303)


def routes() -> list[Any]:
    static = StaticFiles(directory=str(files("protege.console") / "static"))
    return [
        Route("/", overview.overview),
        Route("/login", login_form, methods=["GET"]),
        Route("/login", login, methods=["POST"]),
        Route("/logout", logout, methods=["POST"]),
        Route("/exchanges", exchanges.exchanges),
        Route("/exchanges/{request_id}", exchanges.exchange),
        Route("/disagreements", disagreements.disagreements),
        Route("/disagreements/{pair_id}", disagreements.pair),
        Route("/disagreements/{pair_id}/correction", disagreements.correct, methods=["POST"]),
        Route("/datasets", runs.datasets),
        Route("/datasets/{task}/{snapshot}", runs.snapshot),
        Route("/runs", runs.runs),
        Route("/runs/{task}/{run}", runs.run),
        Route("/runs/{task}/{run}/{file}", runs.plot),
        Route("/rollouts", rollouts.overview),
        Route("/rollouts/{task}", rollouts.task_page, methods=["GET"]),
        Route("/rollouts/{task}", rollouts.change, methods=["POST"]),
        Mount("/static", app=static, name="static"),
    ]


def _error(request: Request, status: int, title: str, message: str) -> Response:
    if not hasattr(request.state, "session"):
        request.state.session = Session()
    response = render(request, "error.html", {"title": title, "message": message}, status)
    response.headers.update(HEADERS)  # (a 500 is answered outside the guard)
    return response


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    titles = {404: "Not found", 405: "Not allowed"}
    return _error(request, exc.status_code, titles.get(exc.status_code, "Error"), str(exc.detail))


async def _refused(request: Request, exc: Exception) -> Response:
    return _error(request, 403, "Refused", str(exc))


async def _store_error(request: Request, exc: Exception) -> Response:
    log.warning("store read failed", path=request.url.path, error=str(exc))
    return _error(request, 503, "The store cannot be read", str(exc))


async def _unexpected(request: Request, exc: Exception) -> Response:
    log.error("page failed", path=request.url.path, error=repr(exc), exc_info=exc)
    return _error(request, 500, "Error", "This page failed; the console's log says why.")


def create_app(settings: ConsoleSettings, catalog: Any = None) -> Starlette:
    """The console over ``settings``' store and gateway (``catalog``: the data layer to use
    instead of a ``Catalog`` of the store, for tests)."""

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        store = open_store(settings.store)
        limits = httpx.Limits(max_connections=8)
        async with store, httpx.AsyncClient(
            base_url=settings.console.gateway_url, timeout=TIMEOUT, limits=limits
        ) as client:
            data = catalog or await asyncio.to_thread(Catalog, settings.store)
            admin = GatewayAdmin(client, settings.admin_token)
            app.state.console = Console(settings, store, data, admin, environment())
            try:
                yield
            finally:
                close = getattr(data, "close", None)
                if catalog is None and callable(close):
                    await asyncio.to_thread(close)

    key = signing_key(settings.token)
    return Starlette(
        routes=routes(),
        middleware=[Middleware(Guard, token=settings.token, key=key)],
        exception_handlers={
            HTTPException: _http_error,
            Refused: _refused,
            StoreError: _store_error,
            Exception: _unexpected,
        },
        lifespan=lifespan,
    )
