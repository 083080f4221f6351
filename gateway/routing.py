"""Which backend answers a request: pure decisions over the route's policy.

Only two modes exist so far (``teacher`` and ``student``); shadow, canary and hybrid rollouts
are further branches of ``choose_backend``.
"""

from __future__ import annotations

from typing import Literal

from gateway.config import RouteConfig

BackendName = Literal["teacher", "student"]


def choose_backend(route: RouteConfig | None, student_configured: bool) -> BackendName:
    """The backend that answers a request for ``route`` (None: no route names its model).

    The student answers only where the route says so, names an adapter, and a student is
    configured; everything else goes to the teacher.
    """
    if route is None or route.mode != "student" or route.adapter is None:
        return "teacher"
    return "student" if student_configured else "teacher"
