"""The canned traffic of the overhead benchmark: what clients send and what the teacher answers.

Requests are ~1 KB chat requests (a system and a user message). The answer to a non-streaming
request is a ~1.3 KB chat completion with usage; a streaming answer is 20 content chunks, a chunk
carrying ``finish_reason``, a usage chunk, then ``data: [DONE]``. Everything is built once, as
bytes, so the fake upstream spends no time serialising.
"""

from __future__ import annotations

import json
from typing import Any, Final

MODEL: Final = "gpt-4o-mini"
_CREATED: Final = 1_732_000_000
_ID: Final = "chatcmpl-bench0000000000000000000000"

_SYSTEM: Final = (
    "You are a support assistant for an online hardware store. Answer in a friendly, concise "
    "tone. Only use facts from the order record and the product catalogue given below; if the "
    "answer is not there, say so and offer to open a ticket. Never reveal internal notes. "
    "Order record: #A-20931, placed 2024-11-02, two items: a 65% mechanical keyboard (brown "
    "switches, ISO layout) and a braided USB-C cable, 2 m. Shipped 2024-11-04 by tracked parcel, "
    "estimated delivery 2024-11-07. Return window: 30 days from delivery; the keyboard must be "
    "returned in its original box with all keycaps."
)
_USER: Final = (
    "Hi! My keyboard arrived yesterday but two of the keycaps (the left shift and the enter key) "
    "seem to be slightly loose and rattle when I type. The cable works fine. Can I get "
    "replacement keycaps sent to me, or do I need to return the whole keyboard? I'd rather keep "
    "it if possible since everything else is great. Also, how long would a replacement take?"
)
_ANSWER: Final = (
    "Thanks for reaching out, and sorry about the rattling keycaps! You don't need to return the "
    "whole keyboard. Since your order #A-20931 was delivered within the last 30 days, it is "
    "still inside the return window, which also covers replacement parts. I can open a ticket "
    "for a replacement left shift and enter keycap in the ISO layout. Replacement parts usually "
    "ship within two business days by tracked parcel and arrive two to three days after that. "
    "In the meantime, you can gently press each loose keycap straight down onto its switch stem "
    "until it clicks; sometimes they are simply not fully seated after shipping. If that fixes "
    "it, let me know and I'll close the ticket. If not, reply with a photo of the two keys and "
    "I'll send the replacements right away. Is the delivery address on the order still correct "
    "for the replacement parcel? Anything else I can help you with today?"
)
_USAGE: Final = {"prompt_tokens": 231, "completion_tokens": 187, "total_tokens": 418}
STREAM_CHUNKS: Final = 20


def chat_request(stream: bool) -> bytes:
    """A realistic ~1 KB ``POST /v1/chat/completions`` body."""
    body: dict[str, Any] = {
        "model": MODEL,
        "messages": [
            {"role": "system", "content": _SYSTEM},
            {"role": "user", "content": _USER},
        ],
        "temperature": 0.2,
        "max_tokens": 400,
        "user": "bench-user-42",
    }
    if stream:
        body["stream"] = True
        body["stream_options"] = {"include_usage": True}
    return json.dumps(body).encode()


def chat_completion() -> bytes:
    """The non-streaming answer: one chat completion object with usage."""
    return json.dumps(
        {
            "id": _ID,
            "object": "chat.completion",
            "created": _CREATED,
            "model": MODEL,
            "system_fingerprint": "fp_bench",
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": _ANSWER, "refusal": None},
                    "logprobs": None,
                    "finish_reason": "stop",
                }
            ],
            "usage": _USAGE,
        }
    ).encode()


def _event(choices: list[dict[str, Any]], usage: dict[str, int] | None = None) -> bytes:
    obj = {
        "id": _ID,
        "object": "chat.completion.chunk",
        "created": _CREATED,
        "model": MODEL,
        "system_fingerprint": "fp_bench",
        "choices": choices,
        "usage": usage,
    }
    return b"data: " + json.dumps(obj, separators=(",", ":")).encode() + b"\n\n"


def _choice(delta: dict[str, str], finish: str | None = None) -> dict[str, Any]:
    return {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}


def stream_events() -> list[bytes]:
    """The streaming answer as SSE events, one per list item, ending with ``data: [DONE]``."""
    step = -(-len(_ANSWER) // STREAM_CHUNKS)
    pieces = [_ANSWER[i : i + step] for i in range(0, len(_ANSWER), step)]
    events = [_event([_choice({"role": "assistant", "content": pieces[0]})])]
    events += [_event([_choice({"content": piece})]) for piece in pieces[1:]]
    events.append(_event([_choice({}, "stop")]))
    events.append(_event([], _USAGE))  # what stream_options.include_usage asks for
    events.append(b"data: [DONE]\n\n")
    return events
