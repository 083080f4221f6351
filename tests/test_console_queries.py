"""The console's catalog (protege.console.queries) and corrections, over a small store."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from core.feedback import FEEDBACK_SCHEMA_VERSION, feedback_to_table
from core.ids import new_id
from core.keys import feedback_part_key, feedback_partition_of
from core.store import open_store
from protege.console.corrections import record_correction
from protege.console.queries import Catalog, ExchangeFilter
from tests.stored import EPOCH, at, put_part, record, s3_server, store_uri  # noqa: F401
from trainer.feedback import load_feedback
from trainer.settings import CurationConfig

T0 = at("2025-03-10 08:00")
SYSTEM = "You are a helpful assistant about bananas."


def us(moment: datetime) -> int:
    return (moment - EPOCH) // timedelta(microseconds=1)


def exchange(when: datetime, task: str, prompt: str, answer: str | None, **extra: Any) -> dict:
    """A record stamped ``when`` (its id dates it), answering ``prompt`` with ``answer``."""
    row = record(new_id(us(when) // 1000), when, task)
    messages = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": prompt}]
    row["request"] = orjson.dumps({"model": "m-1", "messages": messages}).decode()
    completion = {"model": "m-1-served", "choices": [{"message": {"content": answer}}]}
    row["response"] = None if answer is None else orjson.dumps(completion).decode()
    detail = extra.pop("detail", None)
    row["detail"] = None if detail is None else orjson.dumps(detail).decode()
    return row | extra


def build() -> tuple[list[dict], list[dict], dict[str, dict]]:
    """Exchanges of two tasks over hours and days, shadow pairs, fallbacks; and feedback."""
    n: dict[str, dict] = {}
    n["c1"] = exchange(T0 + timedelta(minutes=5), "alpha", "Where is my ORDER?", "It shipped.",
                       route="shadow")  # fmt: skip
    n["s1"] = exchange(T0 + timedelta(minutes=5, seconds=1), "alpha", "Where is my ORDER?",
                       "It has shipped.", backend="student", route="shadow", adapter="alpha/v1",
                       shadow_of=n["c1"]["request_id"],
                       detail={"why": "shadow", "checks": [], "agreement": {"overall": 0.9},
                               "judged": {"verdict": "pass"}})  # fmt: skip
    n["c2"] = exchange(T0 + timedelta(hours=1, minutes=5), "alpha", "Cancel it", "Cancelled.",
                       route="shadow")  # fmt: skip
    n["s2"] = exchange(T0 + timedelta(hours=1, minutes=5, seconds=1), "alpha", "Cancel it",
                       "No.", backend="student", route="shadow", adapter="alpha/v1",
                       shadow_of=n["c2"]["request_id"],
                       detail={"why": "shadow", "checks": ["json"], "agreement": {"overall": 0.2},
                               "judged": {"verdict": "fail"}})  # fmt: skip
    n["s3"] = exchange(T0 + timedelta(hours=1, minutes=5, seconds=2), "alpha", "Cancel it",
                       "Maybe.", backend="student", route="shadow", adapter="alpha/v2",
                       shadow_of=n["c2"]["request_id"],
                       detail={"why": "challenge", "role": "challenger", "checks": [],
                               "agreement": {"overall": 0.5}})  # fmt: skip
    n["h1"] = exchange(T0 + timedelta(hours=2, minutes=1), "alpha", "Give JSON", "not json",
                       backend="student", route="hybrid", adapter="alpha/v1",
                       detail={"why": "hybrid", "checks": ["json"]})  # fmt: skip
    n["f1"] = exchange(T0 + timedelta(hours=2, minutes=1, seconds=2), "alpha", "Give JSON",
                       '{"ok": true}', route="fallback",
                       detail={"why": "check_failed"})  # fmt: skip
    day2 = T0 + timedelta(days=1)
    n["f2"] = exchange(day2 + timedelta(minutes=1), "alpha", "Again", "Teacher says.",
                       route="fallback", detail={"why": "student_failed"})  # fmt: skip
    n["k1"] = exchange(day2 + timedelta(minutes=2), "beta", "Summarise", "A summary.",
                       backend="student", route="canary", adapter="beta/v1",
                       detail={"why": "canary"})  # fmt: skip
    n["e1"] = exchange(day2 + timedelta(minutes=3), "beta", "Broken", None, status=502,
                       complete=False, error="upstream failed")  # fmt: skip
    tool = {"model": "m-1", "choices": [{"message": {"content": None, "tool_calls": [
        {"id": "c", "function": {"name": "lookup", "arguments": '{"q": "kiwi"}'}}]}}]}  # fmt: skip
    n["st"] = exchange(day2 + timedelta(minutes=4), "beta", "Find fruit", None, stream=True)
    n["st"]["response"] = orjson.dumps(tool).decode()
    rows = list(n.values())
    for i in range(7):  # teacher traffic of beta over several hours
        rows.append(exchange(T0 + timedelta(hours=i, minutes=30), "beta", f"Question {i}",
                             f"Answer {i}"))  # fmt: skip
    feedback = [
        _feedback(n["c1"], label="bad"),
        _feedback(n["k1"], score=1.0, correction="A better summary."),
        _feedback(n["c2"], score=1.0),
    ]
    return rows, feedback, n


def _feedback(row: dict, **fields: Any) -> dict:
    return {"feedback_id": new_id(), "request_id": row["request_id"], "task": row["task"],
            "schema_version": FEEDBACK_SCHEMA_VERSION, "ts": row["ts"] + 60_000_000,
            **fields}  # fmt: skip


async def _fill(uri: str, rows: list[dict], feedback: list[dict], tmp: Path) -> None:
    by_part: dict[tuple[str, int], list[dict]] = {}
    for row in rows:
        by_part.setdefault((row["task"], row["ts"] // 3_600_000_000), []).append(row)
    async with open_store(uri) as store:
        for part in by_part.values():
            await put_part(store, new_id(), sorted(part, key=lambda r: r["ts"]), tmp)
        for fb in feedback:
            sink = pa.BufferOutputStream()
            pq.write_table(feedback_to_table([fb]), sink)
            key = feedback_part_key(feedback_partition_of(fb["task"], fb["ts"]), new_id())
            await store.put(key, bytes(sink.getvalue()))


@pytest.fixture
def filled(tmp_path: Path) -> tuple[Catalog, list[dict], dict[str, dict], str]:
    rows, feedback, named = build()
    uri = f"file://{tmp_path / 'store'}"
    asyncio.run(_fill(uri, rows, feedback, tmp_path))
    return Catalog(uri), rows, named, uri


def _ids(rows: list[dict], keep: Callable[[dict], bool]) -> list[str]:
    """Ids of ``rows`` that ``keep`` keeps, newest first."""
    kept = sorted((r for r in rows if keep(r)), key=lambda r: (r["ts"], r["request_id"]))
    return [r["request_id"] for r in reversed(kept)]


def test_console_lists_tasks_and_pages_newest_first_across_partitions(filled) -> None:
    """Every exchange, newest first across tasks, hours and days, in pages with has_next."""
    catalog, rows, _, _ = filled
    assert catalog.tasks() == ["alpha", "beta"]
    whole = catalog.exchanges(ExchangeFilter(), size=100)
    assert [r.request_id for r in whole.rows] == _ids(rows, lambda r: True)
    assert not whole.has_next
    seen, page = [], 1
    while True:
        found = catalog.exchanges(ExchangeFilter(), page=page, size=4)
        seen += [r.request_id for r in found.rows]
        if not found.has_next:
            break
        page += 1
    assert seen == _ids(rows, lambda r: True)
    assert page == -(-len(rows) // 4)
    assert catalog.exchanges(ExchangeFilter(), page=page + 1, size=4).rows == []


FILTERS = [
    (ExchangeFilter(task="beta"), lambda r, n: r["task"] == "beta"),
    (ExchangeFilter(since=T0 + timedelta(hours=1), until=T0 + timedelta(hours=2, minutes=1)),
     lambda r, n: us(T0 + timedelta(hours=1)) <= r["ts"] < us(T0 + timedelta(hours=2, minutes=1))),
    (ExchangeFilter(backend="student"), lambda r, n: r["backend"] == "student"),
    (ExchangeFilter(route="fallback"), lambda r, n: r["route"] == "fallback"),
    (ExchangeFilter(status=502), lambda r, n: r["status"] == 502),
    (ExchangeFilter(complete=False), lambda r, n: not r["complete"]),
    (ExchangeFilter(feedback="with"), lambda r, n: r is n["c1"] or r is n["k1"] or r is n["c2"]),
    (ExchangeFilter(feedback="negative"), lambda r, n: r is n["c1"]),
    (ExchangeFilter(feedback="correction"), lambda r, n: r is n["k1"]),
    (ExchangeFilter(text="where is my order"), lambda r, n: "ORDER" in r["request"]),
    (ExchangeFilter(text="SHIPPED"), lambda r, n: "shipped" in (r["response"] or "")),
    (ExchangeFilter(text="kiwi"), lambda r, n: r is n["st"]),  # a tool call's arguments
    (ExchangeFilter(text="bananas"), lambda r, n: False),  # the system prompt is not searched
    (ExchangeFilter(text="role"), lambda r, n: False),  # nor the JSON around the texts
    (ExchangeFilter(task="alpha", route="shadow", backend="student", text="cancel"),
     lambda r, n: r is n["s2"] or r is n["s3"]),
]  # fmt: skip


@pytest.mark.parametrize(("f", "keep"), FILTERS)
def test_console_filters_exchanges(filled, f: ExchangeFilter, keep) -> None:
    """Each filter keeps exactly the exchanges it names, newest first."""
    catalog, rows, named, _ = filled
    found = catalog.exchanges(f, size=100)
    assert [r.request_id for r in found.rows] == _ids(rows, lambda r: keep(r, named))


def test_console_rows_read_prompt_answer_and_detail(filled) -> None:
    """A row shows the last user message, the answer (tool calls, streamed too), model, why."""
    catalog, _, named, _ = filled
    by_id = {r.request_id: r for r in catalog.exchanges(ExchangeFilter(), size=100).rows}
    c1, st, e1 = (by_id[named[k]["request_id"]] for k in ("c1", "st", "e1"))
    assert (c1.prompt, c1.answer, c1.model, c1.route) == (
        "Where is my ORDER?", "It shipped.", "m-1-served", "shadow")
    assert st.answer == '[{"arguments":{"q":"kiwi"},"name":"lookup"}]'
    assert (e1.answer, e1.status, e1.complete) == ("upstream failed", 502, False)
    assert by_id[named["k1"]["request_id"]].why == "canary"


def test_console_exchange_by_id_with_feedback_and_shadows(filled) -> None:
    """One exchange whole (JSON parsed), with its feedback rows and its shadow records."""
    catalog, _, named, _ = filled
    c2 = catalog.exchange(named["c2"]["request_id"])
    assert c2 is not None
    assert c2["request"]["messages"][1]["content"] == "Cancel it"
    assert c2["response"]["choices"][0]["message"]["content"] == "Cancelled."
    assert c2["ts"] == T0 + timedelta(hours=1, minutes=5)
    assert c2["shadows"] == [named["s2"]["request_id"], named["s3"]["request_id"]]
    assert [f["score"] for f in c2["feedback"]] == [1.0]
    s2 = catalog.exchange(named["s2"]["request_id"])
    assert s2 is not None and s2["detail"]["agreement"]["overall"] == 0.2
    assert s2["shadows"] == [] and s2["feedback"] == []
    assert catalog.exchange(new_id()) is None
    assert catalog.exchange("not-an-id!") is None


def test_console_disagreements_worst_first_then_newest(filled) -> None:
    """Pairs sorted by agreement, worst first, those without one after (failed checks first)."""
    catalog, _, n, _ = filled
    found = catalog.disagreements("alpha", None, None, size=10)
    order = ("s2", "s3", "s1", "h1", "f2")
    assert [p.id for p in found.rows] == [n[k]["request_id"] for k in order]
    s2, s3, _, h1, f2 = found.rows
    assert (s2.kind, s2.agreement, s2.checks, s2.judged) == ("shadow", 0.2, ["json"],
                                                             {"verdict": "fail"})  # fmt: skip
    assert (s2.teacher, s2.student, s2.prompt) == ("Cancelled.", "No.", "Cancel it")
    assert s2.client_request_id == n["c2"]["request_id"]
    assert (s3.kind, s3.role, s3.adapter) == ("challenge", "challenger", "alpha/v2")
    assert (h1.kind, h1.checks, h1.client_request_id) == ("check_failed", ["json"],
                                                          n["f1"]["request_id"])  # fmt: skip
    assert (h1.teacher, h1.student) == ('{"ok": true}', "not json")
    assert (f2.kind, f2.teacher, f2.student) == ("fallback", "Teacher says.", "")
    newest = catalog.disagreements(None, None, None, sort="newest", size=2)
    assert [p.id for p in newest.rows] == [n["f2"]["request_id"], n["h1"]["request_id"]]
    assert newest.has_next
    window = catalog.disagreements("alpha", T0 + timedelta(hours=1), T0 + timedelta(hours=2))
    assert [p.id for p in window.rows] == [n["s2"]["request_id"], n["s3"]["request_id"]]


def test_console_pair_by_any_of_its_ids(filled) -> None:
    """A pair is found by its student record, its rejected answer or its fallback; no other."""
    catalog, _, n, _ = filled
    pair = catalog.pair(n["s1"]["request_id"])
    assert pair is not None and (pair.agreement, pair.teacher) == (0.9, "It shipped.")
    by_fallback = catalog.pair(n["f1"]["request_id"])
    assert by_fallback == catalog.pair(n["h1"]["request_id"])
    assert by_fallback is not None and by_fallback.id == n["h1"]["request_id"]
    assert catalog.pair(n["c1"]["request_id"]) is None
    assert catalog.pair(new_id()) is None


def test_console_days_aggregate_one_task(filled) -> None:
    """A task's days: requests, student answers, shadow agreement, judged pass share, errors."""
    catalog, _, _, _ = filled
    alpha = catalog.days("alpha", date(2025, 3, 1), date(2025, 3, 31))
    assert [d.date for d in alpha] == [date(2025, 3, 10), date(2025, 3, 11)]
    first, second = alpha
    assert (first.requests, first.student, first.shadow_scored) == (3, 0, 2)
    assert first.agreement == pytest.approx(0.55)
    assert (first.judged, first.judged_pass, first.errors) == (2, 0.5, 0)
    assert (second.requests, second.agreement, second.judged_pass) == (1, None, None)
    beta = catalog.days("beta", date(2025, 3, 11), date(2025, 3, 11))
    assert [(d.requests, d.student, d.errors) for d in beta] == [(3, 1, 1)]


