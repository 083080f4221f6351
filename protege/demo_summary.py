"""What the demo shows at its end, computed from the records in the store and the trainer's
evaluation: pure functions from rows to a JSON-ready summary, and the summary as text.

- agreement with the teacher: the evaluation's headline (student vs the zero-shot base), the
  shadow records' scores, the student's live answers scored against the known answer, and
  with ``--judge`` what the pairwise judge said of the test sets and of the shadow pairs;
- per rollout stage, the requests the client saw answered and the share the student served;
- latency per backend (p50 and p95 of the records' ``latency_ms``);
- where the report, the plots and the store are, and the time each stage took.
"""

from __future__ import annotations

import statistics
import textwrap
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from typing import Any

import orjson

from gateway.agreement import score
from protege.demo_teacher import completion

Row = Mapping[str, Any]
BASELINE = "base (zero-shot)"  # the naive baseline's name in the trainer's evaluation


def answered(records: Iterable[Row]) -> list[Row]:
    """The client-facing exchanges that were answered (no shadow calls, no failed attempts)."""
    return [r for r in records if r["shadow_of"] is None and r["status"] == 200]


def traffic_by_stage(
    records: Sequence[Row], windows: Mapping[str, tuple[datetime, datetime]]
) -> dict[str, dict[str, Any]]:
    """Per stage: the answered requests received in its time window, and who answered."""
    client = answered(records)
    out: dict[str, dict[str, Any]] = {}
    for stage, (start, end) in windows.items():
        mine = [r for r in client if start <= r["ts"] <= end]
        student = sum(r["backend"] == "student" for r in mine)
        out[stage] = {
            "requests": len(mine),
            "student": student,
            "teacher": len(mine) - student,
            "student_share": student / len(mine) if mine else 0.0,
        }
    return out


def _percentile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def latency(records: Sequence[Row]) -> dict[str, dict[str, float]]:
    """p50 / p95 latency in milliseconds of the answered requests, per backend."""
    out: dict[str, dict[str, float]] = {}
    for backend in ("teacher", "student"):
        values = [r["latency_ms"] for r in answered(records) if r["backend"] == backend]
        values = [v for v in values if v is not None]
        if values:
            out[backend] = {
                "n": len(values),
                "p50_ms": round(statistics.median(values), 1),
                "p95_ms": round(_percentile(values, 0.95), 1),
            }
    return out


def shadow_agreement(records: Sequence[Row]) -> dict[str, Any]:
    """The shadow records' scores: mean overall (what guardrails judge) and exact agreement."""
    shadows = [r for r in records if r["shadow_of"] is not None]
    scores = [
        detail["agreement"]
        for r in shadows
        if (detail := orjson.loads(r["detail"] or "null")) and detail.get("agreement")
    ]
    return {
        "calls": len(shadows),
        "scored": len(scores),
        "overall": _mean(s["overall"] for s in scores),
        "exact": _mean(s["exact"] for s in scores),
    }


def live_agreement(records: Sequence[Row]) -> dict[str, Any]:
    """The student's answers to clients scored against the task's known (teacher's) answer."""
    scores = []
    for r in answered(records):
        if r["backend"] != "student":
            continue
        request, response = orjson.loads(r["request"]), orjson.loads(r["response"] or "{}")
        scores.append(score(completion(request), response))
    return {
        "answers": len(scores),
        "overall": _mean(s.overall for s in scores),
        "exact": _mean(s.exact for s in scores),
    }


def judged(records: Sequence[Row], manifest: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """What the judges said (``protege demo --judge``): the pairwise rate per test set from the
    trainer's evaluation, and the shadow pairs' verdicts; None when nothing was judged."""
    verdicts: dict[str, int] = {}
    for r in records:
        if r["shadow_of"] is not None and r.get("detail"):
            verdict = (orjson.loads(r["detail"]).get("judged") or {}).get("verdict")
            if verdict is not None:
                verdicts[verdict] = verdicts.get(verdict, 0) + 1
    rates = (manifest or {}).get("judged") or {}
    sets = {
        name: per.get("as-good-as-teacher", {}).get("student", {}).get("rate")
        for name, per in rates.get("rates", {}).items()
    }
    if not verdicts and not sets:
        return None
    scored = verdicts.get("pass", 0) + verdicts.get("fail", 0)
    return {
        "evaluation": sets,
        "shadow": verdicts,
        "shadow_rate": round(verdicts.get("pass", 0) / scored, 4) if scored else None,
    }


def evaluation(manifest: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """The headline of the trainer's evaluation (student and baselines per test set)."""
    if not manifest or "metrics" not in manifest:
        return None
    metrics = manifest["metrics"]
    return {
        "metric": metrics.get("headline_metric"),
        "sets": metrics.get("headline", {}),
        "beats_baseline": metrics.get("student_beats_baseline"),
    }


def _mean(values: Iterable[float]) -> float | None:
    items = list(values)
    return round(sum(items) / len(items), 4) if items else None


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.0%}"


def duration(seconds: float) -> str:
    """``0:07``, ``3:41``, ``1:02:03``."""
    minutes, secs = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02}:{secs:02}" if hours else f"{minutes}:{secs:02}"


