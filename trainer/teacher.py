"""Asking the teacher again: samples of its answers to logged requests, within bounds.

``Teacher.samples(body, k)`` sends ``body`` (a chat-completions request) ``k`` times and returns
one ``Sample`` per call, in order: its text, or why there is none (``error``; ``budget`` when
the run's ``max_calls`` were spent before it was sent). Nothing a call does crashes a run.

Bounds, all per ``Teacher`` (one run), as the judge client's (``core.judging``, whose pacer,
budget and backoff it reuses): at most ``max_concurrency`` calls in flight, call starts
(retries too) at most ``max_calls_per_s`` apart, at most ``max_calls`` calls. Only a failed
connect, a 429 or a 5xx is retried, at most ``max_retries`` times with doubling backoff (a 429's
``retry-after`` honoured, capped). One ``httpx.AsyncClient`` with explicit timeouts serves every
call; ``_post`` is the one place httpx errors become ours (``_CallFailed``), and ``_sample`` the
one place those become a sample's error.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Final

import httpx
import orjson
from pydantic import SecretStr

from core.judging.client import backoff
from core.judging.limits import Budget, Pacer, Retry, paced, retry_after_s, transient
from core.text import content_text
from trainer.settings import RelabelConfig

BUDGET: Final = "budget"  # the error of a sample not sent: the run's calls were spent
_UNLIMITED_TOKENS: Final = 2**62


@dataclass(frozen=True)
class Sample:
    """One answer of the teacher: ``text``, or ``error`` saying why there is none."""

    text: str | None
    error: str | None = None


@dataclass
class TeacherStats:
    calls: int = 0  # samples asked (retries not counted)
    attempts: int = 0  # HTTP requests, retries included
    retries: int = 0
    errors: int = 0
    skipped: int = 0  # not sent: budget
    prompt_tokens: int = 0
    completion_tokens: int = 0


class _CallFailed(Exception):
    """A teacher call that failed for good (not worth retrying, or retried enough)."""


class Teacher:
    """A run of teacher calls against one endpoint: ``async with Teacher(...) as teacher``."""

    def __init__(
        self,
        base_url: str,
        api_key: SecretStr | None,
        config: RelabelConfig,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.api_key = api_key
        self.config = config
        self.stats = TeacherStats()
        self.budget = Budget(config.max_calls, _UNLIMITED_TOKENS)
        self._pacer = Pacer(config.max_calls_per_s)
        self._slots = asyncio.Semaphore(config.max_concurrency)
        self._clock, self._sleep = clock, sleep
        self._client: httpx.AsyncClient | None = None

    async def __aenter__(self) -> Teacher:
        headers = {"Content-Type": "application/json"}
        if self.api_key is not None:
            headers["Authorization"] = f"Bearer {self.api_key.get_secret_value()}"
        timeout = httpx.Timeout(self.config.read_timeout_s, connect=self.config.connect_timeout_s)
        limits = httpx.Limits(max_connections=self.config.max_concurrency)
        self._client = httpx.AsyncClient(
            base_url=self.base_url, headers=headers, timeout=timeout, limits=limits
        )
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    async def samples(self, body: dict[str, Any], k: int) -> list[Sample]:
        """``k`` answers of the teacher to ``body``, in order."""
        payload = orjson.dumps(body)
        return list(await asyncio.gather(*(self._sample(payload) for _ in range(k))))

    async def _sample(self, payload: bytes) -> Sample:
        async with self._slots:
            if not self.budget.take():
                self.stats.skipped += 1
                return Sample(None, BUDGET)
            self.stats.calls += 1
            try:
                return Sample(await self._ask(payload))
            except _CallFailed as exc:
                self.stats.errors += 1
                return Sample(None, str(exc))

    async def _ask(self, payload: bytes) -> str:
        """The teacher's answer text, retried on a failed connect, a 429 or a 5xx."""
        try:
            return await paced(
                lambda: self._post(payload), pacer=self._pacer, clock=self._clock,
                sleep=self._sleep, retries=self.config.max_retries, backoff_s=self._backoff,
                retried=self._retried,
            )  # fmt: skip
        except Retry as exc:
            attempts = self.config.max_retries + 1
            raise _CallFailed(f"{exc} (after {attempts} attempts)") from exc

    def _retried(self) -> None:
        self.stats.retries += 1

    def _backoff(self, attempt: int, after: float | None) -> float:
        c = self.config
        return backoff(attempt, c.retry_base_s, c.retry_max_s, after, random.random())

    async def _post(self, payload: bytes) -> str:
        """One HTTP call; the one place httpx errors become ours."""
        assert self._client is not None, "use Teacher as an async context manager"
        self.stats.attempts += 1
        try:
            resp = await self._client.post("/chat/completions", content=payload)
        except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
            raise Retry(f"cannot reach the teacher: {exc!r}") from exc
        except httpx.HTTPError as exc:
            raise _CallFailed(f"the teacher call failed: {exc!r}") from exc
        if transient(resp.status_code):
            after = retry_after_s(resp.headers.get("retry-after"))
            raise Retry(f"the teacher answered HTTP {resp.status_code}", after)
        if resp.status_code != 200:
            raise _CallFailed(f"the teacher answered HTTP {resp.status_code}: {resp.text[:200]}")
        return self._text(resp.content)

    def _text(self, body: bytes) -> str:
        try:
            data = orjson.loads(body)
            choice = data["choices"][0]
            message = choice["message"]
            usage = data.get("usage") or {}
        except (orjson.JSONDecodeError, KeyError, IndexError, TypeError) as exc:
            raise _CallFailed("the teacher's response is not a chat completion") from exc
        if choice.get("finish_reason") == "length":
            raise _CallFailed("the teacher's answer was cut at max_tokens")
        self.stats.prompt_tokens += _count(usage, "prompt_tokens")
        self.stats.completion_tokens += _count(usage, "completion_tokens")
        return content_text(message.get("content") if isinstance(message, dict) else None)


def _count(usage: Any, name: str) -> int:
    value = usage.get(name) if isinstance(usage, dict) else None
    return value if isinstance(value, int) and value >= 0 else 0
