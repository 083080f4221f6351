"""Judged shadow agreement: an LLM judge says whether the student's shadow answer is as good as
the teacher's, for tasks whose character agreement would mislead (free text).

A task is judged when its ``judges.tasks.<task>.pairwise`` is on (the built-in criterion
``as-good-as-teacher``, ``core.judging``). Of its shadow pairs whose teacher answer completed,
``shadow_percent`` are sampled and at most ``shadow_max_per_s`` a second (a token bucket per
task, per replica) are put on a bounded queue (``rollouts.judge_queue``); ``judge_workers``
tasks take them one at a time and ask the judge, itself bounded by ``judges.max_concurrency``,
``max_calls_per_s`` and its budget. Nothing here is on the request path: the pair is submitted
by the shadow call, which runs in the background after the client was answered. A pair that
finds the queue full is not judged (``dropped``), nor is one over the rate (``limited``).

Where the verdict lands:

    guardrails   pass counts 1, fail 0 in the task's agreement window (``Monitor.judged``), so
                 the agreement ``min_agreement`` judges is pass / (pass + fail); the pair's
                 character agreement is still exported but not judged. error (no strict
                 verdict), skipped (budget), dropped and limited are counted, never scored.
    metrics      ``protege_shadow_judged_total{task,verdict}``, the judge's usage
                 ``protege_judge_calls_total{task,criterion,outcome}``,
                 ``protege_judge_tokens_total{task,criterion}``, ``protege_judge_cost_total{task}``;
                 the window's pass rate ``protege_shadow_judged_pass_rate{task}``.
    the record   the shadow record's ``detail.judged`` = ``{"criterion", "verdict", "reason"}``
                 (reason redacted like the record's text).

The record waits for its verdict. Records are never rewritten once spooled (the sidecar may
have shipped them), and a separate "judgement" record would need a new record kind and a join
in every reader; the shadow record is already background work that nobody waits for, so it
simply waits (at most ``rollouts.judge_wait_s``) before it is captured. Past that it is
written with ``verdict: pending``, and the verdict, when it comes, still counts in the metrics
and the guardrails. The waiting is bounded by the queue: each waiting record is one queued or
in-flight pair. At shutdown the waiting records are written at once (``pending``) before the
shadow work's grace runs out, and pairs still queued or in flight are counted as dropped.

The gateway's judge keeps no store cache: shadow pairs almost never repeat, each flush would
write a Parquet part per judgement, and the verdict is kept in the shadow record anyway. Its
budget (``judges.budget``) renews every ``judges.budget.gateway_period_s`` (an hour by default):
once a period's is spent, pairs are ``skipped`` until the next, so a long-running gateway is
bounded in cost and never stops judging for good. The judge sees the request and both answers
unredacted, as the teacher does: point ``judges.endpoint`` at a host trusted as much.
"""

from __future__ import annotations

import asyncio
import math
import random
import time
from collections.abc import Callable
from contextlib import AsyncExitStack
from dataclasses import dataclass
from typing import Any, Final

import orjson
import structlog

from core.errors import StoreError
from core.judging import (
    PAIRWISE,
    Criterion,
    Judge,
    JudgeItem,
    Judgement,
    JudgesConfig,
    JudgeSettings,
    standing_of,
)
from core.redact import Redactor
from core.store import Store
from gateway.agreement import compared_text
from gateway.config import RolloutSettings
from gateway.metrics import Metrics
from gateway.monitor import Monitor
from gateway.ratelimit import TokenBucket
from gateway.routing import sampled

log = structlog.get_logger("gateway")

# The verdicts counted (a record may also say "pending": its verdict is counted when it comes).
VERDICTS: Final = ("pass", "fail", "error", "skipped", "dropped", "limited")
# Characters of a judge's reason kept in a record.
REASON_CHARS: Final = 500
# Teacher answers up to this size are read on the event loop.
INLINE_BYTES: Final = 16 * 1024


@dataclass(frozen=True, slots=True, eq=False)
class Pair:
    """A shadow pair waiting for the judge; ``verdict`` takes its judgement (None: the gateway
    stopped waiting for it)."""

    criterion: Criterion
    request: Any  # the request body (its messages or prompt are what the judge reads)
    student: dict[str, Any]  # the student's completion
    teacher: bytes  # the teacher's completion as recorded
    verdict: asyncio.Future[Judgement | None]


