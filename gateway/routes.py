"""Which task a request belongs to, and which teacher model serves it.

Task: the route whose alias is the requested model, else the ``X-Protege-Task`` header, else the
requested model name itself. Pure: a table of routes in, a resolution out.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

from gateway.config import RouteConfig

_TASK_CHARS = re.compile(r"[^A-Za-z0-9_.-]")


@dataclass(frozen=True, slots=True)
class Resolved:
    task: str
    # The model to ask the teacher for; None keeps the client's.
    teacher_model: str | None
    # The route of the alias the client asked for; None when no route names it.
    route: RouteConfig | None = None


def task_name(raw: str) -> str:
    """A model or header value made safe as a task name (a path and partition component)."""
    name = _TASK_CHARS.sub("_", raw.strip())[:128].lstrip("._-")
    return name or "default"


class RouteTable:
    def __init__(self, routes: Iterable[RouteConfig]) -> None:
        self._by_alias = {r.alias: r for r in routes}

    @property
    def tasks(self) -> list[str]:
        return sorted({r.task for r in self._by_alias.values()})

    @property
    def aliases(self) -> list[str]:
        return list(self._by_alias)

    def resolve(self, model: str, task_header: str | None) -> Resolved:
        route = self._by_alias.get(model)
        if route is not None:
            return Resolved(route.task, route.teacher_model, route)
        if task_header:
            return Resolved(task_name(task_header), None)
        return Resolved(task_name(model), None)
