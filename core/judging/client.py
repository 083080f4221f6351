"""The judge client: asks an OpenAI-compatible judge about many answers, within bounds.

``Judge.judge_many(criterion, items)`` returns one ``Judgement`` per item, in order:

    pass | fail     the judge's verdict (``cached`` when the store already held it)
    error          the judge could not be asked, or its answer was not a strict verdict
                   (``reason`` says why, ``raw`` keeps what it sent); never cached
    skipped        the run's budget was spent before the item was sent (``reason`` "budget")

Bounds, all per ``Judge`` (one run): at most ``max_concurrency`` calls in flight, call starts
(retries too) at most ``max_calls_per_s`` apart, and a ``budget`` of calls and tokens. Only a
failed connect, a 429 or a 5xx is retried, at most ``max_retries`` times with doubling backoff
(a 429's ``retry-after`` is honoured, capped at ``retry_max_s``); anything else is the item's
error. One ``httpx.AsyncClient`` with explicit timeouts serves every call. Transport errors
become ``JudgeError`` in ``_post``, and a ``JudgeError`` becomes an item's error in
``_judge_one``: nothing a judge does crashes a batch.

Verdicts are cached in the store (``core.judging.cache``): a run loads a criterion version's
parts once, and writes its new verdicts as a part at least every ``flush_every`` and at the end
of each batch. The trainer is not async: ``judge_batches`` runs batches under ``asyncio.run``.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

import httpx
import orjson
import structlog

from core.errors import JudgeError
from core.judging import cache
from core.judging.config import Criterion, Endpoint, JudgesConfig, JudgeSettings
from core.judging.limits import Budget, Pacer, Retry, paced, retry_after_s, transient
from core.judging.prompts import (
    JudgeItem,
    cache_key,
    missing,
    parse_verdict,
    request_body,
    user_message,
    version,
)
from core.keys import judgements_prefix
from core.store import Store, open_store

log = structlog.get_logger("judging")
Outcome = Literal["pass", "fail", "error", "skipped"]
_RAW_MAX = 4000  # characters of a judge's answer kept with an error


@dataclass(frozen=True)
class Judgement:
    """One item's judgement (the module docstring lists the verdicts)."""

    verdict: Outcome
    reason: str
    cached: bool = False
    raw: str = ""
    key: str = ""
    tokens: int = 0


@dataclass
class JudgeStats:
    """What a run asked and spent. The gateway will export it as

        protege_judge_calls_total{task,criterion,outcome}   ``calls`` (outcome pass|fail|error)
        protege_judge_tokens_total                         ``prompt_tokens + completion_tokens``
        protege_judge_cost_total                           ``cost`` (price_per_1k_tokens based)
    """

    calls: Counter[tuple[str, str, str]] = field(default_factory=Counter)
    attempts: int = 0  # HTTP requests, retries included
    retries: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost: float = 0.0
    cached: int = 0
    skipped: int = 0

    @property
    def tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    @property
    def total_calls(self) -> int:
        return sum(self.calls.values())


@dataclass(frozen=True)
class _Answer:
    text: str
    prompt_tokens: int
    completion_tokens: int


