"""Realistic spool records for the sidecar benchmark, made cheaply enough to fill a gigabyte.

Each record is a JSON object with every column of ``core.record.SCHEMA``, about 2.3 KB: the
``request`` and ``response`` columns hold ~900 B of JSON text each (a chat request and its chat
completion). Records are spread over three tasks and a few shapes per task (streamed or not,
teacher or shadow route). The user message and the answer are drawn, per record, from a pool of
sentences over a made-up vocabulary, so the text compresses like prose rather than like copies
of one string. Every record has its own ``request_id`` from ``core.ids.new_id``, which
also appears inside its request and response, so no two of those texts are equal (Parquet's
dictionary encoding gets no unrealistic help).

Speed: each shape is serialised once with ``orjson`` into a template whose variable fields are
markers; a record is the template's literal pieces joined with its own field values.
"""

from __future__ import annotations

import random
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Final

import orjson

from core.ids import new_id
from core.record import COLUMNS, SCHEMA_VERSION, records_to_table
from core.segment import HEADER

TASKS: Final = ("support-chat", "invoice-extract", "ticket-summary")
RECORD_BYTES: Final = 2_360  # about what a record takes in a segment, header included
_SHAPES_PER_TASK: Final = 4  # streamed or not, teacher or shadow
_STEP_US: Final = 5_000  # 200 exchanges/s: a large backlog spans a few hours of partitions
_NUMBERS: Final = 997  # distinct rows of latency/token figures, cycled (a prime)
_MARKER: Final = re.compile(rb'"@@N:(\w+)@@"|@@S:(\w+)@@')  # number (quotes dropped) | string

_SYSTEM: Final = {
    "support-chat": (
        "You are a support assistant for an online hardware store. Answer in a friendly, concise "
        "tone and only use facts from the order record; if the answer is not there, offer to "
        "open a ticket. Never reveal internal notes."
    ),
    "invoice-extract": (
        "Extract the supplier, invoice number, issue date, currency, net and gross totals and "
        "every line item from the invoice text. Answer with one JSON object and nothing else."
    ),
    "ticket-summary": (
        "Summarise the customer ticket for the on-call engineer in three bullet points: what "
        "broke, what the customer already tried, and what they are asking for."
    ),
}
_SYLLABLES: Final = ("ka", "re", "to", "mi", "sa", "lu", "ne", "po", "di", "va", "ter", "con")
_POOL: Final = 4096  # distinct sentences that user messages and answers are drawn from
_USER_SENTENCES: Final = 7
_ANSWER_SENTENCES: Final = 8


@dataclass(frozen=True)
class Template:
    """A record's JSON bytes cut at its variable fields: ``literals`` around ``fields``."""

    literals: tuple[bytes, ...]
    fields: tuple[str, ...]

    def fill(self, values: Mapping[str, bytes]) -> bytes:
        out = [self.literals[0]]
        for name, literal in zip(self.fields, self.literals[1:], strict=True):
            out += (values[name], literal)
        return b"".join(out)


def compile_template(data: bytes) -> Template:
    """Cut ``data`` at its markers: ``"@@N:x@@"`` (a whole JSON value) or ``@@S:x@@`` (text)."""
    literals, fields, start = [], [], 0
    for match in _MARKER.finditer(data):
        literals.append(data[start : match.start()])
        fields.append((match[1] or match[2]).decode())
        start = match.end()
    literals.append(data[start:])
    return Template(tuple(literals), tuple(fields))


def sentences(rng: random.Random) -> list[bytes]:
    """A pool of varied sentences over a vocabulary of a thousand made-up words.

    ASCII letters and spaces only, so a sentence needs no escaping at either JSON level.
    """
    vocabulary = [
        "".join(rng.choice(_SYLLABLES) for _ in range(rng.randint(1, 4))) for _ in range(1000)
    ]
    pool = []
    for _ in range(_POOL):
        words = rng.choices(vocabulary, k=rng.randint(8, 16))
        pool.append((" ".join(words).capitalize() + ".").encode())
    return pool


def _request_text(task: str, stream: bool) -> str:
    body: dict[str, Any] = {
        "model": "gpt-4o-mini",
        "messages": [
            {"role": "system", "content": _SYSTEM[task]},
            {"role": "user", "content": "@@S:user@@"},
        ],
        "temperature": 0.2,
        "max_tokens": 400,
        "metadata": {"trace_id": "@@S:rid@@"},
    }
    if stream:
        body["stream"] = True
    return orjson.dumps(body).decode()


