"""The OpenAI route as LoRAX serves it: ``POST /v1/chat/completions`` and ``GET /v1/models``.

``model`` picks the adapter (``<task>/<version>``); the base model's id or "" is the base.
The messages go through the base model's chat template exactly as in training
(``trainer.batches.prompt_ids``). The answer follows LoRAX, quirks included: ``id`` "null",
``object`` "text_completion" on the JSON answer, stream chunks with ``created`` 0 and
``model`` "null", usage on the last chunk, then ``data: [DONE]``; a stop sequence is reported
as ``content_filter`` (LoRAX's mapping). Without ``temperature`` a request samples (at 1.0),
with ``temperature`` 0 it is greedy. ``response_format`` holds the answer to JSON, in LoRAX's
form (``json_object`` with an optional ``schema``) or OpenAI's (``json_schema`` with
``json_schema.schema``; see ``trainer.serve.protocol``). ``stream_options`` is accepted and
ignored. A request whose client goes away is cancelled (``trainer.serve.disconnect``).
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Iterable
from typing import Any, Final

from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict, Field
from starlette.responses import JSONResponse, Response

from trainer.serve.disconnect import answer_while_connected
from trainer.serve.engine import Job
from trainer.serve.errors import InvalidInput
from trainer.serve.native import answer_headers, student_of
from trainer.serve.protocol import MAX_SEED, Parameters
from trainer.serve.results import Answer, Event
from trainer.serve.streaming import sse_response
from trainer.serve.student import package_version

router = APIRouter()

FINISH: Final = {"eos_token": "stop", "length": "length", "stop_sequence": "content_filter"}


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow")

    role: str
    content: str | list[dict[str, Any]] | None = None


class ChatRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")

    model: str = ""
    messages: list[ChatMessage] = Field(min_length=1)
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    n: int | None = Field(default=None, ge=0)
    max_tokens: int | None = Field(default=None, ge=0)
    max_completion_tokens: int | None = Field(default=None, ge=0)
    stop: str | list[str] | None = None
    stream: bool = False
    seed: int | None = Field(default=None, ge=0, le=MAX_SEED)
    repetition_penalty: float | None = None
    ignore_eos_token: bool | None = None
    tools: list[Any] | None = None
    response_format: dict[str, Any] | None = None


def chat_parameters(req: ChatRequest, base_model_id: str) -> Parameters:
    """The generation parameters LoRAX derives from a chat request."""
    if req.tools:
        raise InvalidInput("`tools` are not supported by this server")
    greedy = req.temperature == 0
    return Parameters(
        adapter_id=None if req.model in ("", base_model_id) else req.model,
        best_of=req.n,
        temperature=None if greedy else req.temperature,
        do_sample=not greedy,
        top_p=req.top_p,
        top_k=req.top_k,
        repetition_penalty=req.repetition_penalty,
        max_new_tokens=req.max_tokens if req.max_tokens is not None else req.max_completion_tokens,
        ignore_eos_token=bool(req.ignore_eos_token),
        stop=[req.stop] if isinstance(req.stop, str) else list(req.stop or []),
        seed=req.seed,
        details=True,
        response_format=req.response_format,
    )


def _usage(answer: Answer) -> dict[str, int]:
    return {
        "prompt_tokens": answer.prompt_tokens,
        "completion_tokens": answer.generated_tokens,
        "total_tokens": answer.prompt_tokens + answer.generated_tokens,
    }


def completion_body(answer: Answer, model: str) -> dict[str, Any]:
    """LoRAX's ``ChatCompletionResponse``."""
    return {
        "id": "null",
        "object": "text_completion",
        "created": int(time.time()),
        "model": model,
        "system_fingerprint": package_version(),
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": answer.text},
                "finish_reason": FINISH[answer.finish_reason],
            }
        ],
        "usage": _usage(answer),
    }


def chunk_body(event: Event) -> dict[str, Any]:
    """LoRAX's ``ChatCompletionStreamResponse`` for one token event."""
    token = event.token
    content = "" if token.special else token.text
    delta: dict[str, Any] = {"role": "assistant", "content": content}
    finish = None
    if isinstance(event, Answer):
        finish = FINISH[event.finish_reason]
        if finish == "stop" and not content:
            delta = {}
    chunk: dict[str, Any] = {
        "id": "null",
        "object": "chat.completion.chunk",
        "created": 0,
        "model": "null",
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
    }
    if isinstance(event, Answer):
        chunk["usage"] = _usage(event)
    return chunk


def _render(event: Event) -> Iterable[dict[str, Any]]:
    return [chunk_body(event)]


@router.post("/v1/chat/completions")
async def chat_completions(req: ChatRequest, request: Request) -> Response:
    student = student_of(request)
    params = chat_parameters(req, student.model_id)
    ids = student.encode_chat([m.model_dump() for m in req.messages])  # template errors: 422

    def start() -> Awaitable[Job]:
        return student.submit(params, ids, stream=req.stream)

    if req.stream:
        headers = answer_headers(student, params, None)
        return sse_response(start, _render, done="[DONE]", headers=headers)
    answer = await answer_while_connected(await start(), request)
    return JSONResponse(
        completion_body(answer, req.model), headers=answer_headers(student, params, answer)
    )


@router.get("/v1/models")
async def models(request: Request) -> Response:
    """The base model and every published adapter, as OpenAI model objects."""
    student = student_of(request)
    ids = [student.model_id, *await student.adapters()]
    data = [{"id": i, "object": "model", "created": 0, "owned_by": "protege"} for i in ids]
    return JSONResponse({"object": "list", "data": data})
