"""A whole (non-streaming) answer is generated only while its client still waits for it.

uvicorn does not cancel a handler whose client has gone: a request without ``max_new_tokens``
would go on generating for nobody, holding the engine and the cores. ``answer_while_connected``
waits for the job's answer and for the client's ``http.disconnect`` (what ASGI ``receive``
gives once the body has been read) together; when the client goes first, the job is
cancelled and the engine stops its row at the next step, or drops it from the queue.
Streams have the same from Starlette's ``StreamingResponse`` (``trainer.serve.streaming``).
"""

from __future__ import annotations

import asyncio

from starlette.requests import Request

from trainer.serve.engine import Job
from trainer.serve.errors import IncompleteGeneration
from trainer.serve.results import Answer


async def answer_while_connected(job: Job, request: Request) -> Answer:
    """``job``'s answer; ``IncompleteGeneration`` (told to nobody) if the client leaves first."""
    answer = asyncio.ensure_future(job.answer())
    gone = asyncio.ensure_future(disconnected(request))
    try:
        await asyncio.wait((answer, gone), return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiter in (answer, gone):
            waiter.cancel()
        await asyncio.gather(answer, gone, return_exceptions=True)
    if answer.cancelled():
        job.cancel()
        raise IncompleteGeneration("the client went away")
    return answer.result()  # or the job's error


async def disconnected(request: Request) -> None:
    """Return when the client has disconnected (the request's body must have been read)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass
