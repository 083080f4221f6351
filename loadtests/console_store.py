"""A big store for the console benchmark: 1,000,000 exchanges over 30 days and 5 tasks.

Written partition by partition as the sidecar ships them: two zstd Parquet parts per task and
hour (``sidecar.parts.parquet_writer``, the real schema through ``core.record.records_to_table``),
one hour in memory at a time. Made once and cached: ``ensure_store(dir)`` returns at once when
``dir/DONE`` exists (written last).

Per task and hour, ~278 exchanges: a client request answered by the teacher (70%), a canary
answer of the student (10%), a fallback (2%, the teacher after the student failed, a few of
them with the student's rejected answer kept as ``check_failed``), and shadow pairs (the
client's teacher answer, ``route=shadow``, plus the student's shadow record with
``shadow_of``, ``detail.agreement``, ``detail.checks`` and sometimes ``detail.judged``; ~10% of
all records). 20% are streamed, 1% fail with a 5xx, 0.5% are cut short. Prompts are 200-2,000
characters of made-up prose (``loadtests.exchange_records.sentences``), answers 50-500; the word
``RARE_WORD`` is in 0.1% of the prompts. About 2,000 feedback rows, a tenth of them corrections.

    .venv/bin/python loadtests/console_store.py [--dir loadtests/results/console-store]
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Final

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from core.feedback import FEEDBACK_SCHEMA, FEEDBACK_SCHEMA_VERSION, feedback_to_table
from core.ids import new_id
from core.keys import feedback_part_key, feedback_partition_of, part_key, partition_of
from core.record import SCHEMA_VERSION, records_to_table
from loadtests.exchange_records import sentences
from sidecar.parts import parquet_writer

DEFAULT_DIR: Final = Path(__file__).resolve().parent / "results" / "console-store"
TASKS: Final = ("support-chat", "invoice-extract", "ticket-summary", "faq-answer", "triage")
TOTAL: Final = 1_000_000
DAYS: Final = 30
END: Final = datetime(2025, 6, 1, tzinfo=UTC)  # the store's last hour ends here
RARE_WORD: Final = "zyxglorp"  # in ~0.1% of prompts
PARTS_PER_PARTITION: Final = 2
_US: Final = 1_000_000


def ensure_store(root: Path = DEFAULT_DIR) -> Path:
    """The benchmark store under ``root`` (made if missing); returns ``root``."""
    if not (root / "DONE").exists():
        build(root)
    return root


def build(root: Path, total: int = TOTAL, seed: int = 11) -> None:
    rng = random.Random(seed)
    pool = [s.decode() for s in sentences(rng)]
    hours = DAYS * 24
    per_partition = -(-total // (hours * len(TASKS)))  # at least ``total`` in all
    start = END - timedelta(hours=hours)
    started, written = time.perf_counter(), 0
    feedback: list[dict[str, Any]] = []
    for h in range(hours):
        hour_us = int((start + timedelta(hours=h)).timestamp() * _US)
        for task in TASKS:
            rows = _hour(rng, pool, task, hour_us, per_partition)
            _write_parts(root, rows)
            written += len(rows)
            feedback.extend(_feedback(rng, rows))
        if h % 24 == 23:
            print(f"  day {h // 24 + 1}/{DAYS}: {written:,} exchanges, "
                  f"{time.perf_counter() - started:.0f} s", flush=True)  # fmt: skip
    _write_feedback(root, feedback)
    (root / "DONE").write_text(f"{written}\n")


def _hour(
    rng: random.Random, pool: list[str], task: str, hour_us: int, n: int
) -> list[dict[str, Any]]:
    """About ``n`` records of one task and hour, sorted by time."""
    rows: list[dict[str, Any]] = []
    while len(rows) < n:
        ts = hour_us + rng.randrange(3600 * _US - 2 * _US)
        kind = rng.random()
        if kind < 0.115:  # a shadow pair: the shadow records are ~10% of all
            teacher = _record(rng, pool, task, ts, "teacher", "shadow")
            rows.append(teacher)
            rows.append(_shadow(rng, pool, teacher))
        elif kind < 0.135:
            rows.extend(_fallback(rng, pool, task, ts))
        elif kind < 0.235:
            rows.append(_record(rng, pool, task, ts, "student", "canary"))
        else:
            rows.append(_record(rng, pool, task, ts, "teacher", "teacher"))
    rows.sort(key=lambda r: r["ts"])
    return rows


def _text(rng: random.Random, pool: list[str], low: int, high: int) -> str:
    target = rng.randint(low, high)
    words: list[str] = []
    size = 0
    while size < target:
        sentence = rng.choice(pool)
        words.append(sentence)
        size += len(sentence) + 1
    return " ".join(words)[:target]


def _record(
    rng: random.Random, pool: list[str], task: str, ts: int, backend: str, route: str
) -> dict[str, Any]:
    prompt = _text(rng, pool, 200, 2000)
    if rng.random() < 0.001:
        cut = rng.randrange(len(prompt))
        prompt = f"{prompt[:cut]} {RARE_WORD} {prompt[cut:]}"
    stream = rng.random() < 0.2
    request = {
        "model": "gpt-4o-mini",
        "messages": [
            {"role": "system", "content": f"You are the {task} assistant. Be brief."},
            {"role": "user", "content": prompt},
        ],
        "stream": stream,
    }
    status, complete = 200, True
    roll = rng.random()
    if roll < 0.01:
        status, complete = rng.choice((500, 502, 504)), False
    elif roll < 0.015:
        complete = False
    answer = _text(rng, pool, 50, 500)
    response = None if status != 200 else _completion(answer)
    return {
        "request_id": new_id(ts // 1000),
        "schema_version": SCHEMA_VERSION,
        "ts": ts,
        "task": task,
        "endpoint": "chat.completions",
        "backend": backend,
        "adapter": f"{task}/v7" if backend == "student" else None,
        "route": route,
        "shadow_of": None,
        "stream": stream,
        "complete": complete,
        "status": status,
        "error": None if status == 200 else "upstream error",
        "request": orjson.dumps(request).decode(),
        "response": None if response is None else orjson.dumps(response).decode(),
        "prompt_tokens": len(prompt) // 4,
        "completion_tokens": len(answer) // 4,
        "latency_ms": round(rng.uniform(150, 4000), 3),
        "ttft_ms": round(rng.uniform(50, 400), 3) if stream else None,
        "client": "c0ffee00c0ffee00",
        "user": None,
        "detail": orjson.dumps({"why": route}).decode() if backend == "student" else None,
    }


def _completion(answer: str) -> dict[str, Any]:
    return {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "model": "gpt-4o-mini-2024-07-18",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": answer}}],
        "usage": {"prompt_tokens": 300, "completion_tokens": 80},
    }


def _shadow(rng: random.Random, pool: list[str], teacher: dict[str, Any]) -> dict[str, Any]:
    """The student's shadow record of the client's ``teacher`` exchange."""
    ts = teacher["ts"] + rng.randrange(200_000, 1_500_000)
    row = _record(rng, pool, teacher["task"], ts, "student", "shadow")
    row["request"], row["stream"] = teacher["request"], False
    row["shadow_of"] = teacher["request_id"]
    overall = round(rng.betavariate(5, 1.5), 4)
    detail: dict[str, Any] = {
        "why": "shadow",
        "checks": ["json"] if rng.random() < 0.03 else [],
        "agreement": {
            "exact": overall > 0.99, "normalized": overall > 0.98, "similarity": overall,
            "fields": None, "json_fields": None, "overall": overall,
        },
    }
    if rng.random() < 0.2:
        verdict = "pass" if overall > 0.6 else "fail"
        detail["judged"] = {"criterion": "as-good-as-teacher", "verdict": verdict, "reason": "ok"}
    row["detail"] = orjson.dumps(detail).decode()
    return row


def _fallback(rng: random.Random, pool: list[str], task: str, ts: int) -> list[dict[str, Any]]:
    """The teacher answering for the student; a fifth keep the student's rejected answer."""
    rows = []
    why = "student_failed"
    if rng.random() < 0.2:
        rejected = _record(rng, pool, task, ts, "student", "hybrid")
        rejected["detail"] = orjson.dumps({"why": "hybrid", "checks": ["json"]}).decode()
        rows.append(rejected)
        why = "check_failed"
    answer = _record(rng, pool, task, ts + 300_000, "teacher", "fallback")
    answer["detail"] = orjson.dumps({"why": why}).decode()
    return [*rows, answer]


