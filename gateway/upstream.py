"""One pooled HTTP client per upstream (the teacher, the student server), and the one place
where transport errors become ours.

aiohttp rather than httpx's default transport: httpx's pool degrades under concurrency
(hundreds of req/s where aiohttp sustains thousands on one core), and we need exact control over
which failures are retried — only a failed connect, when the upstream cannot have seen the
request.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager

import aiohttp

from gateway.config import UpstreamConfig
from gateway.errors import UpstreamError, UpstreamTimeout, UpstreamUnreachable
from gateway.metrics import Metrics

_RETRY_BASE_S = 0.05


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
        self._retries = connect_retries
        self._max_connections = max_connections
        self._metrics = metrics
        self._session: aiohttp.ClientSession | None = None

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

    @asynccontextmanager
    async def request(
        self, method: str, path: str, body: bytes | None = None
    ) -> AsyncIterator[aiohttp.ClientResponse]:
        """The upstream's response to ``method path``, headers received, body not yet read.

        Connect failures are retried with exponential backoff and jitter; nothing else is, since
        past the connect the upstream may already be working on the request.
        """
        if self._session is None:
            raise RuntimeError(f"upstream {self.name} is not started")
        url = self.base_url + path
        attempt = 0
        while True:
            try:
                with self.translating():
                    response = await self._session.request(method, url, data=body)
                break
            except UpstreamUnreachable as exc:
                if not exc.retryable or attempt >= self._retries:
                    raise
                attempt += 1
                self._metrics.upstream_retries.labels(self.name).inc()
                await asyncio.sleep(_RETRY_BASE_S * 2**attempt * (0.5 + random.random()))
        try:
            yield response
        finally:
            response.release()

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
        """Turns aiohttp and socket errors into ``UpstreamError``s naming this upstream."""
        try:
            yield
        except UpstreamError:
            raise
        except (aiohttp.ClientConnectorError, aiohttp.ConnectionTimeoutError) as exc:
            self._metrics.upstream_errors.labels(self.name, "connect").inc()
            raise UpstreamUnreachable(
                f"cannot connect to the {self.name} at {self.base_url}: {exc}",
                backend=self.name,
                retryable=True,
            ) from exc
        except (aiohttp.SocketTimeoutError, TimeoutError) as exc:
            self._metrics.upstream_errors.labels(self.name, "timeout").inc()
            raise UpstreamTimeout(
                f"the {self.name} did not answer in time", backend=self.name
            ) from exc
        except (aiohttp.ClientError, OSError) as exc:
            self._metrics.upstream_errors.labels(self.name, "connection").inc()
            raise UpstreamUnreachable(
                f"the connection to the {self.name} broke: {exc.__class__.__name__}",
                backend=self.name,
                code="upstream_disconnected",
            ) from exc
