"""What ``protege demo --autopilot`` shows while nobody is at the keyboard.

Each ``Watch.look`` reads where the closed loop stands — the task's rollout from the gateway's
admin API, the autopilot's status and the task's timeline from the store — and shows what
changed since the last look: every new timeline event, the autopilot's decision when it
changes (and now and then while it waits), every change of the route, the live input drift
the gateway measures against the serving adapter (now and then), and the progress lines
of a training run under way (from its ``train.log``), so the long minutes of training are
seen moving.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Final

from core.events import Event, timeline
from core.live import live_drift, read_views
from core.store import open_store
from protege.demo_progress import trainer_line
from protege.demo_summary import span
from protege.demo_traffic import Operator
from trainer.autopilot.status import Status, read_status

DECISION_EVERY_S: Final = 20.0  # a decision or drift is shown again after this long
VIEW_MAX_AGE_S: Final = 30.0  # a gateway's live view older than this is not read


@dataclass(frozen=True)
class Look:
    """The loop as one look saw it."""

    route: dict[str, Any]  # GET /admin/routes/<task>
    status: Status  # the autopilot's status of the task
    events: list[Event]  # the task's timeline, oldest first
    drift: float | None  # the live input drift against the serving adapter (None: unmeasured)

    def since(self, index: int) -> list[Event]:
        return self.events[index:]


async def _read(store_uri: str, task: str, adapter: str | None) -> Look:
    async with open_store(store_uri) as store:
        status, events = await read_status(store, task), await timeline(store, task)
        drift = live_drift(await read_views(store, task, VIEW_MAX_AGE_S), adapter)
    return Look({}, status, events, drift)


def route_line(route: dict[str, Any], why: bool = True) -> str:
    """``canary 50 % demo-tickets/v1, challenger demo-tickets/v2 (promotion: held for 30s)``;
    without ``why``, no parenthesis."""
    mode = route["mode"] + (f" {route['percent']:g} %" if route["mode"] == "canary" else "")
    text = f"{mode} {route.get('adapter') or ''}".rstrip()
    if route.get("challenger"):
        text += f", challenger {route['challenger']}"
    if not why:
        return text
    reason = route.get("reason")
    return text + f" ({route.get('source')}{f': {reason}' if reason else ''})"


class Watch:
    """Looks at the loop and shows what changed (``detail`` prints one indented line)."""

    def __init__(
        self,
        store_uri: str,
        operator: Operator,
        run_dir: Path,
        detail: Callable[[str], None],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._store, self._op, self._run_dir = store_uri, operator, run_dir
        self._detail, self._clock = detail, clock
        self._events_shown = 0
        self._route: tuple[Any, ...] | None = None
        self._decision: tuple[str | None, str | None] = (None, None)
        self._decision_at = self._drift_at = -DECISION_EVERY_S
        self._log: tuple[Path, int] | None = None  # a run's train.log and how far it was read
        self._run_started = 0.0
        self.last: Look | None = None

    def look(self) -> Look:
        route = self._op.rollout()
        look = replace(asyncio.run(_read(self._store, self._op.task, route.get("adapter"))),
                       route=route)  # fmt: skip
        self._show_events(look.events)
        self._show_route(route)
        self._show_drift(look.drift, route.get("adapter"))
        self._show_decision(look.status)
        self._show_training(look.status)
        self.last = look
        return look

    def _show_events(self, events: list[Event]) -> None:
        for event in events[self._events_shown :]:
            self._detail(f"timeline  {event.kind}: {event.summary}")
        self._events_shown = max(self._events_shown, len(events))

    def _show_route(self, route: dict[str, Any]) -> None:
        key = tuple(route.get(k) for k in ("mode", "percent", "adapter", "challenger"))
        if key != self._route:
            self._route = key
            self._detail(f"gateway   route: {route_line(route)}")

    def _show_drift(self, drift: float | None, adapter: str | None) -> None:
        now = self._clock()
        if drift is not None and now - self._drift_at >= DECISION_EVERY_S:
            self._drift_at = now
            self._detail(f"gateway   live input drift {drift:.3f} against {adapter}")

    def _show_decision(self, status: Status) -> None:
        now, decision = self._clock(), (status.why, status.detail)
        if status.current is not None:  # the retrain_decided event says it
            self._decision, self._decision_at = decision, now
        if status.why is None or status.current is not None:
            return
        if decision[0] != self._decision[0] or (
            decision != self._decision and now - self._decision_at >= DECISION_EVERY_S
        ):
            self._decision, self._decision_at = decision, now
            self._detail(f"autopilot decided: {status.why} ({status.detail})")

    def _show_training(self, status: Status) -> None:
        """The progress lines of the run under way, read on from where the last look left."""
        run = status.current
        if run is None:
            self._log = None
            return
        path = self._run_dir / status.task / run.run_id / "train.log"
        if self._log is None or self._log[0] != path:
            self._log, self._run_started = (path, 0), self._clock()
            self._detail(f"autopilot training: run {run.run_id}, log {path}")
        try:
            with path.open("rb") as f:
                f.seek(self._log[1])
                data = f.read()
        except OSError:
            return
        complete = data[: data.rfind(b"\n") + 1]  # a line still being written waits
        self._log = (path, self._log[1] + len(complete))
        for raw in complete.splitlines():
            shown = trainer_line(raw.decode(errors="replace").rstrip())
            if shown is not None:
                self._detail(f"{shown}  [{span(self._clock() - self._run_started)}]")

    def last_decision(self) -> str:
        """The autopilot's last decision, for an error message."""
        status = self.last.status if self.last else None
        if status is None or status.why is None:
            return "none yet"
        if status.current is not None:
            return f"training run {status.current.run_id} ({status.current.trigger})"
        return f"{status.why} ({status.detail})"
