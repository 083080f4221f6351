"""``/disagreements``: students' shadow and challenge answers scored against the teacher's,
worst first; ``/disagreements/{id}``: one pair side by side with a word diff, and the form
that records the right answer as feedback (``corrections.record_correction``).
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from core.errors import StoreError
from protege.console.corrections import record_correction
from protege.console.exchanges import form_values, moment, page_number, pager
from protege.console.markup import word_diff
from protege.console.resources import Console, console
from protege.console.security import checked_form
from protege.console.web import render

_FILTERS = ("task", "since", "until", "sort")
# The range shown when the form names none (the filter form shows it, to widen).
DEFAULT_RANGE = timedelta(days=1)
MAX_CORRECTION_CHARS = 100_000


async def disagreements(request: Request) -> Response:
    c = console(request)
    values = form_values(request, _FILTERS)
    values["sort"] = values["sort"] if values["sort"] in ("agreement", "newest") else "agreement"
    if not values["since"] and not values["until"]:
        # Worst first means reading every pair of the range: the last day unless widened.
        since = datetime.now(UTC) - DEFAULT_RANGE
        values["since"] = since.strftime("%Y-%m-%dT%H:%M")
    page = page_number(request)
    tasks = await c.query(c.catalog.tasks)
    found = await c.query(
        c.catalog.disagreements,
        values["task"] or None,
        moment(values["since"]),
        moment(values["until"]),
        sort=values["sort"],
        page=page,
        size=c.settings.console.page_size,
    )
    context = {
        "f": values,
        "tasks": tasks,
        "rows": found.rows,
        **pager("/disagreements", values, page, found.has_next),
    }
    return render(request, "disagreements.html", context)


async def _pair(c: Console, pair_id: str) -> Any:
    found = await c.query(c.catalog.pair, pair_id) if len(pair_id) <= 100 else None
    if found is None:
        raise HTTPException(404, f"no scored pair {pair_id!r} in the store")
    return found


async def pair_context(pair: Any) -> dict[str, Any]:
    teacher, student = str(pair.teacher or ""), str(pair.student or "")
    diff = await asyncio.to_thread(word_diff, teacher, student)  # up to quadratic: off the loop
    return {"p": pair, "diff": diff, "json_answer": is_json(teacher)}


async def pair(request: Request) -> Response:
    found = await _pair(console(request), request.path_params["pair_id"])
    return render(request, "pair.html", await pair_context(found))


async def correct(request: Request) -> Response:
    """Record the form's correction as feedback on the pair's client exchange."""
    c = console(request)
    form = await checked_form(request)
    found = await _pair(c, request.path_params["pair_id"])
    correction, comment = form.get("correction", ""), form.get("comment", "").strip()
    error = None
    if len(correction) > MAX_CORRECTION_CHARS:
        error = f"The correction is longer than {MAX_CORRECTION_CHARS} characters."
    else:
        try:
            await c.query(
                record_correction, c.settings.store, found.task, found.client_request_id,
                correction, comment or None, json_answer=is_json(str(found.teacher or "")),
            )  # fmt: skip
        except (ValueError, StoreError) as exc:  # refused: said on the page, kept in the form
            error = f"The correction was not recorded: {exc}."
    if error is not None:
        context = {**await pair_context(found), "error": error, "correction": correction,
                   "comment": comment}  # fmt: skip
        return render(request, "pair.html", context, status=400)
    request.state.session.flash_next("correction recorded")
    return RedirectResponse(request.url.path.removesuffix("/correction"), 303)


def is_json(text: str) -> bool:
    """Whether ``text`` is a JSON object or array (the task answers in JSON)."""
    stripped = text.strip()
    if stripped[:1] not in ("{", "["):
        return False
    try:
        orjson.loads(stripped)
    except orjson.JSONDecodeError:
        return False
    return True
