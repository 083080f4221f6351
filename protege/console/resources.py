"""What every page handler uses, made once in the app's lifespan and closed on shutdown: the
settings, the store (``core.store``, async), the data layer's catalog (DuckDB, blocking: only
ever called through ``query``, off the event loop), the gateway's admin API, the templates.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from jinja2 import Environment
from starlette.requests import Request

from core.store import Store
from protege.console.gateway_api import GatewayAdmin
from protege.console.settings import ConsoleSettings

T = TypeVar("T")


@dataclass
class Console:
    settings: ConsoleSettings
    store: Store
    catalog: Any  # protege.console.queries.Catalog
    admin: GatewayAdmin
    templates: Environment

    async def query(self, call: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """``call(*args, **kwargs)`` on a worker thread (it blocks: DuckDB over Parquet; the
        catalog is thread-safe)."""
        return await asyncio.to_thread(call, *args, **kwargs)


def console(request: Request) -> Console:
    found: Console = request.app.state.console
    return found
