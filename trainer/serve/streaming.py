"""Server-sent events as LoRAX sends them: ``data: {json}`` per event, errors inside the stream.

A streaming request is answered 200 as soon as its body parses; whatever goes wrong after
that (a bad parameter, an unknown adapter, a failed generation) is one ``data:`` event
``{"error", "error_type"}`` that ends the stream. A comment line goes out while a request
waits, so proxies and clients do not time out on a long queue. When the client goes away,
its request is cancelled and its row in the batch stops.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from typing import Any, Final

import orjson
import structlog
from starlette.responses import StreamingResponse

from trainer.serve.engine import Job
from trainer.serve.errors import GenerationFailed, StudentError
from trainer.serve.results import Answer, Event

log = structlog.get_logger("student")

KEEP_ALIVE_S: Final = 15.0
KEEP_ALIVE: Final = b":\n\n"
HEADERS: Final = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}

Render = Callable[[Event], Iterable[Any]]


def data(payload: Any) -> bytes:
    """One SSE event carrying ``payload`` (JSON, or a raw string such as ``[DONE]``)."""
    body = payload.encode() if isinstance(payload, str) else orjson.dumps(payload)
    return b"data: " + body + b"\n\n"


def sse_response(
    start: Callable[[], Awaitable[Job]],
    render: Render,
    *,
    done: str | None = None,
    headers: dict[str, str] | None = None,
) -> StreamingResponse:
    """A 200 event stream of the job ``start`` queues, each event as ``render`` shapes it."""
    return StreamingResponse(
        _events(start, render, done),
        media_type="text/event-stream",
        headers={**HEADERS, **(headers or {})},
    )


async def _events(
    start: Callable[[], Awaitable[Job]], render: Render, done: str | None
) -> AsyncIterator[bytes]:
    job: Job | None = None
    try:
        job = await start()
        while True:
            event = await job.next(KEEP_ALIVE_S)
            if event is None:
                yield KEEP_ALIVE
                continue
            for payload in render(event):
                yield data(payload)
            if isinstance(event, Answer):
                break
        if done is not None:
            yield data(done)
    except StudentError as exc:
        yield data(exc.body())
    except Exception as exc:
        log.exception("stream failed")
        yield data(GenerationFailed(f"{type(exc).__name__}: {exc}").body())
    finally:
        if job is not None:
            job.cancel()
