"""``POST /v1/feedback``: what an application says about an answer, kept like an exchange.

The body names the request judged (``request_id``, the ``x-protege-request-id`` the gateway
answered with) and says at least one of ``score`` (a number), ``label`` (a string) and
``correction`` (the right answer: a string, or any JSON value); ``comment`` and ``feedback_id``
(the client's own id, so that its retries store one feedback) are optional, nothing else is
accepted. The answer, ``{"id", "request_id", "task"}``, goes out only once the record is in the
feedback spool (``core.feedback``), so a gateway killed after answering has lost nothing.
``comment`` and ``correction`` are redacted as logged text is, on the spool writer's thread.

Which task? The request id's task is looked up

1. among the ids this gateway answered lately (``gateway.recent``), else
2. in the store: the exchanges of the hour partitions where that id's record would be
   (``core.read.find_task``: two columns, off the event loop), else
3. nowhere: an id older than ``feedback.unknown_after_s`` (by then every replica's records are
   shipped) is unknown, 404; a newer one may be another replica's request not shipped yet, so
   the feedback is kept with the task ``_unresolved`` and readers join it by ``request_id``.

A store that cannot be read refuses nothing: the feedback is kept unresolved (and logged).
A malformed id, or one dated further ahead than ``unknown_after_s``, is a 400.
"""

from __future__ import annotations

import asyncio
import math
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Final

import orjson
import structlog
from starlette.requests import Request
from starlette.responses import Response

from core.errors import SpoolWriteFailed, StoreError
from core.feedback import FEEDBACK_SCHEMA_VERSION, KINDS, UNRESOLVED
from core.ids import id_time_ms, new_id
from core.read import find_task
from core.redact import Redactor
from gateway.auth import KeyCheck, bearer
from gateway.capture import hash_id
from gateway.config import FeedbackConfig
from gateway.errors import InvalidRequest, NotFound, ServiceUnavailable
from gateway.intake import json_object, read_body
from gateway.metrics import Metrics, TaskLabels
from gateway.recent import RecentRequests
from gateway.spool import SpoolWriter

log = structlog.get_logger("gateway")

_ULID: Final = re.compile(r"^[0-7][0-9A-HJKMNP-TV-Z]{25}$")  # a ULID, Crockford base32
_FIELDS: Final = ("request_id", "score", "label", "correction", "comment", "feedback_id")
_MAX_ID: Final = 128  # characters of a client's feedback id
_MAX_LABEL: Final = 256


@dataclass(frozen=True, slots=True)
class FeedbackBody:
    """A feedback body, checked."""

    request_id: str
    feedback_id: str | None = None
    score: float | None = None
    label: str | None = None
    correction: Any = None  # a string or a JSON value; None: none given
    comment: str | None = None

    @property
    def kinds(self) -> tuple[str, ...]:
        """What it says: score, label, correction."""
        given = (self.score, self.label, self.correction)
        return tuple(k for k, v in zip(KINDS, given, strict=True) if v is not None)


def _text(obj: dict[str, Any], name: str, limit: int | None = None) -> str | None:
    value = obj.get(name)
    if value is None:
        return None
    if not isinstance(value, str) or not value.strip():
        raise InvalidRequest(f"'{name}' must be a non-empty string", param=name)
    if limit is not None and len(value) > limit:
        raise InvalidRequest(f"'{name}' must be at most {limit} characters", param=name)
    return value


def parse_feedback(obj: dict[str, Any]) -> FeedbackBody:
    """The checked body, or an ``InvalidRequest`` naming the field at fault."""
    unknown = [name for name in obj if name not in _FIELDS]
    if unknown:
        raise InvalidRequest(f"unknown parameter: '{unknown[0]}'", param=unknown[0])
    request_id = obj.get("request_id")
    if request_id is None:
        raise InvalidRequest("missing required parameter: 'request_id'", param="request_id")
    if not isinstance(request_id, str) or not _ULID.match(request_id):
        raise InvalidRequest(
            "'request_id' must be a request id the gateway issued (x-protege-request-id)",
            param="request_id",
        )
    score = obj.get("score")
    if score is not None and (
        isinstance(score, bool) or not isinstance(score, int | float) or not math.isfinite(score)
    ):
        raise InvalidRequest("'score' must be a finite number", param="score")
    correction = obj.get("correction")
    if isinstance(correction, str) and not correction.strip():
        raise InvalidRequest("'correction' must not be empty", param="correction")
    body = FeedbackBody(
        request_id=request_id,
        feedback_id=_text(obj, "feedback_id", _MAX_ID),
        score=None if score is None else float(score),
        label=_text(obj, "label", _MAX_LABEL),
        correction=correction,
        comment=_text(obj, "comment"),
    )
    if not body.kinds:
        raise InvalidRequest("give at least one of 'score', 'label' or 'correction'", param="score")
    return body


