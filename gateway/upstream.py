"""The pooled HTTP clients of one upstream (the teacher, the student server), and the one place
where transport errors become ours.

Clients' requests go through aiohttp (streams, response headers passed on): rather than httpx's
default transport, whose pool degrades under concurrency (hundreds of req/s where aiohttp
sustains thousands on one core). The gateway's own whole-answer calls (shadow calls, hybrid's
checked answers) go through ``gateway.http1``, several times cheaper a call. Only a failed
connect is retried — when the upstream cannot have seen the request.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from typing import TypeVar

import aiohttp

from gateway import http1
from gateway.config import UpstreamConfig
from gateway.errors import UpstreamError, UpstreamFailed, UpstreamTimeout, UpstreamUnreachable
from gateway.metrics import Metrics

_RETRY_BASE_S = 0.05
_T = TypeVar("_T")


class Upstream:
    """An OpenAI-compatible API at ``base_url`` (e.g. ``https://api.openai.com/v1``)."""

    def __init__(
        self,
        name: str,
        base_url: str,
        *,
        api_key: str | None,
        connect_timeout_s: float,
        read_timeout_s: float,
        connect_retries: int,
        max_connections: int,
        metrics: Metrics,
    ) -> None:
        self.name = name
        self.base_url = base_url.rstrip("/")
        self._headers = {"Content-Type": "application/json", "Accept-Encoding": "identity"}
        if api_key:
            self._headers["Authorization"] = f"Bearer {api_key}"
        self._timeout = aiohttp.ClientTimeout(
            total=None, sock_connect=connect_timeout_s, sock_read=read_timeout_s
        )
        self._connect_timeout_s = connect_timeout_s
        self._read_timeout_s = read_timeout_s
        self._retries = connect_retries
        self._max_connections = max_connections
        self._metrics = metrics
        self._session: aiohttp.ClientSession | None = None
        self._pool: http1.Pool | None = None

    @classmethod
    def configured(
        cls, name: str, base_url: str, config: UpstreamConfig, metrics: Metrics
    ) -> Upstream:
        """The upstream ``name`` at ``base_url``, with the timeouts and pool of ``config``."""
        return cls(
            name,
            base_url,
            api_key=config.api_key.get_secret_value() if config.api_key else None,
            connect_timeout_s=config.connect_timeout_s,
            read_timeout_s=config.read_timeout_s,
            connect_retries=config.connect_retries,
            max_connections=config.max_connections,
            metrics=metrics,
        )

    async def start(self) -> None:
        connector = aiohttp.TCPConnector(limit=self._max_connections, ttl_dns_cache=60)
        self._session = aiohttp.ClientSession(
            connector=connector,
            timeout=self._timeout,
            headers=self._headers,
            skip_auto_headers=("User-Agent",),
        )

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None
        if self._pool is not None:
            await self._pool.aclose()
            self._pool = None

    @asynccontextmanager
    async def request(
        self, method: str, path: str, body: bytes | None = None
    ) -> AsyncIterator[aiohttp.ClientResponse]:
        """The upstream's response to ``method path``, headers received, body not yet read.

        Connect failures are retried with exponential backoff and jitter; nothing else is, since
        past the connect the upstream may already be working on the request.
        """
        session = self._session
        if session is None:
            raise RuntimeError(f"upstream {self.name} is not started")
        url = self.base_url + path
        response = await self._retrying(lambda: session.request(method, url, data=body))
        try:
            yield response
        finally:
            response.release()

    async def post(self, path: str, body: bytes) -> http1.Answer:
        """The upstream's whole answer to ``POST path``, for a call of the gateway's own.

        Retried as ``request`` is; a read timeout here is the longest silence, as there.
        """
        if self._session is None:
            raise RuntimeError(f"upstream {self.name} is not started")
        pool = self._pool
        if pool is None:  # made on first use: the teacher's upstream never needs one
            pool = self._pool = http1.Pool(
                self.base_url,
                self._headers,
                connect_timeout_s=self._connect_timeout_s,
                read_timeout_s=self._read_timeout_s,
                max_connections=self._max_connections,
            )
        return await self._retrying(lambda: pool.post(path, body))

    async def _retrying(self, call: Callable[[], Awaitable[_T]]) -> _T:
        """``call()``, again after a failed connect (exponential backoff with jitter)."""
        attempt = 0
        while True:
            try:
                with self.translating():
                    return await call()
            except UpstreamUnreachable as exc:
                if not exc.retryable or attempt >= self._retries:
                    raise
                attempt += 1
                self._metrics.upstream_retries.labels(self.name).inc()
                await asyncio.sleep(_RETRY_BASE_S * 2**attempt * (0.5 + random.random()))

    async def read(self, response: aiohttp.ClientResponse) -> bytes:
        """The whole body of ``response``."""
        with self.translating():
            return await response.read()

    async def iter_chunks(self, response: aiohttp.ClientResponse) -> AsyncIterator[bytes]:
        """The body of ``response`` chunk by chunk, as the bytes arrive."""
        with self.translating():
            async for chunk in response.content.iter_any():
                yield chunk

    @contextmanager
    def translating(self) -> Iterator[None]:
        """Turns aiohttp, ``http1`` and socket errors into ``UpstreamError``s naming this
        upstream."""
        try:
            yield
        except UpstreamError:
            raise
        except http1.BadAnswer as exc:
            self._metrics.upstream_errors.labels(self.name, "connection").inc()
            raise UpstreamFailed(
                f"the {self.name} sent an unreadable answer: {exc}", backend=self.name
            ) from exc
        except (aiohttp.ClientConnectorError, aiohttp.ConnectionTimeoutError,
                http1.ConnectFailed) as exc:  # fmt: skip
            self._metrics.upstream_errors.labels(self.name, "connect").inc()
            raise UpstreamUnreachable(
                f"cannot connect to the {self.name} at {self.base_url}: {exc}",
                backend=self.name,
                retryable=True,
            ) from exc
        except (aiohttp.SocketTimeoutError, TimeoutError, http1.ReadTimeout) as exc:
            self._metrics.upstream_errors.labels(self.name, "timeout").inc()
            raise UpstreamTimeout(
                f"the {self.name} did not answer in time", backend=self.name
            ) from exc
        except (aiohttp.ClientError, OSError, http1.ConnectionBroken) as exc:
            self._metrics.upstream_errors.labels(self.name, "connection").inc()
            raise UpstreamUnreachable(
                f"the connection to the {self.name} broke: {exc.__class__.__name__}",
                backend=self.name,
                code="upstream_disconnected",
            ) from exc
