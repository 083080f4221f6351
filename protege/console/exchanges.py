"""``/exchanges``: the captured exchanges, filtered and paged; ``/exchanges/{id}``: one of
them made readable (messages, answer, facts, its feedback and its shadow records).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, Final

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response

from protege.console import exchange_view
from protege.console.markup import pretty
from protege.console.queries import ExchangeFilter
from protege.console.resources import console
from protege.console.web import render, with_query

FILTERS: Final = ("task", "since", "until", "backend", "route", "status", "complete", "feedback",
                  "q")  # fmt: skip
FEEDBACK_CHOICES: Final = (
    ("", "any"), ("with", "with feedback"), ("negative", "negative feedback"),
    ("correction", "with a correction"),
)  # fmt: skip
_FEEDBACK_KINDS: Final = frozenset(v for v, _ in FEEDBACK_CHOICES if v)
# Keys of a record's request shown as its messages; the rest are its parameters.
_INPUT_KEYS: Final = frozenset({"messages", "prompt", "input"})


def form_values(request: Request, names: tuple[str, ...] = FILTERS) -> dict[str, str]:
    """The filter fields as given (for the form and the pager links)."""
    return {n: request.query_params.get(n, "").strip()[:500] for n in names}


def moment(value: str) -> datetime | None:
    """A ``datetime-local`` value or a date, read as UTC; None when empty or unreadable."""
    if not value:
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def exchange_filter(values: dict[str, str]) -> ExchangeFilter:
    """The data layer's filter of the form's ``values`` (unknown choices: no filter)."""
    status = values["status"]
    return ExchangeFilter(
        task=values["task"] or None,
        since=moment(values["since"]),
        until=moment(values["until"]),
        backend=values["backend"] or None,
        route=values["route"] or None,
        status=int(status) if status.isdigit() else None,
        complete={"true": True, "false": False}.get(values["complete"]),
        feedback=values["feedback"] if values["feedback"] in _FEEDBACK_KINDS else None,
        text=values["q"] or None,
    )


def page_number(request: Request) -> int:
    raw = request.query_params.get("page", "1")
    return max(1, min(int(raw), 10_000)) if raw.isdigit() else 1


def pager(path: str, values: dict[str, str], page: int, has_next: bool) -> dict[str, Any]:
    return {
        "page": page,
        "prev_url": with_query(path, {**values, "page": page - 1}) if page > 1 else None,
        "next_url": with_query(path, {**values, "page": page + 1}) if has_next else None,
    }


async def exchanges(request: Request) -> Response:
    c = console(request)
    values = form_values(request)
    page = page_number(request)
    tasks = await c.query(c.catalog.tasks)
    found = await c.query(
        c.catalog.exchanges, exchange_filter(values), page=page, size=c.settings.console.page_size
    )
    context = {
        "f": values,
        "tasks": tasks,
        "rows": found.rows,
        "feedback_choices": FEEDBACK_CHOICES,
        **pager("/exchanges", values, page, found.has_next),
    }
    return render(request, "exchanges.html", context)


async def exchange(request: Request) -> Response:
    c = console(request)
    request_id = request.path_params["request_id"]
    record = await c.query(c.catalog.exchange, request_id) if len(request_id) <= 100 else None
    if record is None:
        raise HTTPException(404, f"no exchange {request_id!r} in the store")
    detail = exchange_view.detail(record)
    req = record.get("request")
    params = {k: v for k, v in req.items() if k not in _INPUT_KEYS} if isinstance(req, dict) else {}
    extra = {k: v for k, v in detail.items() if k not in ("why", "checks", "agreement")}
    context = {
        "r": record,
        "messages": exchange_view.messages(req, record.get("endpoint")),
        "answer": exchange_view.answers(record.get("response")),
        "params": pretty(params) if params else None,
        "tokens": exchange_view.tokens(record),
        "detail": detail,
        "extra_detail": pretty(extra) if extra else None,
        "feedback": record.get("feedback") or [],
        "shadows": [str(s) for s in record.get("shadows") or []],
        "is_shadow": bool(record.get("shadow_of")) and record.get("backend") == "student",
    }
    return render(request, "exchange.html", context)