def item(pair: Pair) -> JudgeItem:
    """What the judge is asked about a pair: the student's answer against the teacher's."""
    try:
        teacher = orjson.loads(pair.teacher)
    except orjson.JSONDecodeError:
        teacher = None
    reference = compared_text(teacher) if isinstance(teacher, dict) else None
    return JudgeItem(compared_text(pair.student), request=pair.request, reference=reference)


def noted(criterion: str, verdict: str, reason: str) -> dict[str, str]:
    """The record's ``detail.judged``."""
    return {"criterion": criterion, "verdict": verdict, "reason": reason[:REASON_CHARS]}


def split(judges: JudgesConfig, share: float) -> JudgesConfig:
    """``judges`` with ``share`` of its call rate, concurrency, budget and shadow rates: what
    each of N workers may spend (``share`` = 1/N), so that the gateway spends what it says."""
    if share == 1:
        return judges
    budget = judges.budget
    tasks = {name: t.model_copy(update={"shadow_max_per_s": t.shadow_max_per_s * share})
             for name, t in judges.tasks.items()}  # fmt: skip
    return judges.model_copy(update={
        "max_calls_per_s": judges.max_calls_per_s * share,
        "max_concurrency": max(1, math.ceil(judges.max_concurrency * share)),
        "budget": budget.model_copy(update={
            "calls": math.floor(budget.calls * share), "tokens": math.floor(budget.tokens * share),
        }),
        "tasks": tasks,
    })  # fmt: skip


