"""The console's catalog: what its pages show, read from the store with DuckDB.

DuckDB queries pyarrow datasets of the store, opened as ``core.read`` opens them (a local
directory or S3 through pyarrow's filesystem: DuckDB never loads an extension, nor reads a file
itself), and pushes each query's columns and simple filters down into the pyarrow scan. The
store's partitions decide what a query reads:

    listing        the exchange parts, listed at most every ``LISTING_TTL_S`` and grouped by
                   partition; each query scans a dataset of only the parts it needs
    exchanges      newest first: hours are walked backwards from the newest listed partition in
                   windows of 1, 2, 4… hours, reading ids and times only, until the page (and one
                   row more, for ``has_next``) is found; then the page's rows are read whole from
                   their own partitions. A task prunes task partitions, a time range hours, a
                   feedback filter the hours its request ids date
    exchange/pair  a request id is a ULID dating its exchange (``core.ids.id_time_ms``): only the
                   hours within ``LOOKUP_WINDOW`` of it are read
    disagreements  a top-N over the task's and range's partitions (ids and ``detail`` only), then
                   the page's pairs read from their partitions
    days           one aggregate over the task's partitions of those days

Memory: scans stream; a query keeps at most its page's rows (a top-N), never the store.

Thread safety: one DuckDB database per ``Catalog``; every query runs on a cursor of its own (a
connection of its own to that database, as DuckDB requires for concurrent use) holding its own
view of the dataset; the listing cache is guarded by a lock. Calls may run on many threads.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any, Final, Generic, TypeVar

import duckdb
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.fs as pafs

from core.errors import StoreError
from core.feedback import UNRESOLVED, dedupe
from core.ids import id_time_ms
from core.keys import EXCHANGES, FEEDBACK, Partition, parse_part_key, partition_of
from core.read import (
    FEEDBACK_DATASET_SCHEMA,
    FEEDBACK_PARTITIONING,
    filesystem_for,
    open_dataset,
    vanished,
)
from core.s3 import S3Settings
from protege.console import rows
from protege.console.rows import ExchangeRow, Pair

__all__ = ["Catalog", "Day", "ExchangeFilter", "ExchangeRow", "Page", "Pair"]

T = TypeVar("T")

LISTING_TTL_S: Final = 10.0  # how stale the listing of parts may be (new parts show up after)
# Around a request id's time: its own exchange (a hybrid's rejected answer is stamped before
# its id), its shadow and referee calls, within the gateway's feedback look-up window.
LOOKUP_WINDOW: Final = timedelta(seconds=600)
MAX_WINDOW_HOURS: Final = 256  # the widest step of the newest-first walk
MAX_PAGE_SIZE: Final = 500
FEEDBACK_KINDS: Final = ("with", "negative", "correction")
_HOUR: Final = timedelta(hours=1)
_DUCKDB: Final = {
    "autoinstall_known_extensions": False,
    "autoload_known_extensions": False,
    "allow_community_extensions": False,
    "enable_external_access": False,  # no file, no URL: only the datasets handed to it
}
_ROW_COLUMNS: Final = (
    "request_id, epoch_us(ts), task, backend, route, status, complete, latency_ms, request,"
    " response, error, json_extract_string(detail, '$.why')"
)
_PAIR_COLUMNS: Final = (
    "request_id, epoch_us(ts), task, backend, route, adapter, shadow_of, request, response,"
    " error, detail"
)
_AGREEMENT: Final = "TRY_CAST(json_extract_string(detail, '$.agreement.overall') AS DOUBLE)"
_CHECKS: Final = "coalesce(json_array_length(detail, '$.checks'), 0) > 0"
_SHADOW: Final = "(backend = 'student' AND shadow_of IS NOT NULL)"
_PAIRS: Final = f"route IN ('shadow', 'fallback') AND ({_SHADOW} OR route = 'fallback')"


@dataclass(frozen=True)
class ExchangeFilter:
    task: str | None = None
    since: datetime | None = None  # tz-aware, inclusive
    until: datetime | None = None  # exclusive
    backend: str | None = None  # teacher | student
    route: str | None = None  # teacher | shadow | canary | hybrid | student | fallback | referee
    status: int | None = None
    complete: bool | None = None
    feedback: str | None = None  # None: any; "with": has feedback; "negative"; "correction"
    text: str | None = None  # case-insensitive substring of the prompt or the answer


@dataclass(frozen=True)
class Page(Generic[T]):
    rows: list[T]
    page: int
    size: int
    has_next: bool


@dataclass(frozen=True)
class Day:
    """One task's day."""

    date: date
    requests: int  # client requests (not shadow or referee calls, not rejected answers)
    student: int  # of them answered by the student
    shadow_scored: int  # shadow records with an agreement
    agreement: float | None  # their mean detail.agreement.overall
    judged: int  # shadow records with a pass or fail verdict (detail.judged)
    judged_pass: float | None  # the pass share of those
    errors: int  # requests with status >= 500 or incomplete


