"""Pages: the template environment (autoescape on for every template), its filters, and
``render``, which every handler answers with.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, date, datetime
from typing import Any
from urllib.parse import urlencode

from jinja2 import Environment, PackageLoader
from starlette.requests import Request
from starlette.responses import HTMLResponse

from protege.console.markup import pretty

NAV = (
    ("/", "Overview"),
    ("/exchanges", "Exchanges"),
    ("/disagreements", "Disagreements"),
    ("/datasets", "Datasets"),
    ("/runs", "Runs"),
    ("/rollouts", "Rollouts"),
)


def when(value: Any) -> str:
    """A moment (Unix seconds, ISO text or a datetime) as ``YYYY-MM-DD HH:MM:SS`` UTC."""
    if value is None or value == "":
        return "—"
    if isinstance(value, int | float):
        value = datetime.fromtimestamp(value, UTC)
    elif isinstance(value, str):
        text = value
        try:
            value = datetime.fromisoformat(text)
        except ValueError:
            return text
    if isinstance(value, datetime):
        moment: datetime = value.astimezone(UTC) if value.tzinfo is not None else value
        return moment.strftime("%Y-%m-%d %H:%M:%S")
    if isinstance(value, date):
        return value.isoformat()
    return str(value)


def num(value: Any, digits: int = 3) -> str:
    if value is None:
        return "—"
    if isinstance(value, bool) or not isinstance(value, int | float):
        return str(value)
    return f"{value:,}" if isinstance(value, int) else f"{value:.{digits}f}"


def environment() -> Environment:
    env = Environment(
        loader=PackageLoader("protege.console", "templates"),
        autoescape=True,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters.update(when=when, num=num, pretty=pretty)
    env.globals.update(nav=NAV)
    return env


def render(
    request: Request, template: str, context: Mapping[str, Any], status: int = 200
) -> HTMLResponse:
    """``template`` filled with ``context`` plus what every page shows (nav, flash, CSRF)."""
    env: Environment = request.app.state.console.templates
    session = request.state.session
    page = env.get_template(template).render(
        {
            **context,
            "path": request.url.path,
            "csrf": session.csrf,
            "flash": session.pop_flash(),
            "signed_in": session.authenticated,
        }
    )
    return HTMLResponse(page, status_code=status)


def with_query(path: str, params: Mapping[str, Any]) -> str:
    """``path`` with ``params`` (empty ones left out) as its query."""
    kept = {k: v for k, v in params.items() if v not in (None, "")}
    return f"{path}?{urlencode(kept)}" if kept else path