def _response_text() -> str:
    body = {
        "id": "chatcmpl-@@S:rid@@",
        "object": "chat.completion",
        "created": 1_732_000_000,
        "model": "gpt-4o-mini-2024-07-18",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": "@@S:answer@@"},
                "finish_reason": "stop",
            }
        ],
        "usage": {"prompt_tokens": 231, "completion_tokens": 187, "total_tokens": 418},
    }
    return orjson.dumps(body).decode()


def _shape(task: str, index: int, rng: random.Random) -> dict[str, Any]:
    """One record shape with markers; every fourth is a shadow call to a student adapter."""
    stream, shadow = index % 2 == 1, index % 4 == 3
    return {
        "request_id": "@@S:rid@@",
        "schema_version": SCHEMA_VERSION,
        "ts": "@@N:ts@@",
        "task": task,
        "endpoint": "chat.completions",
        "backend": "student" if shadow else "teacher",
        "adapter": f"{task}-v3" if shadow else None,
        "route": "shadow" if shadow else "teacher",
        "shadow_of": "@@S:prev@@" if shadow else None,
        "stream": stream,
        "complete": True,
        "status": 200,
        "error": None,
        "request": _request_text(task, stream),
        "response": _response_text(),
        "prompt_tokens": "@@N:prompt@@",
        "completion_tokens": "@@N:completion@@",
        "latency_ms": "@@N:latency@@",
        "ttft_ms": "@@N:ttft@@" if stream else None,
        "client": f"{rng.getrandbits(64):016x}",
        "user": "@@S:user_hash@@",
        "detail": None,
    }


def templates(rng: random.Random) -> list[Template]:
    """Every record shape, tasks interleaved."""
    shapes = [_shape(t, i, rng) for i in range(_SHAPES_PER_TASK) for t in TASKS]
    assert all(tuple(shape) == COLUMNS for shape in shapes), "a shape lacks a schema column"
    return [compile_template(orjson.dumps(shape)) for shape in shapes]


def _numbers(rng: random.Random) -> list[dict[str, bytes]]:
    """``_NUMBERS`` rows of the per-record figures that are not ids or text."""
    rows = []
    for _ in range(_NUMBERS):
        latency = rng.uniform(300.0, 4000.0)
        rows.append(
            {
                "prompt": b"%d" % rng.randrange(120, 900),
                "completion": b"%d" % rng.randrange(40, 400),
                "latency": b"%.3f" % latency,
                "ttft": b"%.3f" % (latency * rng.uniform(0.05, 0.3)),
                "user_hash": b"%016x" % rng.getrandbits(64),
            }
        )
    return rows


def _check(template: Template, numbers: dict[str, bytes]) -> None:
    """The template filled once must be a record the sidecar accepts."""
    rid = new_id().encode()
    values = numbers | {"rid": rid, "prev": rid, "ts": b"1732000000000000"}
    record = orjson.loads(template.fill(values | {"user": b"Hi.", "answer": b"Hello."}))
    records_to_table([record])  # raises if a value does not fit its column


def records(total_bytes: int, end_us: int, seed: int = 7) -> Iterator[bytes]:
    """Records until they fill ``total_bytes`` of segment (payload and 8-byte header each).

    ``ts`` grows by 5 ms a record and ends near ``end_us``; every request_id is unique.
    """
    rng = random.Random(seed)
    shapes, numbers, pool = templates(rng), _numbers(rng), sentences(rng)
    for shape in shapes:
        _check(shape, numbers[0])
    start_us = end_us - total_bytes // RECORD_BYTES * _STEP_US
    prev, written, text = new_id(start_us // 1000).encode(), 0, _USER_SENTENCES
    for i in range(total_bytes):  # a bound: each record takes far more than a byte
        if written >= total_bytes:
            return
        ts = start_us + i * _STEP_US
        rid = new_id(ts // 1000).encode()
        picked = rng.choices(pool, k=_USER_SENTENCES + _ANSWER_SENTENCES)
        values = numbers[i % _NUMBERS] | {"rid": rid, "prev": prev, "ts": b"%d" % ts}
        values |= {"user": b" ".join(picked[:text]), "answer": b" ".join(picked[text:])}
        record = shapes[i % len(shapes)].fill(values)
        written += len(record) + HEADER.size
        yield record
        prev = rid
