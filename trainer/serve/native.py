"""LoRAX's native routes: ``/generate``, ``/generate_stream``, ``/``, ``/info``, ``/health``.

``parameters.adapter_id`` names a published adapter, ``<task>/<version>``; none (or "") is
the base model. ``POST /`` answers like ``/generate`` wrapped in a one-element list, or like
``/generate_stream`` when ``stream`` is true (LoRAX's api-inference compatibility route).
A request whose client goes away is cancelled (``trainer.serve.disconnect``).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from fastapi import APIRouter, Request
from starlette.responses import JSONResponse, Response

from trainer.serve.disconnect import answer_while_connected
from trainer.serve.engine import Job
from trainer.serve.protocol import GenerateRequest, Parameters
from trainer.serve.results import Answer, Event
from trainer.serve.streaming import sse_response
from trainer.serve.student import Student

router = APIRouter()


def student_of(request: Request) -> Student:
    student: Student = request.app.state.student
    return student


def details(answer: Answer, p: Parameters) -> dict[str, Any]:
    """The ``details`` object of a complete answer."""
    return {
        "finish_reason": answer.finish_reason,
        "prompt_tokens": answer.prompt_tokens,
        "generated_tokens": answer.generated_tokens,
        "seed": answer.seed,
        "prefill": [t.to_json() for t in answer.prefill] if p.decoder_input_details else [],
        "tokens": [t.to_json() for t in answer.tokens],
    }


def generate_body(answer: Answer, req: GenerateRequest) -> dict[str, Any]:
    """LoRAX's ``GenerateResponse``."""
    p = req.parameters
    text = req.inputs + answer.text if p.return_full_text else answer.text
    body: dict[str, Any] = {"generated_text": text}
    if p.details or p.decoder_input_details:
        body["details"] = details(answer, p)
    return body


def stream_body(event: Event, req: GenerateRequest) -> dict[str, Any]:
    """LoRAX's ``StreamResponse``: a token, and on the last one the text and its details."""
    out: dict[str, Any] = {"token": event.token.to_json(), "generated_text": None, "details": None}
    if isinstance(event, Answer):
        p = req.parameters
        out["generated_text"] = req.inputs + event.text if p.return_full_text else event.text
        if p.details:
            out["details"] = {
                "finish_reason": event.finish_reason,
                "prompt_tokens": event.prompt_tokens,
                "generated_tokens": event.generated_tokens,
                "seed": event.seed,
            }
    return out


def answer_headers(student: Student, p: Parameters, answer: Answer | None) -> dict[str, str]:
    headers = {"x-model-id": student.model_id}
    if p.adapter_id:
        headers["x-adapter-id"] = p.adapter_id
    if answer is not None:
        headers["x-prompt-tokens"] = str(answer.prompt_tokens)
        headers["x-generated-tokens"] = str(answer.generated_tokens)
        headers["x-total-tokens"] = str(answer.prompt_tokens + answer.generated_tokens)
    return headers


async def _submit(student: Student, req: GenerateRequest, *, stream: bool) -> Job:
    return await student.submit(req.parameters, student.encode(req.inputs), stream=stream)


async def _answer(student: Student, req: GenerateRequest, request: Request) -> Answer:
    job = await _submit(student, req, stream=False)
    return await answer_while_connected(job, request)


def _stream(student: Student, req: GenerateRequest) -> Response:
    def render(event: Event) -> Iterable[dict[str, Any]]:
        return [stream_body(event, req)]

    return sse_response(
        lambda: _submit(student, req, stream=True),
        render,
        headers=answer_headers(student, req.parameters, None),
    )


@router.post("/generate")
async def generate(req: GenerateRequest, request: Request) -> Response:
    student = student_of(request)
    answer = await _answer(student, req, request)
    headers = answer_headers(student, req.parameters, answer)
    return JSONResponse(generate_body(answer, req), headers=headers)


@router.post("/generate_stream")
async def generate_stream(req: GenerateRequest, request: Request) -> Response:
    return _stream(student_of(request), req)


@router.post("/")
async def compat_generate(req: GenerateRequest, request: Request) -> Response:
    student = student_of(request)
    if req.stream:
        return _stream(student, req)
    answer = await _answer(student, req, request)
    headers = answer_headers(student, req.parameters, answer)
    return JSONResponse([generate_body(answer, req)], headers=headers)


@router.get("/info")
async def info(request: Request) -> Response:
    return JSONResponse(student_of(request).info())


@router.get("/health")
@router.get("/", include_in_schema=False)
async def health(request: Request) -> Response:
    """200 while the engine runs (LoRAX answers an empty 200); 503 otherwise."""
    if student_of(request).engine.alive:
        return Response(status_code=200)
    return JSONResponse({"error": "unhealthy", "error_type": "healthcheck"}, status_code=503)