def test_console_is_safe_from_many_threads(filled) -> None:
    """Calls from several threads at once answer as one at a time does."""
    catalog, _, n, _ = filled
    calls = [lambda: catalog.exchanges(ExchangeFilter(text="answer"), size=3),
             lambda: catalog.disagreements("alpha", None, None),
             lambda: catalog.exchange(n["c2"]["request_id"])] * 6  # fmt: skip
    alone = [call() for call in calls]
    with ThreadPoolExecutor(6) as pool:
        together = list(pool.map(lambda call: call(), calls))
    assert together == alone


def test_console_reads_file_and_s3_stores(store_uri: str, tmp_path: Path) -> None:  # noqa: F811
    """The same answers from a local directory and from S3 (moto's server)."""
    rows, feedback, n = build()
    asyncio.run(_fill(store_uri, rows, feedback, tmp_path))
    catalog = Catalog(store_uri)
    assert catalog.tasks() == ["alpha", "beta"]
    first = catalog.exchanges(ExchangeFilter(), size=5)
    assert [r.request_id for r in first.rows] == _ids(rows, lambda r: True)[:5]
    one = catalog.exchange(n["c1"]["request_id"])
    assert one is not None and one["shadows"] == [n["s1"]["request_id"]]
    assert [f["label"] for f in one["feedback"]] == ["bad"]
    assert catalog.disagreements("alpha", None, None).rows[0].id == n["s2"]["request_id"]


