"""The student server's HTTP surface: the FastAPI app, its lifespan, one error boundary.

The lifespan loads the base model off the event loop, starts the engine's thread, and on
shutdown stops it (ending a running batch early) and drops a temporary adapter cache. Every
``StudentError`` and every unreadable request body is answered in LoRAX's error shape.

``StudentServer`` is uvicorn with one change: shutting down ends the generations under way
before it waits for open requests, so the process exits in seconds, not at the end of its
grace period; the lifespan's close stays as the backstop.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import uvicorn
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.responses import JSONResponse, Response

from trainer.serve import native, openai_route
from trainer.serve.errors import InvalidInput, StudentError
from trainer.serve.settings import StudentSettings
from trainer.serve.student import Student


def create_app(settings: StudentSettings) -> FastAPI:
    """The app; the model loads when it starts (uvicorn's lifespan), not here."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        student = await asyncio.to_thread(Student.load, settings)
        student.start()
        app.state.student = student
        try:
            yield
        finally:
            await student.aclose()

    app = FastAPI(title="Protégé student", lifespan=lifespan, docs_url=None, redoc_url=None)
    app.include_router(native.router)
    app.include_router(openai_route.router)
    app.add_exception_handler(StudentError, _student_error)
    app.add_exception_handler(RequestValidationError, _invalid_body)
    return app


class StudentServer(uvicorn.Server):
    """uvicorn serving the student app, ending its generations as soon as shutdown begins.

    uvicorn waits for open requests (up to ``timeout_graceful_shutdown``) before the lifespan's
    shutdown stops the engine, so long generations would hold the process until the grace
    period runs out and uvicorn cancels them. Here the engine stops first: running and waiting
    requests answer ``IncompleteGeneration`` ("the server is shutting down"; an error event
    ends a stream), and uvicorn then waits only for those answers to go out.
    """

    def __init__(self, app: FastAPI, **options: Any) -> None:
        super().__init__(uvicorn.Config(app, **options))
        self._app = app

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        student: Student | None = getattr(self._app.state, "student", None)
        if student is not None:
            await student.stop()
        await super().shutdown(sockets)


async def _student_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, StudentError)
    return JSONResponse(exc.body(), status_code=exc.status)


async def _invalid_body(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    first = exc.errors()[0] if exc.errors() else {"msg": "invalid body"}
    where = ".".join(str(part) for part in first.get("loc", ()) if part != "body")
    if first.get("type") == "json_invalid" or not where:
        error = InvalidInput(str(first.get("msg")))
    else:
        error = InvalidInput(f"{where}: {first.get('msg')}")
    return JSONResponse(error.body(), status_code=error.status)