def span(seconds: float) -> str:
    """``0.4 s``, ``12.5 s``, then ``3:41``."""
    return f"{seconds:.1f} s" if seconds < 60 else duration(seconds)


# The rollout mode each traffic stage ran under (--autopilot's phases included).
MODES = {"traffic": "teacher", "shadow": "shadow", "canary": "canary", "full": "student",
         "learn": "teacher", "shift": "canary", "challenge": "canary"}  # fmt: skip


def render(summary: Mapping[str, Any]) -> str:
    """The summary as the lines a person reads at the end of the demo."""
    lines = [f"Summary: task {summary['task']}, {duration(summary['total_s'])} in all"]
    stages = [
        f"{s['name']} {span(s['seconds'])}"
        if s["status"] == "ran"
        else f"{s['name']} ({s['status']})"
        for s in summary["stages"]
    ]
    lines += textwrap.wrap(" · ".join(stages), 96, initial_indent="  stages     ",
                           subsequent_indent=" " * 13)  # fmt: skip
    lines += _agreement_lines(summary)
    lines += _loop_lines(summary)
    lines.append("  traffic    stage (mode)         requests  by student  share")
    for stage, t in summary["traffic"].items():
        label, share = f"{stage} ({MODES.get(stage, '?')})", _pct(t["student_share"])
        lines.append(f"{'':13}{label:<19}  {t['requests']:>8}  {t['student']:>10}  {share:>5}")
    for backend, lat in summary["latency"].items():
        lines.append(
            f"  latency    {backend:<8} p50 {lat['p50_ms']:>7.1f} ms, p95 {lat['p95_ms']:>7.1f} ms"
            f" ({int(lat['n'])} answers)"
        )
    lines += [f"  note       {note}" for note in summary.get("notes", [])]
    lines += [f"  guardrail  stepped back: {step}" for step in summary.get("stepbacks", [])]
    if summary.get("report"):
        lines.append(f"  report     {summary['report']}")
        lines.append(f"  plots      {', '.join(summary['plots'])}")
    lines.append(f"  records    {summary['records']} exchanges of this run in {summary['store']}")
    if summary.get("adapter"):
        lines.append(f"  adapter    {summary['adapter']}")
    lines.append(f"  summary    {summary['summary_file']}")
    return "\n".join(lines)


def _loop_lines(summary: Mapping[str, Any]) -> list[str]:
    """``--autopilot``: how the loop ended, and its timeline."""
    if "timeline" not in summary:
        return []
    from core.events import Event, render

    lines = [f"  loop       {summary['outcome_text']}"]
    canary = summary.get("canary") or {}
    if canary.get("source"):
        v1 = (summary.get("adapters") or {}).get("v1")
        lines.append(f"{'':13}{v1} reached canary {canary['percent']:g} % by {canary['source']}"
                     f" ({canary.get('reason') or 'no reason given'})")  # fmt: skip
    lines.append("  timeline")
    events = [Event(**e) for e in summary["timeline"]]
    lines += [f"{'':13}{line}" for line in render(events)]
    return lines


def _agreement_lines(summary: Mapping[str, Any]) -> list[str]:
    lines = []
    ev = summary.get("evaluation")
    if ev:
        nan = float("nan")
        sets = ", ".join(
            f"{name} {by.get('student', nan):.2f} (zero-shot base {by.get(BASELINE, nan):.2f})"
            for name, by in ev["sets"].items()
        )
        lines.append(f"  agreement  evaluation ({ev['metric']}): {sets}")
    shadow = summary.get("shadow")
    if shadow and shadow["scored"]:
        lines.append(
            f"             shadow: {_pct(shadow['overall'])} overall, {_pct(shadow['exact'])} exact"
            f" over {shadow['scored']} scored answers"
        )
    judged_by = summary.get("judged")
    if judged_by:
        sets = ", ".join(f"{n} {_pct(r)}" for n, r in judged_by["evaluation"].items())
        shadow = ", ".join(f"{v} {n}" for v, n in sorted(judged_by["shadow"].items()))
        lines.append(
            f"             judged as good as the teacher: evaluation {sets or 'n/a'}; shadow "
            f"{_pct(judged_by['shadow_rate'])} ({shadow or 'none judged'})"
        )
    live = summary.get("live")
    if live and live["answers"]:
        lines.append(
            f"             live: the student's {live['answers']} answers to clients match the"
            f" teacher's: {_pct(live['overall'])} overall, {_pct(live['exact'])} exact"
        )
    return lines