def test_console_correction_reaches_the_trainer(filled) -> None:
    """A console correction is a feedback row the trainer's dataset build reads as gold."""
    _, _, n, uri = filled
    rid = n["f1"]["request_id"]
    feedback_id = record_correction(uri, "alpha", rid, ' {"ok": false} ', "typo",
                                    json_answer=True)  # fmt: skip
    told = load_feedback(uri, "alpha", CurationConfig())
    assert told.corrections[rid] == '{"ok":false}'
    row = next(f for f in Catalog(uri).exchange(rid)["feedback"])
    assert (row["feedback_id"], row["client"], row["comment"]) == (feedback_id, "console", "typo")
    assert row["correction_json"] is True
    assert rid in {r.request_id for r in Catalog(uri).exchanges(
        ExchangeFilter(feedback="correction")).rows}  # fmt: skip


@pytest.mark.parametrize(("text", "json_answer", "message"), [
    ("  ", False, "empty"), ("not json", True, "must be JSON"),
])  # fmt: skip
def test_console_correction_refuses_bad_input(tmp_path: Path, text, json_answer, message) -> None:
    """An empty correction, or one that is not JSON for a JSON task, is refused."""
    with pytest.raises(ValueError, match=message):
        record_correction(f"file://{tmp_path}", "alpha", new_id(), text, None,
                          json_answer=json_answer)  # fmt: skip
    assert not any(tmp_path.iterdir())


def test_console_rejects_naive_times_and_bad_pages(filled) -> None:
    """Times must be timezone-aware; pages and sizes in range; feedback one of three."""
    catalog = filled[0]
    for f in (ExchangeFilter(since=datetime(2025, 1, 1)), ExchangeFilter(feedback="maybe")):
        with pytest.raises(ValueError):
            catalog.exchanges(f)
    with pytest.raises(ValueError):
        catalog.exchanges(ExchangeFilter(), page=0)