def resolve(task: str | None, age_s: float, unknown_after_s: float) -> str:
    """The task to store feedback under: ``task`` when known; else ``UNRESOLVED`` while the
    request may be another replica's not yet shipped (``age_s`` within the horizon). An id
    dated more than the horizon ahead is refused (400), an older unknown one is 404."""
    if age_s < -unknown_after_s:
        raise InvalidRequest("'request_id' is dated in the future", param="request_id")
    if task is not None:
        return task
    if age_s > unknown_after_s:
        raise NotFound("unknown request id", param="request_id", code="unknown_request_id")
    return UNRESOLVED


@dataclass(slots=True)
class Feedback:
    """An accepted feedback, as raw as it came: the spool writer encodes (and redacts) it."""

    body: FeedbackBody
    feedback_id: str
    task: str
    ts_us: int
    client: str | None


class FeedbackEncoder:
    """``Feedback -> bytes`` (one JSON record of ``core.feedback.FEEDBACK_SCHEMA``), redacted."""

    def __init__(self, redactor: Redactor) -> None:
        self._redactor = redactor

    def __call__(self, fb: Feedback) -> bytes:
        body, correction = fb.body, fb.body.correction
        text: str | None = None
        if isinstance(correction, str):
            text = self._redactor.text(correction)
        elif correction is not None:
            text = self._redactor.json(orjson.dumps(correction)).decode()
        record = {
            "feedback_id": fb.feedback_id,
            "request_id": body.request_id,
            "schema_version": FEEDBACK_SCHEMA_VERSION,
            "ts": fb.ts_us,
            "task": fb.task,
            "score": body.score,
            "label": body.label,
            "correction": text,
            "correction_json": None if correction is None else not isinstance(correction, str),
            "comment": None if body.comment is None else self._redactor.text(body.comment),
            "client": fb.client,
        }
        return orjson.dumps(record)


class FeedbackDesk:
    """Takes feedback: checks it, finds its task, spools it, answers once it is written."""

    def __init__(
        self,
        config: FeedbackConfig,
        *,
        keys: KeyCheck,
        salt: bytes,
        max_body_bytes: int,
        spool: SpoolWriter[Feedback],
        store_uri: str,
        metrics: Metrics,
        task_labels: TaskLabels,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.recent = RecentRequests(config.recent_requests)
        self._config = config
        self._keys, self._salt, self._limit = keys, salt, max_body_bytes
        self._spool = spool
        self._store_uri = store_uri
        self._metrics, self._labels = metrics, task_labels
        self._clock = clock
        self._lookups = asyncio.Semaphore(config.lookup_concurrency)

    async def accept(self, request: Request) -> Response:
        """Answer one ``POST /v1/feedback``; every refusal is an ``ApiError``."""
        token = bearer(request.headers.get("authorization"))
        self._keys.check(token)
        body = parse_feedback(json_object(await read_body(request, self._limit)))
        now = self._clock()
        age_s = now - id_time_ms(body.request_id) / 1000
        task = self.recent.task(body.request_id)
        if task is None and age_s >= -self._config.unknown_after_s:  # else resolve refuses it
            task = await self._look_up(body.request_id)
        task = resolve(task, age_s, self._config.unknown_after_s)
        feedback_id = body.feedback_id or new_id()
        client = hash_id(token, self._salt) if token else None
        await self._write(Feedback(body, feedback_id, task, int(now * 1_000_000), client))
        label = self._labels(task) if task != UNRESOLVED else UNRESOLVED
        for kind in body.kinds:
            self._metrics.feedback.labels(label, kind).inc()
        answer = {"id": feedback_id, "request_id": body.request_id,
                  "task": None if task == UNRESOLVED else task}  # fmt: skip
        return Response(orjson.dumps(answer), 200, media_type="application/json")

    async def _write(self, fb: Feedback) -> None:
        written = self._spool.submit(fb)
        if written is None:
            raise ServiceUnavailable("the feedback spool is full; try again shortly")
        try:
            await written
        except SpoolWriteFailed as exc:
            raise ServiceUnavailable("the feedback could not be stored; try again") from exc

    async def _look_up(self, request_id: str) -> str | None:
        """The task of ``request_id`` in the store. A store that fails to answer is logged,
        and the id taken as one not shipped yet (``UNRESOLVED``: never refused for it)."""
        issued = datetime.fromtimestamp(id_time_ms(request_id) / 1000, tz=UTC)
        since = issued - timedelta(seconds=1)
        until = issued + timedelta(seconds=self._config.lookup_window_s)
        async with self._lookups:
            try:
                return await asyncio.to_thread(
                    find_task, self._store_uri, request_id, since=since, until=until
                )
            except StoreError as exc:
                log.warning("feedback look-up failed; kept unresolved", error=str(exc),
                            feedback_request_id=request_id)  # fmt: skip
                return UNRESOLVED
