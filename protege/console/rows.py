"""The catalog's pure half: a filter as SQL, a record's columns as the console's rows.

The texts are read as everywhere else: a prompt is what the user said (``core.text``), an answer
is a completion's text or its tool calls (``core.answers``). A streamed record's ``response``
holds its assembled completion (``gateway.capture``), so streamed and whole answers read alike.

A text search matches the prompt's and the answer's text, not the JSON around them: each row is
first matched on its raw ``request`` and ``response`` (cheap, over the store), and only those
rows are parsed (DuckDB's JSON functions, in its core) to match the user turns' contents, the
answer's content or text, and its tool calls. A content given as a list of parts is matched on
its JSON.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, Final

import orjson
import pyarrow as pa

from core.answers import answer_text, tool_calls_text
from core.text import content_text, prompt_text

if TYPE_CHECKING:
    from protege.console.queries import ExchangeFilter

CUT: Final = 200  # characters of a row's prompt and answer
_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)
_JSON_COLUMNS: Final = ("request", "response", "detail")
# Worst agreement first; none after, failed checks first among them; then newest.
WORST_FIRST: Final = "agreement IS NULL, agreement, failed DESC, ts DESC"
_RAW_HIT: Final = "(regexp_matches(request, ?) OR regexp_matches(coalesce(response, ''), ?))"
_PROMPT_HIT: Final = (
    "(json_valid(request) AND (len(list_filter("
    "CAST(json_extract(request, '$.messages[*]') AS JSON[]), lambda m: "
    "coalesce(json_extract_string(m, '$.role'), '') NOT IN ('system', 'developer') AND "
    "regexp_matches(coalesce(json_extract_string(m, '$.content'), ''), ?))) > 0 "
    "OR regexp_matches(coalesce(json_extract_string(request, '$.prompt'), ''), ?)))"
)
_ANSWER_HIT: Final = (
    "(json_valid(response) AND ("
    "regexp_matches(coalesce(json_extract_string(response, '$.choices[0].message.content'), "
    "json_extract_string(response, '$.choices[0].text'), ''), ?) "
    "OR regexp_matches(coalesce(CAST(json_extract(response, '$.choices[0].message.tool_calls') "
    "AS VARCHAR), ''), ?)))"
)
_SHADOW: Final = "backend = 'student' AND shadow_of IS NOT NULL"
_REJECTED: Final = "route = 'hybrid' AND coalesce(json_array_length(detail, '$.checks'), 0) > 0"
DAYS_SQL: Final = f"""
SELECT date,
  count(*) FILTER (WHERE client),
  count(*) FILTER (WHERE client AND backend = 'student' AND route <> 'shadow'),
  count(agreement), avg(agreement),
  count(verdict), avg(CASE WHEN verdict = 'pass' THEN 1.0 WHEN verdict = 'fail' THEN 0.0 END),
  count(*) FILTER (WHERE client AND (status >= 500 OR NOT complete))
FROM (
  SELECT date, backend, route, status, complete,
    shadow_of IS NULL AND NOT coalesce({_REJECTED}, false) AS client,
    CASE WHEN {_SHADOW} AND coalesce(json_extract_string(detail, '$.why'), 'shadow') = 'shadow'
      THEN TRY_CAST(json_extract_string(detail, '$.agreement.overall') AS DOUBLE) END
      AS agreement,
    CASE WHEN {_SHADOW} AND json_extract_string(detail, '$.judged.verdict') IN ('pass', 'fail')
      THEN json_extract_string(detail, '$.judged.verdict') END AS verdict
  FROM x
)
GROUP BY date ORDER BY date
"""


@dataclass(frozen=True)
class ExchangeRow:
    """One line of the exchanges table."""

    request_id: str
    ts: datetime
    task: str
    backend: str
    route: str
    status: int
    complete: bool
    latency_ms: float | None
    model: str | None
    prompt: str  # the last user message, at most CUT characters
    answer: str  # the answer's text (or its tool calls; else the error), at most CUT characters
    why: str | None  # detail.why


@dataclass(frozen=True)
class Pair:
    """A disagreement: a shadow (or challenge) answer against the teacher's (or referee's),
    or a fallback with the student's rejected answer when one was kept."""

    id: str  # the student record's request_id (a fallback without one: the fallback's)
    client_request_id: str  # shadow_of, or the fallback's request
    ts: datetime
    task: str
    adapter: str | None
    kind: str  # shadow | challenge | fallback | check_failed
    agreement: float | None  # detail.agreement.overall
    checks: list[str]  # failed output checks
    prompt: str
    teacher: str
    student: str
    role: str | None  # detail.role (champion/challenger) when present
    judged: dict[str, Any] | None  # detail.judged when present