class Judge:
    """A run of judgements against one endpoint, sharing its bounds, budget and cache.

    Use as ``async with Judge(config, endpoint, store) as judge``; ``store`` None judges
    without a cache (nothing read, nothing written)."""

    def __init__(
        self,
        config: JudgesConfig,
        endpoint: Endpoint,
        store: Store | None,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        budget_period_s: float | None = None,
    ) -> None:
        """``budget_period_s``: the budget renews every so many seconds (a long-running
        judge's); None: one budget for the run."""
        self.config = config
        self.endpoint = endpoint
        self.store = store
        self.stats = JudgeStats()
        self.budget = Budget(config.budget.calls, config.budget.tokens, period_s=budget_period_s)
        self._pacer = Pacer(config.max_calls_per_s)
        self._slots = asyncio.Semaphore(config.max_concurrency)
        self._clock, self._sleep = clock, sleep
        self._caches: dict[str, tuple[dict[str, cache.Cached], bool]] = {}
        self._unsaved: dict[str, list[cache.Verdict]] = {}
        self._client: httpx.AsyncClient | None = None

    async def __aenter__(self) -> Judge:
        headers = {"Content-Type": "application/json"}
        if self.endpoint.api_key is not None:
            headers["Authorization"] = f"Bearer {self.endpoint.api_key.get_secret_value()}"
        timeout = httpx.Timeout(
            self.endpoint.read_timeout_s, connect=self.endpoint.connect_timeout_s
        )
        limits = httpx.Limits(max_connections=self.config.max_concurrency)
        self._client = httpx.AsyncClient(
            base_url=self.endpoint.base_url, headers=headers, timeout=timeout, limits=limits
        )
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    async def judge_many(
        self, criterion: Criterion, items: Sequence[JudgeItem], *, reasons: bool = False
    ) -> list[Judgement]:
        """One judgement per item of ``items``, in order; cached reasons too when ``reasons``."""
        criterion_version = version(criterion)
        prefix = judgements_prefix(criterion.task, criterion.name, criterion_version)
        known = await self._cache(prefix, reasons)
        out: list[Judgement | None] = [None] * len(items)
        todo: dict[str, tuple[str, list[int]]] = {}  # key -> (user message, item indexes)
        for i, item in enumerate(items):
            lacking = missing(criterion, item)
            if lacking is not None:
                out[i] = Judgement("error", lacking)
                continue
            user = user_message(criterion, item)
            key = cache_key(criterion_version, user)
            if key in known:
                hit = known[key]
                out[i] = Judgement(hit.verdict, hit.reason, cached=True, key=key)
                self.stats.cached += 1
            else:
                todo.setdefault(key, (user, []))[1].append(i)
        try:
            async with asyncio.TaskGroup() as group:
                tasks = {
                    key: group.create_task(self._judge_one(criterion, prefix, key, user))
                    for key, (user, _) in todo.items()
                }
        finally:
            await self._flush(prefix)
        for key, (_, indexes) in todo.items():
            judgement = tasks[key].result()
            # Without a store nothing is remembered either: a long-lived judge (the gateway's)
            # would otherwise grow without bound.
            if self.store is not None and judgement.verdict in ("pass", "fail"):
                known[key] = cache.Cached(judgement.verdict, judgement.reason if reasons else "")
            for i in indexes:
                out[i] = judgement
        return [j for j in out if j is not None]

    async def _cache(self, prefix: str, reasons: bool) -> dict[str, cache.Cached]:
        """The verdicts stored under ``prefix``, loaded once a run (again if reasons are now
        wanted and were not loaded)."""
        held = self._caches.get(prefix)
        if held is not None and (held[1] or not reasons):
            return held[0]
        loaded = {} if self.store is None else await cache.load(self.store, prefix, reasons=reasons)
        self._caches[prefix] = (loaded, reasons)
        return loaded

    async def _judge_one(self, criterion: Criterion, prefix: str, key: str, user: str) -> Judgement:
        async with self._slots:
            if not self.budget.take(self._clock()):
                if not self.stats.skipped:
                    log.warning("judge budget spent: the rest is skipped", task=criterion.task,
                                criterion=criterion.name, calls=self.budget.calls_used,
                                tokens=self.budget.tokens_used)  # fmt: skip
                self.stats.skipped += 1
                return Judgement("skipped", "budget", key=key)
            try:
                answer = await self._ask(request_body(criterion, user))
            except JudgeError as exc:
                self._count(criterion, "error")
                return Judgement("error", str(exc), raw=exc.raw[:_RAW_MAX], key=key)
        tokens = answer.prompt_tokens + answer.completion_tokens
        parsed = parse_verdict(answer.text)
        if parsed.verdict is None:
            self._count(criterion, "error")
            reason = parsed.problem or "unreadable verdict"
            return Judgement("error", reason, raw=answer.text[:_RAW_MAX], key=key, tokens=tokens)
        self._count(criterion, parsed.verdict)
        self._unsaved.setdefault(prefix, []).append(
            cache.Verdict(key, parsed.verdict, parsed.reason, answer.text, criterion.model,
                          tokens, datetime.now(UTC))
        )  # fmt: skip
        if len(self._unsaved[prefix]) >= self.config.flush_every:
            await self._flush(prefix)
        return Judgement(parsed.verdict, parsed.reason, raw=answer.text, key=key, tokens=tokens)

    def _count(self, criterion: Criterion, outcome: str) -> None:
        self.stats.calls[(criterion.task, criterion.name, outcome)] += 1

    async def _flush(self, prefix: str) -> None:
        """Write the verdicts not yet stored under ``prefix`` as one new part."""
        batch = self._unsaved.pop(prefix, [])
        if batch and self.store is not None:
            await cache.write(self.store, prefix, batch)

    async def _ask(self, body: dict[str, Any]) -> _Answer:
        """The judge's answer to ``body``, retried on a failed connect, a 429 or a 5xx."""
        payload = orjson.dumps(body)
        try:
            return await paced(
                lambda: self._post(payload), pacer=self._pacer, clock=self._clock,
                sleep=self._sleep, retries=self.config.max_retries, backoff_s=self._backoff,
                retried=self._retried,
            )  # fmt: skip
        except _Retryable as exc:
            attempts = self.config.max_retries + 1
            raise JudgeError(f"{exc} (after {attempts} attempts)", exc.raw) from exc

    def _retried(self) -> None:
        self.stats.retries += 1

    def _backoff(self, attempt: int, retry_after: float | None) -> float:
        return backoff(attempt, self.config.retry_base_s, self.config.retry_max_s, retry_after,
                       random.random())  # fmt: skip

    async def _post(self, payload: bytes) -> _Answer:
        """One HTTP call; the one place httpx errors become ours."""
        assert self._client is not None, "use Judge as an async context manager"
        self.stats.attempts += 1
        try:
            resp = await self._client.post("/chat/completions", content=payload)
        except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
            raise _Retryable(f"cannot reach the judge: {exc!r}") from exc
        except httpx.TimeoutException as exc:
            raise JudgeError(f"the judge timed out: {exc!r}") from exc
        except httpx.HTTPError as exc:
            raise JudgeError(f"the judge call failed: {exc!r}") from exc
        if transient(resp.status_code):
            after = retry_after_s(resp.headers.get("retry-after"))
            raise _Retryable(f"the judge answered HTTP {resp.status_code}", resp.text, after)
        if resp.status_code != 200:
            raise JudgeError(f"the judge answered HTTP {resp.status_code}", resp.text)
        return self._answer(resp.text)

    def _answer(self, text: str) -> _Answer:
        try:
            data = orjson.loads(text)
            content = data["choices"][0]["message"]["content"]
            usage = data.get("usage") or {}
        except (orjson.JSONDecodeError, KeyError, IndexError, TypeError) as exc:
            raise JudgeError("the judge's response is not a chat completion", text) from exc
        if not isinstance(content, str):
            raise JudgeError("the judge's answer has no text", text)
        prompt = _count_of(usage, "prompt_tokens")
        completion = _count_of(usage, "completion_tokens")
        self.stats.prompt_tokens += prompt
        self.stats.completion_tokens += completion
        self.stats.cost += (prompt + completion) / 1000 * self.config.price_per_1k_tokens
        self.budget.spend(prompt + completion)
        return _Answer(content, prompt, completion)


