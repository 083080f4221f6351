"""A run's outcome as timeline events, and the look-up that recovers one after a crash."""

from __future__ import annotations

import asyncio
from typing import Any

import orjson

from core.errors import StoreNotFound
from core.keys import adapter_ids, adapters_prefix, manifest_key
from core.runs import RunRecord
from core.store import Store

Entry = tuple[str, str, dict[str, Any]]  # kind, summary, figures
# Newest published versions looked at for a run's adapter (runs publish one each).
_LOOK_BACK = 5


def outcome_events(record: RunRecord) -> list[Entry]:
    """What ``record`` tells the timeline: snapshot, training, evaluation, then the verdict."""
    figures = record.figures
    out: list[Entry] = []
    data = figures.get("data")
    if data:
        sizes = ", ".join(f"{n:,} {split}" for split, n in data.items() if split != "records_in")
        read = data.get("records_in")
        source = f" from {read:,} records" if isinstance(read, int) else ""
        out.append(("snapshot_built", f"snapshot {record.snapshot}: {sizes}{source}", data))
    training = figures.get("training")
    if training:
        out.append(("trained", _training(training), training))
    evaluation = figures.get("evaluation")
    if evaluation:
        out.append(("evaluated", _evaluation(evaluation), evaluation))
    if record.outcome == "published":
        out.append(("published", f"published {record.published}", {}))
    elif record.outcome == "rejected":
        out.append(("rejected", f"not published: {record.reason}", {}))
    else:
        out.append(("run_failed", f"run failed: {record.reason}", {}))
    return out


def _training(t: dict[str, Any]) -> str:
    parts = []
    if t.get("steps") is not None:
        parts.append(f"{t['steps']:,} steps")
    if t.get("final_loss") is not None:
        parts.append(f"final loss {t['final_loss']:.3f}")
    if t.get("tokens_per_s") is not None:
        parts.append(f"{t['tokens_per_s']:,.0f} tokens/s")
    if t.get("seconds") is not None:
        parts.append(f"{t['seconds']:,.0f} s")
    return "trained: " + (", ".join(parts) or "no figures")


def _evaluation(e: dict[str, Any]) -> str:
    """``test-indist: student 0.93, champion 0.90, base 0.41; …``"""
    student = e.get("student") or {}
    sets = []
    for split, score in student.items():
        row = [f"student {score:.3f}"]
        for other in ("champion", "base"):
            value = (e.get(other) or {}).get(split)
            if value is not None:
                row.append(f"{other} {value:.3f}")
        sets.append(f"{split}: " + ", ".join(row))
    return "; ".join(sets) or "no test set"


async def published_by(store: Store, task: str, run_id: str) -> str | None:
    """The adapter ``<task>/<version>`` a run published, found by its manifest's ``run_id``."""
    listed = await store.list_objects(adapters_prefix(task))
    newest = adapter_ids(o.key for o in listed)[-_LOOK_BACK:]

    async def run_of(adapter: str) -> str | None:
        try:
            value = orjson.loads(await store.get(manifest_key(adapter))).get("run_id")
        except (StoreNotFound, orjson.JSONDecodeError, AttributeError):
            return None
        return value if isinstance(value, str) else None

    owners = await asyncio.gather(*(run_of(a) for a in newest))
    return next((a for a, owner in zip(newest, owners, strict=True) if owner == run_id), None)