@dataclass(frozen=True)
class PairRow:
    """A record read for a pair (``queries._PAIR_COLUMNS``)."""

    request_id: str
    ts: datetime
    task: str
    backend: str
    route: str
    adapter: str | None
    shadow_of: str | None
    request: str
    response: str | None
    error: str | None
    detail: dict[str, Any]

    @property
    def checks(self) -> list[str]:
        checks = self.detail.get("checks")
        return [str(c) for c in checks] if isinstance(checks, list) else []


def conditions(f: ExchangeFilter) -> tuple[str, list[Any]]:
    """``f`` (but its feedback) as a SQL condition over the exchanges, and its parameters."""
    terms: list[str] = ["TRUE"]
    args: list[Any] = []
    for column, value in (("task", f.task), ("backend", f.backend), ("route", f.route),
                          ("status", f.status), ("complete", f.complete)):  # fmt: skip
        if value is not None:
            terms.append(f"{column} = ?")
            args.append(value)
    if f.since is not None:
        terms.append("ts >= ?")
        args.append(f.since)
    if f.until is not None:
        terms.append("ts < ?")
        args.append(f.until)
    if f.text:
        raw, plain = raw_pattern(f.text), pattern(f.text)
        terms.append(f"{_RAW_HIT} AND ({_PROMPT_HIT} OR {_ANSWER_HIT})")
        args += [raw, raw, plain, plain, plain, plain]
    return " AND ".join(terms), args


def pattern(text: str) -> str:
    """An RE2 pattern matching ``text`` anywhere, case-insensitively."""
    return "(?i)" + "".join(c if c.isalnum() else f"\\x{{{ord(c):x}}}" for c in text)


def raw_pattern(text: str) -> str:
    """``pattern`` of ``text`` as written in JSON, escaped or not (a superset of the rows whose
    texts hold it)."""
    forms = dict.fromkeys([text, orjson.dumps(text).decode()[1:-1], json.dumps(text)[1:-1]])
    return "(?i)(?:" + "|".join(pattern(form)[4:] for form in forms) + ")"


def feedback_ids(table: pa.Table, kind: str) -> set[str]:
    """The request ids with feedback (``with``), negative feedback, or a correction."""
    rows = table.select(["request_id", "score", "label", "correction"]).to_pylist()
    if kind == "with":
        return {r["request_id"] for r in rows}
    if kind == "correction":
        return {r["request_id"] for r in rows if (r["correction"] or "").strip()}
    from trainer.feedback import is_negative  # the trainer's own rule (default labels)
    from trainer.settings import CurationConfig

    config = CurationConfig()
    return {r["request_id"] for r in rows if is_negative(r, config)}


def moment(us: int) -> datetime:
    return _EPOCH + timedelta(microseconds=us)


def loads(text: str | None) -> Any:
    """A JSON column's value; None when absent or not JSON."""
    if text is None:
        return None
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError:
        return None


def parsed(record: dict[str, Any]) -> dict[str, Any]:
    """A whole record (``ts`` in µs) with its JSON columns parsed (one that is not JSON: as
    text)."""
    out = dict(record)
    out["ts"] = moment(record["ts"])
    for name in _JSON_COLUMNS:
        value = loads(out.get(name))
        out[name] = out.get(name) if value is None else value
    return out


def exchange_row(r: tuple[Any, ...]) -> ExchangeRow:
    """A row of ``queries._ROW_COLUMNS`` as a line of the table."""
    request, response = loads(r[8]), loads(r[9])
    model = _field(response, "model") or _field(request, "model")
    answer = answer_of(response) or (r[10] or "")
    return ExchangeRow(
        request_id=r[0], ts=moment(r[1]), task=r[2], backend=r[3], route=r[4], status=r[5],
        complete=r[6], latency_ms=r[7], model=model, prompt=last_user(request)[:CUT],
        answer=answer[:CUT], why=r[11],
    )  # fmt: skip


def _field(obj: Any, name: str) -> str | None:
    value = obj.get(name) if isinstance(obj, dict) else None
    return value if isinstance(value, str) else None


def last_user(request: Any) -> str:
    """The last user message's text (a completions request: its prompt)."""
    if not isinstance(request, dict):
        return ""
    messages = request.get("messages")
    if isinstance(messages, list):
        users = [m for m in messages if isinstance(m, dict) and m.get("role") == "user"]
        return content_text(users[-1].get("content")) if users else ""
    prompt = request.get("prompt")
    return prompt if isinstance(prompt, str) else ""


def prompt_of(request: Any) -> str:
    """What the user said, every turn (``core.text.prompt_text``)."""
    if isinstance(request, dict) and isinstance(request.get("messages"), list):
        return prompt_text(request["messages"])
    return last_user(request)


def answer_of(response: Any) -> str:
    """A completion's text, else its tool calls (canonical JSON), else a legacy completion's
    ``choices[0].text``; empty for anything else."""
    if not isinstance(response, dict):
        return ""
    text = answer_text(response) or tool_calls_text(response)
    if text:
        return text
    choices = response.get("choices")
    first = choices[0] if isinstance(choices, list) and choices else None
    legacy = first.get("text") if isinstance(first, dict) else None
    return legacy if isinstance(legacy, str) else ""


def pair_row(r: tuple[Any, ...]) -> PairRow:
    detail = loads(r[10])
    return PairRow(r[0], moment(r[1]), r[2], r[3], r[4], r[5], r[6], r[7], r[8], r[9],
                   detail if isinstance(detail, dict) else {})  # fmt: skip


def build_pairs(anchors: Iterable[PairRow], found: list[PairRow]) -> list[tuple[str, Pair]]:
    """``(anchor id, pair)`` of shadow and fallback records, ``found`` holding their teachers
    (the client's exchange or a referee's) and the hybrid answers a fallback may replace."""
    by_id = {r.request_id: r for r in found}
    referees = {r.shadow_of: r for r in found if r.route == "referee"}
    rejected = [r for r in found if r.route == "hybrid"]
    out = []
    for a in anchors:
        if a.route == "fallback":
            student = _rejected_by(a, rejected)
            out.append((a.request_id, _pair(student or a, a.request_id, a, student, a.detail)))
            continue
        client = by_id.get(a.shadow_of or "")
        teacher = client if client and client.backend == "teacher" else referees.get(a.shadow_of)
        out.append((a.request_id, _pair(a, a.shadow_of or "", teacher, a, a.detail)))
    return out


def _rejected_by(fallback: PairRow, rejected: list[PairRow]) -> PairRow | None:
    """The student's answer a check-failed fallback replaced: same task and request, before."""
    if fallback.detail.get("why") != "check_failed":
        return None
    before = [r for r in rejected if r.task == fallback.task and r.request == fallback.request
              and r.ts <= fallback.ts]  # fmt: skip
    return max(before, key=lambda r: r.ts) if before else None


def _pair(
    own: PairRow,
    client_id: str,
    teacher: PairRow | None,
    student: PairRow | None,
    detail: dict[str, Any],
) -> Pair:
    why = detail.get("why")
    if own.route == "hybrid":  # the answer a check-failed fallback replaced
        kind, detail = "check_failed", own.detail
    elif own.route == "fallback":
        kind = "check_failed" if why == "check_failed" else "fallback"
    else:
        kind = "challenge" if why == "challenge" else "shadow"
    agreement = detail.get("agreement")
    overall = agreement.get("overall") if isinstance(agreement, dict) else None
    judged, role = detail.get("judged"), detail.get("role")
    return Pair(
        id=own.request_id, client_request_id=client_id, ts=own.ts, task=own.task,
        adapter=own.adapter, kind=kind,
        agreement=float(overall) if isinstance(overall, int | float) else None,
        checks=own.checks, prompt=prompt_of(loads(own.request)),
        teacher=_text(teacher), student=_text(student),
        role=role if isinstance(role, str) else None,
        judged=judged if isinstance(judged, dict) else None,
    )  # fmt: skip


def _text(row: PairRow | None) -> str:
    """A record's answer; its error when it has none."""
    if row is None:
        return ""
    return answer_of(loads(row.response)) or (row.error or "")