class ShadowJudge:
    """Samples, queues and judges shadow pairs; the lifespan starts and stops it."""

    def __init__(
        self,
        settings: JudgeSettings,
        config: RolloutSettings,
        monitor: Monitor,
        metrics: Metrics,
        labels: Callable[[str], str],
        redactor: Redactor,
        clock: Callable[[], float] = time.monotonic,
        rng: Callable[[], float] = random.random,
        share: float = 1.0,
    ) -> None:
        """``share``: this process's part of the judge's rate, concurrency and budget and of
        every ``shadow_max_per_s`` (1/N for each of N workers)."""
        self._settings = settings.model_copy(update={"judges": split(settings.judges, share)})
        self._config = config
        self._monitor = monitor
        self._metrics = metrics
        self._labels = labels
        self._redactor = redactor
        self._clock, self._rng = clock, rng
        self._criteria = {c.task: c for t in settings.judges.tasks for c in settings.criteria(t)
                          if c.name == PAIRWISE}  # fmt: skip
        self._limits: dict[str, TokenBucket] = {}
        self._queue: asyncio.Queue[Pair] = asyncio.Queue(config.judge_queue)
        self._workers: list[asyncio.Task[None]] = []
        self._live: set[Pair] = set()  # queued or being judged
        self._stopping = False
        self._judge: Judge | None = None
        self._exit = AsyncExitStack()
        self._exported: dict[tuple[str, str, str], int] = {}

    def judges(self, task: str) -> bool:
        """Whether ``task``'s shadow agreement is the judge's."""
        return task in self._criteria

    @property
    def queued(self) -> int:
        return self._queue.qsize()

    async def start(self, store: Store | None = None) -> None:
        """Open the judge and start the workers (nothing when no task is judged); with the
        ``store``, say which criteria their calibration does not vouch for."""
        if not self._criteria:
            return
        if store is not None:
            await self._flag(store)
        endpoint = self._settings.endpoint()
        judges = self._settings.judges
        judge = Judge(judges, endpoint, None, budget_period_s=judges.budget.gateway_period_s)
        self._judge = await self._exit.enter_async_context(judge)
        for task in self._criteria:  # at 0, so that rate() sees the first burst
            for verdict in VERDICTS:
                self._metrics.shadow_judged.labels(self._labels(task), verdict)
        for i in range(self._config.judge_workers):
            self._workers.append(asyncio.create_task(self._work(), name=f"shadow-judge-{i}"))
        log.info("judging shadow pairs", tasks=sorted(self._criteria), judge=endpoint.base_url)

    async def _flag(self, store: Store) -> None:
        """Export and log each judged task's calibration standing (never fatal)."""
        for task, criterion in self._criteria.items():
            try:
                found = await standing_of(store, criterion)
            except StoreError as exc:
                log.warning("cannot read a judge's calibration", task=task, error=str(exc))
                continue
            gauge = self._metrics.judge_flagged.labels(self._labels(task), criterion.name)
            gauge.set(1 if found.flagged else 0)
            if found.flagged:
                log.warning("a criterion judging shadow pairs is flagged", task=task,
                            criterion=criterion.name, standing=found.state)  # fmt: skip

    def release(self) -> None:
        """Shutting down: take no more pairs, and let every record waiting for a verdict be
        written now (``pending``) rather than lost when the shutdown grace runs out."""
        self._stopping = True
        for pair in self._live:
            if not pair.verdict.done():
                pair.verdict.set_result(None)

    async def aclose(self) -> None:
        """Stop the workers, count what was left unjudged (dropped), close the judge."""
        self.release()
        for worker in self._workers:
            worker.cancel()
        await asyncio.gather(*self._workers, return_exceptions=True)
        self._workers.clear()
        for pair in self._live:
            self._count(pair.criterion.task, "dropped")
        if self._live:
            log.warning("shadow pairs left unjudged at shutdown", count=len(self._live))
        self._live.clear()
        self._judge = None
        await self._exit.aclose()

    async def verdict(
        self, task: str, request: Any, student: dict[str, Any], teacher: bytes
    ) -> dict[str, str] | None:
        """The shadow record's ``detail.judged`` for this pair, once judged (or its wait is
        over); None when the pair is not sampled."""
        criterion = self._criteria[task]
        if not sampled(self._settings.judges.tasks[task].shadow_percent, self._rng):
            return None
        if not self._limit(task).take(self._clock()):
            self._count(task, "limited")
            return noted(criterion.name, "limited", "over the task's shadow_max_per_s")
        if self._stopping or not self._workers:
            self._count(task, "dropped")
            return noted(criterion.name, "dropped", "the judge is not running")
        future: asyncio.Future[Judgement | None] = asyncio.get_running_loop().create_future()
        pair = Pair(criterion, request, student, teacher, future)
        try:
            self._queue.put_nowait(pair)
        except asyncio.QueueFull:
            self._count(task, "dropped")
            return noted(criterion.name, "dropped", "the judge queue is full")
        self._live.add(pair)
        try:
            async with asyncio.timeout(self._config.judge_wait_s):
                judgement = await asyncio.shield(future)
        except TimeoutError:
            judgement = None
        if judgement is None:
            return noted(criterion.name, "pending", "no verdict yet; counted when it comes")
        return noted(criterion.name, judgement.verdict, self._redactor.text(judgement.reason))

    def _limit(self, task: str) -> TokenBucket:
        bucket = self._limits.get(task)
        if bucket is None:
            rate = self._settings.judges.tasks[task].shadow_max_per_s
            bucket = self._limits[task] = TokenBucket(rate, self._clock())
        return bucket

    async def _work(self) -> None:
        while True:
            pair = await self._queue.get()
            try:
                judgement = await self._ask(pair)
            except Exception as exc:  # a bug here must not stop judging: logged, an error
                log.exception("judging a shadow pair failed", task=pair.criterion.task)
                judgement = Judgement("error", f"the gateway could not judge: {exc!r}")
            self._settle(pair, judgement)

    async def _ask(self, pair: Pair) -> Judgement:
        assert self._judge is not None
        if len(pair.teacher) > INLINE_BYTES:  # reading it costs more than a thread hop
            asked = await asyncio.to_thread(item, pair)
        else:
            asked = item(pair)
        (judgement,) = await self._judge.judge_many(pair.criterion, [asked])
        self._export(pair.criterion, judgement)
        return judgement

    def _settle(self, pair: Pair, judgement: Judgement) -> None:
        """Count the verdict, tell the guardrails, hand it to the waiting record."""
        self._live.discard(pair)
        task = pair.criterion.task
        self._count(task, judgement.verdict)
        if judgement.verdict in ("pass", "fail"):
            self._monitor.judged(task, judgement.verdict == "pass")
        if not pair.verdict.done():
            pair.verdict.set_result(judgement)

    def _count(self, task: str, verdict: str) -> None:
        self._metrics.shadow_judged.labels(self._labels(task), verdict).inc()

    def _export(self, criterion: Criterion, judgement: Judgement) -> None:
        """The judge's usage since the last export, as metrics (its calls by outcome; this
        judgement's tokens and cost)."""
        assert self._judge is not None
        label = self._labels(criterion.task)
        for key, count in self._judge.stats.calls.items():
            new = count - self._exported.get(key, 0)
            if new:
                task, name, outcome = key
                self._metrics.judge_calls.labels(self._labels(task), name, outcome).inc(new)
                self._exported[key] = count
        if judgement.tokens:
            self._metrics.judge_tokens.labels(label, criterion.name).inc(judgement.tokens)
            price = self._settings.judges.price_per_1k_tokens
            self._metrics.judge_cost.labels(label).inc(judgement.tokens / 1000 * price)