def _feedback(rng: random.Random, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Feedback on a few of an hour's exchanges (about 2,000 in all)."""
    out = []
    for row in rows:
        if rng.random() >= 0.002:
            continue
        correct = rng.random() < 0.1
        out.append({
            "feedback_id": new_id(row["ts"] // 1000 + 60_000),
            "request_id": row["request_id"],
            "schema_version": FEEDBACK_SCHEMA_VERSION,
            "ts": row["ts"] + 60 * _US,
            "task": row["task"],
            "score": rng.choice((-1.0, 1.0)),
            "label": rng.choice(("bad", "good", None)),
            "correction": "A better answer." if correct else None,
            "correction_json": False if correct else None,
            "comment": None,
            "client": "c0ffee00c0ffee00",
        })  # fmt: skip
    return out


def _write_parts(root: Path, rows: list[dict[str, Any]]) -> None:
    """One partition's rows as ``PARTS_PER_PARTITION`` parts (time-ordered slices)."""
    partition = partition_of(rows[0]["task"], rows[0]["ts"])
    step = -(-len(rows) // PARTS_PER_PARTITION)
    for i in range(0, len(rows), step):
        chunk = rows[i : i + step]
        path = root / part_key(partition, new_id(chunk[0]["ts"] // 1000))
        path.parent.mkdir(parents=True, exist_ok=True)
        with parquet_writer(path) as writer:
            writer.write_table(records_to_table(chunk))


def _write_feedback(root: Path, rows: list[dict[str, Any]]) -> None:
    by_partition: dict[Any, list[dict[str, Any]]] = {}
    for row in rows:
        by_partition.setdefault(feedback_partition_of(row["task"], row["ts"]), []).append(row)
    for partition, chunk in by_partition.items():
        path = root / feedback_part_key(partition, new_id())
        path.parent.mkdir(parents=True, exist_ok=True)
        with parquet_writer(path, FEEDBACK_SCHEMA) as writer:
            writer.write_table(feedback_to_table(chunk))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dir", type=Path, default=DEFAULT_DIR)
    args = parser.parse_args()
    started = time.perf_counter()
    ensure_store(args.dir)
    print(f"store ready at file://{args.dir} ({time.perf_counter() - started:.0f} s)")


if __name__ == "__main__":
    main()
