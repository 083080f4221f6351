"""``/datasets`` and ``/runs``: what the trainer made. Snapshot cards; run records and
published adapters, newest first per task; one run's report (its markdown rendered, its plots,
its evaluation and its worst mistakes, each linked to its exchange).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response

from core.runs import RunRecord
from protege.console import documents
from protege.console.markup import render_markdown
from protege.console.overview import known_tasks, rollouts
from protege.console.resources import Console, console
from protege.console.web import render


async def _tasks(c: Console) -> tuple[list[str], str | None]:
    routes, _ = await rollouts(c)
    return await known_tasks(c, routes)


def _names(request: Request, *params: str) -> list[str]:
    values = [request.path_params[p] for p in params]
    if not all(documents.is_name(v) for v in values):
        raise HTTPException(404, "no such page")
    return values


# --- datasets ---


async def datasets(request: Request) -> Response:
    c = console(request)
    tasks, error = await _tasks(c)
    found = await asyncio.gather(*(documents.snapshots(c.store, t) for t in tasks))
    cards = [card for per_task in found for card in per_task]
    return render(request, "datasets.html", {"snapshots": cards, "error": error})


async def snapshot(request: Request) -> Response:
    task, name = _names(request, "task", "snapshot")
    card = await documents.card(console(request).store, task, name)
    if card is None:
        raise HTTPException(404, f"no snapshot {name!r} of {task!r}")
    return render(request, "snapshot.html", {"card": card})


# --- runs ---


@dataclass(frozen=True)
class Row:
    task: str
    kind: str  # run | adapter
    name: str
    at: Any
    outcome: str
    adapter: str | None
    detail: str | None
    report: str | None  # the run whose report to link


def run_rows(
    task: str, records: list[RunRecord], manifests: list[dict[str, Any]], reports: set[str]
) -> list[Row]:
    """A task's runs and published adapters, newest first, each linked to its report."""
    rows = [
        Row(task, "run", r.run_id, r.finished_at, r.outcome, r.published, r.reason,
            r.run_id if r.run_id in reports else None)
        for r in records
    ]  # fmt: skip
    for m in manifests:
        version = str(m.get("version", "?"))
        run = next((str(m[k]) for k in ("run_id", "run") if m.get(k) in reports), None)
        run = run or (version if version in reports else None)
        snapshot = m.get("snapshot") or m.get("dataset")
        detail = f"snapshot {snapshot}" if snapshot else None
        rows.append(Row(task, "adapter", version, m.get("published"), "published",
                        f"{task}/{version}", detail, run))  # fmt: skip
    rows.sort(key=lambda r: _sortable(r.at), reverse=True)
    return rows


def _sortable(at: Any) -> float:
    from datetime import datetime

    if isinstance(at, int | float):
        return float(at)
    if isinstance(at, str):
        try:
            return datetime.fromisoformat(at).timestamp()
        except ValueError:
            return 0.0
    return 0.0


async def runs(request: Request) -> Response:
    c = console(request)
    tasks, error = await _tasks(c)

    async def of(task: str) -> tuple[list[Row], set[str]]:
        records, manifests, reports = await asyncio.gather(
            documents.run_records(c.store, task),
            documents.manifests(c.store, task),
            documents.reported_runs(c.store, task),
        )
        return run_rows(task, records, manifests, reports), reports

    found = await asyncio.gather(*(of(t) for t in tasks))
    rows = [row for task_rows, _ in found for row in task_rows]
    linked = {(r.task, r.report) for r in rows if r.report}
    orphans = sorted(
        (t, run) for t, (_, reports) in zip(tasks, found, strict=True) for run in reports
        if (t, run) not in linked
    )  # fmt: skip
    return render(request, "runs.html", {"rows": rows, "orphan_reports": orphans, "error": error})


async def run(request: Request) -> Response:
    task, name = _names(request, "task", "run")
    c = console(request)
    found = await documents.report(c.store, task, name)
    if found is None:
        raise HTTPException(404, f"no report of run {name!r} of {task!r}")
    record = next((r for r in await documents.run_records(c.store, task) if r.run_id == name), None)
    context = {
        "task": task,
        "run": name,
        "record": record,
        "report_html": render_markdown(found.markdown, f"/runs/{task}/{name}/"),
        "plots": found.plots,
        "evaluation": evaluation_table(found.evaluation),
        "evaluation_raw": found.evaluation,
        "mistakes": mistake_rows(found.mistakes),
        "run_json": found.run,
    }
    return render(request, "run.html", context)


async def plot(request: Request) -> Response:
    task, name = _names(request, "task", "run")
    file = request.path_params["file"]
    if not documents.is_plot(file):
        raise HTTPException(404, "no such plot")
    data = await documents.plot(console(request).store, task, name, file)
    if data is None:
        raise HTTPException(404, "no such plot")
    return Response(data, media_type="image/png", headers={"Cache-Control": "no-store"})


def evaluation_table(doc: Any) -> dict[str, Any] | None:
    """``evaluation.json`` (the report's headline table) as rows; None if it is not one."""
    if not isinstance(doc, dict) or not isinstance(doc.get("sets"), dict):
        return None
    models = [m for m in doc.get("models", []) if isinstance(m, dict) and "name" in m]
    rows = []
    for name, entry in doc["sets"].items():
        entry = entry if isinstance(entry, dict) else {}
        scores = entry.get("scores") or {}
        rows.append({
            "name": name,
            "n": entry.get("n"),
            "scores": [scores.get(m["name"]) if isinstance(scores, dict) else None for m in models],
            "lead": entry.get("student_minus_best_baseline"),
        })  # fmt: skip
    return {"metric": doc.get("headline_metric"), "kind": doc.get("kind"), "models": models,
            "beats": doc.get("student_beats_baseline"), "rows": rows}  # fmt: skip


def mistake_rows(doc: Any) -> list[dict[str, Any]]:
    """``mistakes.json`` (per test set, the worst answers) as one list of rows."""
    if not isinstance(doc, dict):
        return []
    rows = []
    for name, items in doc.items():
        for item in items if isinstance(items, list) else []:
            if isinstance(item, dict):
                rows.append({**item, "set": name})
    return rows
