"""The demo teacher: an OpenAI-compatible server for the synthetic ticket-routing task.

It is not a language model. It answers every chat completion with ``trainer.synthetic``'s
deterministic teacher (the category whose telltale words the ticket mentions, as JSON), so the
demo's correct answers are known and a student's agreement with it is its accuracy. Asked for
the model ``demo-judge`` (``protege demo --judge``), it is the task's pairwise judge instead:
a student's answer passes when it is the same JSON as the teacher's, and it says why in the
strict verdict format judges answer in. It says so
wherever it can: the model list's ``owned_by``, every answer's ``system_fingerprint`` and its
start-up log line.

    python -m protege.demo_teacher --port 8070      # http://127.0.0.1:8070/v1

Served: ``POST /v1/chat/completions`` (JSON and SSE, with ``stream_options.include_usage``),
``GET /v1/models`` and ``GET /health``.
"""

from __future__ import annotations

import argparse
import asyncio
import re
import time
import uuid
from typing import Any, Final

import orjson
import structlog
from aiohttp import web

from core.text import content_text
from trainer.synthetic import teacher_answer

MODEL: Final = "demo-teacher"
JUDGE_MODEL: Final = "demo-judge"
_TAGGED: Final = re.compile(r"<(teacher_answer|student_answer)>\n(.*?)\n</\1>", re.S)
LABEL: Final = "protege demo teacher: synthetic ticket routing, not an LLM"
FINGERPRINT: Final = "protege-demo-teacher"

log = structlog.get_logger("demo_teacher")


def last_user_text(messages: Any) -> str:
    """The text of the last user message (text parts joined); empty when there is none."""
    if not isinstance(messages, list):
        return ""
    for message in reversed(messages):
        if isinstance(message, dict) and message.get("role") == "user":
            return content_text(message.get("content"))
    return ""


def _tokens(text: str) -> int:
    """A rough token count (four characters a token) for the usage block."""
    return max(1, (len(text) + 3) // 4)


def _usage(messages: Any, answer: str) -> dict[str, int]:
    prompt = _tokens(orjson.dumps(messages).decode())
    completion = _tokens(answer)
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }


def judge_verdict(user: str) -> str:
    """The pairwise judge's answer to a judge's user message: pass when the student's answer
    is the same JSON value as the teacher's (or the same text, stripped)."""
    tagged = dict(_TAGGED.findall(user))
    teacher, student = tagged.get("teacher_answer"), tagged.get("student_answer")
    if teacher is None or student is None:
        verdict, reason = "fail", "no teacher and student answers to compare"
    elif _json(teacher) is not None and _json(teacher) == _json(student):
        verdict, reason = "pass", "the same JSON as the teacher's"
    elif teacher.strip() == student.strip():
        verdict, reason = "pass", "the same text as the teacher's"
    else:
        verdict, reason = "fail", "differs from the teacher's answer"
    return orjson.dumps({"verdict": verdict, "reason": reason}).decode()


def _json(text: str) -> Any:
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError:
        return None


def completion(body: dict[str, Any]) -> dict[str, Any]:
    """The chat completion answering ``body`` (as the teacher, or as the judge)."""
    if body.get("model") == JUDGE_MODEL:
        answer = judge_verdict(last_user_text(body.get("messages")))
    else:
        answer = teacher_answer(last_user_text(body.get("messages")))
    return {
        "id": f"chatcmpl-demo-{uuid.uuid4().hex[:24]}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": body.get("model") or MODEL,
        "system_fingerprint": FINGERPRINT,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": answer},
                "finish_reason": "stop",
                "logprobs": None,
            }
        ],
        "usage": _usage(body.get("messages"), answer),
    }


def chunks(body: dict[str, Any]) -> list[dict[str, Any]]:
    """The same answer as stream chunks: role, the text in two pieces, the finish, usage."""
    whole = completion(body)
    answer: str = whole["choices"][0]["message"]["content"]
    half = len(answer) // 2
    head = {k: whole[k] for k in ("id", "created", "model", "system_fingerprint")}
    head["object"] = "chat.completion.chunk"

    def chunk(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
        return {**head, "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}

    out = [
        chunk({"role": "assistant", "content": ""}),
        chunk({"content": answer[:half]}),
        chunk({"content": answer[half:]}),
        chunk({}, "stop"),
    ]
    options = body.get("stream_options")
    if isinstance(options, dict) and options.get("include_usage"):
        out.append({**head, "choices": [], "usage": whole["usage"]})
    return out


def _error(status: int, message: str) -> web.Response:
    body = {"error": {"message": message, "type": "invalid_request_error", "param": None,
                      "code": None}}  # fmt: skip
    return web.Response(status=status, body=orjson.dumps(body), content_type="application/json")


def create_app(delay_s: float = 0.0) -> web.Application:
    """The demo teacher's app; ``delay_s`` holds every answer back (to mimic a remote API)."""

    async def chat(request: web.Request) -> web.StreamResponse:
        try:
            body = orjson.loads(await request.read())
        except orjson.JSONDecodeError:
            return _error(400, "the body is not valid JSON")
        if not isinstance(body, dict) or not isinstance(body.get("messages"), list):
            return _error(400, "messages is required")
        if delay_s:
            await asyncio.sleep(delay_s)
        if not body.get("stream"):
            return web.Response(
                body=orjson.dumps(completion(body)), content_type="application/json"
            )
        response = web.StreamResponse(headers={"content-type": "text/event-stream"})
        await response.prepare(request)
        for item in chunks(body):
            await response.write(b"data: " + orjson.dumps(item) + b"\n\n")
        await response.write(b"data: [DONE]\n\n")
        await response.write_eof()
        return response

    async def models(_: web.Request) -> web.Response:
        data = [{"id": MODEL, "object": "model", "created": 0, "owned_by": LABEL}]
        return web.Response(
            body=orjson.dumps({"object": "list", "data": data}), content_type="application/json"
        )

    async def health(_: web.Request) -> web.Response:
        return web.Response(body=b'{"status":"ok"}', content_type="application/json")

    app = web.Application()
    app.router.add_post("/v1/chat/completions", chat)
    app.router.add_get("/v1/models", models)
    app.router.add_get("/health", health)
    return app


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m protege.demo_teacher", description=LABEL)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8070)
    parser.add_argument("--delay-ms", type=float, default=0.0, help="hold every answer back")
    args = parser.parse_args(argv)
    from core.logs import configure

    configure("info")
    log.info(
        "DEMO TEACHER listening: a synthetic task with known answers, not a real LLM",
        url=f"http://{args.host}:{args.port}/v1",
        model=MODEL,
    )
    web.run_app(
        create_app(args.delay_ms / 1000), host=args.host, port=args.port, print=None,
        access_log=None, handle_signals=True,
    )  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