class _Retryable(Retry):
    def __init__(self, message: str, raw: str = "", retry_after: float | None = None) -> None:
        super().__init__(message, retry_after)
        self.raw = raw


def backoff(attempt: int, base: float, cap: float, retry_after: float | None, rand: float) -> float:
    """Seconds before retry ``attempt + 1``: the server's ``retry_after`` (capped), else
    ``base`` doubled per attempt, capped, with jitter (``rand`` in [0, 1))."""
    if retry_after is not None:
        return min(cap, max(0.0, retry_after))
    return min(cap, base * 2.0**attempt) * (0.5 + rand / 2)


def _count_of(usage: Mapping[str, Any], name: str) -> int:
    value = usage.get(name) if isinstance(usage, Mapping) else None
    return value if isinstance(value, int) and value >= 0 else 0


@asynccontextmanager
async def opened(
    settings: JudgeSettings, env: Mapping[str, str] | None = None
) -> AsyncIterator[Judge]:
    """A ``Judge`` configured by ``settings``, caching in its store."""
    async with open_store(settings.store) as store, Judge(
        settings.judges, settings.endpoint(env), store
    ) as judge:
        yield judge


@dataclass(frozen=True)
class Batches:
    """What ``judge_batches`` returns: one list of judgements per batch, and the run's stats."""

    judgements: list[list[Judgement]]
    stats: JudgeStats


def judge_batches(
    settings: JudgeSettings,
    batches: Sequence[tuple[Criterion, Sequence[JudgeItem]]],
    *,
    reasons: bool = False,
    env: Mapping[str, str] | None = None,
) -> Batches:
    """Judge ``batches`` (criterion, items) in one run, for callers that are not async (the
    trainer): one budget, one client, one event loop for all of them."""

    async def run() -> Batches:
        async with opened(settings, env) as judge:
            out = [await judge.judge_many(c, items, reasons=reasons) for c, items in batches]
            return Batches(out, judge.stats)

    return asyncio.run(run())