@dataclass(frozen=True)
class _Listing:
    dataset: ds.Dataset | None
    parts: dict[Partition, list[ds.Fragment]]
    at: float


class Catalog:
    """Read-only queries over one store's exchanges and feedback (blocking; thread-safe)."""

    def __init__(self, store_uri: str, s3: S3Settings | None = None) -> None:
        fs, root = filesystem_for(store_uri)
        if s3 is not None and isinstance(fs, pafs.S3FileSystem):
            fs = pafs.S3FileSystem(**s3.arrow_options())
        self._uri, self._fs, self._root = store_uri, fs, root
        self._db = duckdb.connect(":memory:", config=dict(_DUCKDB))
        self._lock = threading.Lock()
        self._listed: _Listing | None = None

    def tasks(self) -> list[str]:
        """The tasks with exchanges in the store, sorted."""
        return sorted({p.task for p in self._listing().parts})

    def exchanges(self, f: ExchangeFilter, page: int = 1, size: int = 50) -> Page[ExchangeRow]:
        """Exchanges matching ``f``, newest first: page ``page`` of ``size`` rows."""
        _check_page(page, size)
        where, args = rows.conditions(f)
        parts = self._select({f.task} if f.task else None, f.since, f.until)
        ids: pa.Table | None = None
        if f.feedback is not None:
            if f.feedback not in FEEDBACK_KINDS:
                raise ValueError(f"feedback must be one of {FEEDBACK_KINDS}, got {f.feedback!r}")
            wanted = rows.feedback_ids(self._feedback(f.task), f.feedback)
            hours = {h for rid in wanted for h in _hours_around(rid)}
            parts = [p for p in parts if (p.date, p.hour) in hours]
            ids = pa.table({"request_id": pa.array(sorted(wanted), pa.string())})
            where += " AND request_id IN (SELECT request_id FROM ids)"
        keys = self._walk(parts, where, args, (page - 1) * size, size + 1, ids)
        by_id = {r[0]: rows.exchange_row(r) for r in self._fetch(keys[:size], _ROW_COLUMNS)}
        found = [by_id[k[0]] for k in keys[:size] if k[0] in by_id]
        return Page(found, page, size, len(keys) > size)

    def exchange(self, request_id: str) -> dict[str, Any] | None:
        """The whole record (JSON columns parsed), its ``feedback`` rows and its ``shadows``
        (ids of the records whose ``shadow_of`` is it); None when the store has none."""
        parts = self._around([request_id])
        if not parts:
            return None
        found = self._records(parts, "SELECT * EXCLUDE (date, hour, ts), epoch_us(ts) AS ts "
                              "FROM x WHERE request_id = ? LIMIT 1", [request_id])  # fmt: skip
        if not found:
            return None
        record = rows.parsed(found[0])
        shadows = self._rows(parts, "SELECT request_id FROM x WHERE shadow_of = ? "
                             "ORDER BY ts, request_id", [request_id])  # fmt: skip
        record["shadows"] = list(dict.fromkeys(r[0] for r in shadows))
        feedback = self._feedback(record["task"])
        mine = feedback.filter(pc.equal(feedback.column("request_id"), request_id))
        record["feedback"] = mine.to_pylist()
        return record

    def disagreements(
        self,
        task: str | None,
        since: datetime | None,
        until: datetime | None,
        sort: str = "agreement",
        page: int = 1,
        size: int = 50,
    ) -> Page[Pair]:
        """Shadow and challenge answers against the teacher's, and fallbacks. ``sort``
        "agreement": worst first, those without one after (failed checks first among them);
        "newest": newest first."""
        _check_page(page, size)
        if sort not in ("agreement", "newest"):
            raise ValueError(f"sort must be 'agreement' or 'newest', got {sort!r}")
        where, args = rows.conditions(ExchangeFilter(task=task, since=since, until=until))
        order = "ts DESC" if sort == "newest" else rows.WORST_FIRST
        sql = (f"SELECT request_id, epoch_us(ts), task, {_AGREEMENT} AS agreement, "
               f"{_CHECKS} OR json_extract_string(detail, '$.why') = 'check_failed' AS failed "
               f"FROM x WHERE {where} AND {_PAIRS} ORDER BY {order}, request_id DESC "
               "LIMIT ? OFFSET ?")  # fmt: skip
        parts = self._select({task} if task else None, since, until)
        keys = self._rows(parts, sql, [*args, size + 1, (page - 1) * size])
        anchors = self._fetch(keys[:size], _PAIR_COLUMNS)
        by_id = dict(self._pairs(anchors))
        found = [by_id[k[0]] for k in keys[:size] if k[0] in by_id]
        return Page(found, page, size, len(keys) > size)

    def pair(self, id: str) -> Pair | None:
        """The pair ``id`` names (a shadow record, a rejected answer, or a fallback)."""
        parts = self._around([id])
        found = self._rows(parts, f"SELECT {_PAIR_COLUMNS} FROM x WHERE request_id = ? LIMIT 1",
                           [id])  # fmt: skip
        if not found:
            return None
        row = rows.pair_row(found[0])
        if row.route == "hybrid" and row.checks:  # a rejected answer: its pair is the fallback
            sql = (f"SELECT {_PAIR_COLUMNS} FROM x WHERE route = 'fallback' AND request = ? "
                   "AND ts >= ? ORDER BY ts LIMIT 1")  # fmt: skip
            found = self._rows(parts, sql, [row.request, row.ts])
            if not found:
                return None
        elif not (row.shadow_of and row.backend == "student") and row.route != "fallback":
            return None
        pairs = self._pairs(found)
        return pairs[0][1] if pairs else None

    def days(self, task: str, since: date, until: date) -> list[Day]:
        """``task``'s days from ``since`` to ``until`` (both included) that had traffic."""
        first, last = since.isoformat(), until.isoformat()
        parts = [p for p in self._listing().parts if p.task == task and first <= p.date <= last]
        found = self._rows(parts, rows.DAYS_SQL, [])
        return [Day(date.fromisoformat(r[0]), *r[1:]) for r in found]

    # --- reading ---

    def _listing(self) -> _Listing:
        """The parts of the store, listed at most ``LISTING_TTL_S`` ago."""
        with self._lock:
            listed = self._listed
            if listed is not None and time.monotonic() - listed.at < LISTING_TTL_S:
                return listed
            try:
                dataset = open_dataset(self._fs, f"{self._root}/{EXCHANGES}", self._uri)
                parts: dict[Partition, list[ds.Fragment]] = {}
                for fragment in [] if dataset is None else dataset.get_fragments():
                    key = fragment.path[len(self._root) + 1 :]
                    parsed = parse_part_key(key)
                    if parsed is not None:
                        parts.setdefault(parsed[0], []).append(fragment)
            except (OSError, pa.ArrowInvalid) as exc:
                raise StoreError(f"{self._uri}: cannot list exchanges: {exc}") from exc
            self._listed = _Listing(dataset, parts, time.monotonic())
            return self._listed

    def _select(
        self, tasks: set[str] | None, since: datetime | None, until: datetime | None
    ) -> list[Partition]:
        """The listed partitions of ``tasks`` (None: all) overlapping ``[since, until)``."""
        for name, moment in (("since", since), ("until", until)):
            if moment is not None and moment.tzinfo is None:
                raise ValueError(f"{name} must be timezone-aware, got {moment.isoformat()}")
        return [
            p
            for p in self._listing().parts
            if (tasks is None or p.task in tasks)
            and (since is None or p.start + _HOUR > since)
            and (until is None or p.start < until)
        ]

    def _around(self, request_ids: list[str]) -> list[Partition]:
        """The listed partitions within ``LOOKUP_WINDOW`` of the ids' times."""
        hours = {h for rid in request_ids for h in _hours_around(rid)}
        return [p for p in self._listing().parts if (p.date, p.hour) in hours]

    def _walk(
        self,
        parts: list[Partition],
        where: str,
        args: list[Any],
        skip: int,
        want: int,
        ids: pa.Table | None,
    ) -> list[tuple[str, int, str]]:
        """``(request_id, ts µs, task)`` of the matches after the first ``skip``, at most
        ``want``, newest first: hours read backwards in doubling windows until enough."""
        hours = sorted({(p.date, p.hour) for p in parts}, reverse=True)
        sql = (f"SELECT request_id, epoch_us(ts), task FROM x WHERE {where} "
               "ORDER BY ts DESC, request_id DESC LIMIT ?")  # fmt: skip
        keys: list[tuple[str, int, str]] = []
        start, width = 0, 1
        while start < len(hours) and len(keys) < want:
            window = set(hours[start : start + width])
            start, width = start + width, min(width * 2, MAX_WINDOW_HOURS)
            chunk = [p for p in parts if (p.date, p.hour) in window]
            found = self._rows(chunk, sql, [*args, skip + want - len(keys)], ids)
            keys.extend(found[skip:])
            skip = max(0, skip - len(found))
        return keys

    def _fetch(self, keys: list[tuple[Any, ...]], columns: str) -> list[tuple[Any, ...]]:
        """``columns`` of the records ``keys`` name, read from their own partitions."""
        if not keys:
            return []
        parts = sorted({partition_of(k[2], k[1]) for k in keys})
        marks = ", ".join("?" for _ in keys)
        sql = f"SELECT {columns} FROM x WHERE request_id IN ({marks})"
        return self._rows(parts, sql, [k[0] for k in keys])

    def _pairs(self, anchors: list[tuple[Any, ...]]) -> list[tuple[str, Pair]]:
        """The pairs of shadow and fallback records: with their teacher's answer, and a
        fallback's rejected student answer when one was kept."""
        records = [rows.pair_row(a) for a in anchors]
        clients = [r.shadow_of for r in records if r.shadow_of]
        fallbacks = [r for r in records if r.route == "fallback"]
        found: list[tuple[Any, ...]] = []
        if clients:
            marks = ", ".join("?" for _ in clients)
            sql = (f"SELECT {_PAIR_COLUMNS} FROM x WHERE request_id IN ({marks}) "
                   f"OR (route = 'referee' AND shadow_of IN ({marks}))")  # fmt: skip
            found += self._rows(self._around(clients), sql, [*clients, *clients])
        if fallbacks:
            sql = (f"SELECT {_PAIR_COLUMNS} FROM x WHERE route = 'hybrid' AND "
                   f"backend = 'student' AND {_CHECKS}")  # fmt: skip
            found += self._rows(self._around([r.request_id for r in fallbacks]), sql, [])
        return rows.build_pairs(records, [rows.pair_row(r) for r in found])

    def _feedback(self, task: str | None) -> pa.Table:
        """Feedback on ``task`` (and the unresolved), deduplicated, newest first."""
        try:
            dataset = open_dataset(self._fs, f"{self._root}/{FEEDBACK}", self._uri,
                                    FEEDBACK_DATASET_SCHEMA, FEEDBACK_PARTITIONING)  # fmt: skip
            if dataset is None:
                return FEEDBACK_DATASET_SCHEMA.empty_table().drop_columns(["date"])
            tasks = pa.array([task, UNRESOLVED], pa.string())
            where = ds.field("task").isin(tasks) if task else None
            table = dataset.to_table(filter=where).drop_columns(["date"])
        except (OSError, pa.ArrowInvalid) as exc:
            raise StoreError(f"{self._uri}: cannot read feedback: {exc}") from exc
        return dedupe(table)

    def _rows(
        self, parts: list[Partition], sql: str, args: list[Any], ids: pa.Table | None = None
    ) -> list[tuple[Any, ...]]:
        if not parts:
            return []
        cursor = self._run(parts, sql, args, ids)
        try:
            return cursor.fetchall()
        finally:
            cursor.close()

    def _records(self, parts: list[Partition], sql: str, args: list[Any]) -> list[dict[str, Any]]:
        if not parts:
            return []
        cursor = self._run(parts, sql, args, None)
        try:
            names = [d[0] for d in cursor.description or ()]
            return [dict(zip(names, r, strict=True)) for r in cursor.fetchall()]
        finally:
            cursor.close()

    def _run(
        self, parts: list[Partition], sql: str, args: list[Any], ids: pa.Table | None
    ) -> duckdb.DuckDBPyConnection:
        """``sql`` over the view ``x`` of ``parts`` (and ``ids``), on a cursor of its own; a
        part gone since the listing (compacted) lists again, once."""
        for attempt in range(2):
            listing = self._listing()
            fragments = [f for p in parts for f in listing.parts.get(p, [])]
            if listing.dataset is None:
                raise StoreError(f"{self._uri}: no exchanges")
            whole = listing.dataset
            dataset = ds.FileSystemDataset(fragments, whole.schema, whole.format, whole.filesystem)
            cursor = self._db.cursor()
            cursor.register("x", dataset)
            if ids is not None:
                cursor.register("ids", ids)
            try:
                return cursor.execute(sql, args)
            except (duckdb.Error, OSError) as exc:
                cursor.close()
                if attempt == 0 and vanished(OSError(str(exc))):
                    with self._lock:
                        self._listed = None
                    continue
                raise StoreError(f"{self._uri}: cannot read exchanges: {exc}") from exc
        raise AssertionError("unreachable")


def _hours_around(request_id: str) -> list[tuple[str, str]]:
    """``(date, hour)`` of the partitions within ``LOOKUP_WINDOW`` of an id's time."""
    try:
        moment = datetime.fromtimestamp(id_time_ms(request_id) / 1000, tz=UTC)
    except (ValueError, OverflowError, OSError):  # not an id of ours
        return []
    first = (moment - LOOKUP_WINDOW).replace(minute=0, second=0, microsecond=0)
    hours = []
    while first <= moment + LOOKUP_WINDOW:
        hours.append((first.strftime("%Y-%m-%d"), first.strftime("%H")))
        first += _HOUR
    return hours


def _check_page(page: int, size: int) -> None:
    if page < 1:
        raise ValueError(f"page must be 1 or more, got {page}")
    if not 1 <= size <= MAX_PAGE_SIZE:
        raise ValueError(f"size must be 1..{MAX_PAGE_SIZE}, got {size}")
