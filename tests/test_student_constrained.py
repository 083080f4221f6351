"""Constrained decoding (``response_format``): answers that satisfy a JSON schema, and the 422s.

The tiny base has random weights, so unconstrained it answers noise; sampled at temperature 1
under a schema, every answer must still parse and validate, on every route, streamed or not.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from typing import Any

import httpx
import jsonschema
import pytest
import torch
from lorax import AsyncClient
from openai import AsyncOpenAI

from tests.test_student_server import RunningStudent, World
from trainer.serve.constrained import Constraint, Grammars, allowed_bits
from trainer.serve.decoding import RowState
from trainer.serve.errors import GenerationFailed, InvalidInput, StudentError
from trainer.serve.protocol import ANY_OBJECT, GenerationSpec, Sampling, response_schema
from trainer.serve.results import Event
from trainer.tiny import save_tiny, tiny_tokenizer

# lorax-client 0.6.3 serializes its requests with pydantic's deprecated ``.dict()``.
pytestmark = [
    pytest.mark.filterwarnings(
        "ignore:The `dict` method is deprecated:pydantic.warnings.PydanticDeprecatedSince20"
    ),
    pytest.mark.usefixtures("one_torch_thread"),
]

SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "label": {"enum": ["positive", "negative", "neutral"]},
        "score": {"type": "integer", "minimum": 0, "maximum": 100},
        "date": {"type": "string", "pattern": r"^\d{4}-\d{2}-\d{2}$"},
    },
    "required": ["label", "score", "date"],
    "additionalProperties": False,
}
# Every value of SCHEMA is bounded, and so is the whitespace between tokens (at most 18 bytes in
# each of the object's 12 gaps): an answer has at most 52 + 12 * 18 = 268 bytes, and every
# token is at least one byte, so this budget always lets the JSON close.
BUDGET = 300
ANSWERS = 6  # per route and form
MESSAGES: Any = [{"role": "user", "content": "Classify: the package was broken."}]
PROMPT = "Classify the sentiment of the review as JSON: I love it!"
EOS = 2  # the tiny tokenizer's <|im_end|>


@pytest.fixture(scope="module")
def student(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningStudent]:
    root = tmp_path_factory.mktemp("constrained")
    save_tiny(root / "base")
    server = RunningStudent(World(root, root / "base", f"file://{root / 'store'}", "", ""))
    yield server
    server.stop()


def valid(text: str) -> dict[str, Any]:
    """``text`` as JSON, checked against ``SCHEMA``."""
    value = json.loads(text)
    jsonschema.validate(value, SCHEMA)
    assert isinstance(value, dict)
    return value


# --- over HTTP -----------------------------------------------------------------------------


async def test_openai_answers_satisfy_the_schema(student: RunningStudent) -> None:
    """Sampled chat answers under LoRAX's and OpenAI's response_format forms all validate."""
    forms: list[Any] = [
        {"type": "json_object", "schema": SCHEMA},
        {"type": "json_schema", "json_schema": {"name": "label", "schema": SCHEMA, "strict": True}},
    ]
    compiled = student.info()["schemas_compiled"]
    async with AsyncOpenAI(base_url=student.url + "/v1", api_key="unused", timeout=60) as client:
        calls = [
            client.chat.completions.create(
                model="", messages=MESSAGES, max_tokens=BUDGET, seed=i, response_format=form
            )
            for form in forms
            for i in range(ANSWERS)
        ]
        outs = await asyncio.wait_for(asyncio.gather(*calls), 60)
    answers = [out.choices[0].message.content or "" for out in outs]
    assert [out.choices[0].finish_reason for out in outs] == ["stop"] * len(outs)
    assert len({json.dumps(valid(a)) for a in answers}) > 1  # sampled: not one answer repeated
    assert student.info()["schemas_compiled"] - compiled <= 1  # both forms: one schema, cached


async def test_openai_stream_satisfies_the_schema(student: RunningStudent) -> None:
    """Streamed chunks of a json_schema answer add up to JSON that validates."""
    form: Any = {"type": "json_schema", "json_schema": {"name": "label", "schema": SCHEMA}}

    async def streamed(client: AsyncOpenAI, seed: int) -> str:
        stream = await client.chat.completions.create(
            model="", messages=MESSAGES, max_tokens=BUDGET, seed=seed, response_format=form,
            stream=True,
        )  # fmt: skip
        chunks = [chunk async for chunk in stream]
        assert chunks[-1].choices[0].finish_reason == "stop"
        return "".join(c.choices[0].delta.content or "" for c in chunks)

    async with AsyncOpenAI(base_url=student.url + "/v1", api_key="unused", timeout=60) as client:
        calls = [streamed(client, i) for i in range(ANSWERS)]
        texts = await asyncio.wait_for(asyncio.gather(*calls), 60)
    for text in texts:
        valid(text)


async def test_native_answers_satisfy_the_schema(student: RunningStudent) -> None:
    """generate and generate_stream, sampled under parameters.response_format, validate."""
    client = AsyncClient(student.url, timeout=60)
    form = {"type": "json_object", "schema": SCHEMA}
    kw: dict[str, Any] = {"do_sample": True, "max_new_tokens": BUDGET, "response_format": form}

    async def streamed(seed: int) -> tuple[str, str]:
        events = [e async for e in client.generate_stream(PROMPT, seed=seed, **kw)]
        final = events[-1]
        assert final.details is not None and final.details.finish_reason == "eos_token"
        assert final.generated_text is not None
        return "".join(e.token.text for e in events if not e.token.special), final.generated_text

    whole = [client.generate(PROMPT, seed=i, **kw) for i in range(ANSWERS)]
    outs = await asyncio.wait_for(asyncio.gather(*whole), 60)
    streams = await asyncio.wait_for(asyncio.gather(*(streamed(i) for i in range(ANSWERS))), 60)
    for out in outs:
        assert out.details is not None and out.details.finish_reason == "eos_token"
        assert out.details.tokens[-1].id == EOS
        valid(out.generated_text)
    for text, final in streams:
        assert text == final
        valid(text)
    assert [final for _, final in streams] == [out.generated_text for out in outs]  # same seeds


async def test_json_object_without_schema_is_an_object(student: RunningStudent) -> None:
    """{"type": "json_object"} alone: every answer that ends is a JSON object."""
    async with httpx.AsyncClient(base_url=student.url, timeout=60) as http:
        calls = [
            http.post(
                "/v1/chat/completions",
                json={
                    "messages": MESSAGES,
                    "max_tokens": 400,
                    "seed": seed,
                    "response_format": {"type": "json_object"},
                },
            )
            for seed in range(8)
        ]
        bodies = [r.json() for r in await asyncio.wait_for(asyncio.gather(*calls), 60)]
    # Keys and string values are unbounded, so a random model may still be writing one when
    # max_tokens is reached (finish_reason "length"); most of these seeds close in time.
    choices = [body["choices"][0] for body in bodies]
    finished = [c["message"]["content"] for c in choices if c["finish_reason"] == "stop"]
    assert len(finished) >= 2
    assert all(isinstance(json.loads(a), dict) for a in finished)


@pytest.mark.parametrize(
    ("response_format", "message"),
    [
        ({"type": "xml"}, "`response_format.type` must be one of text, json_object, json_schema"),
        ({"type": "json_object", "schema": [1]}, "`response_format.schema` must be a JSON object"),
        ({"type": "json_schema", "json_schema": "x"}, "`response_format.json_schema` must be"),
        (
            {"type": "json_object", "schema": {"type": "string", "pattern": "(?<=a)b"}},
            "`response_format.schema` cannot be used: ",
        ),
        ({"type": "json_object", "schema": {"type": "nonsense"}}, "`response_format.schema` can"),
    ],
)
def test_unusable_response_format_is_422(
    student: RunningStudent, response_format: dict[str, Any], message: str
) -> None:
    """An unusable response_format is LoRAX's validation error on both routes, before queueing."""
    native = httpx.post(
        student.url + "/generate",
        json={"inputs": PROMPT, "parameters": {"response_format": response_format}},
        timeout=30,
    )
    chat = httpx.post(
        student.url + "/v1/chat/completions",
        json={"messages": MESSAGES, "response_format": response_format},
        timeout=30,
    )
    for response in (native, chat):
        assert response.status_code == 422
        body = response.json()
        assert body["error_type"] == "validation"
        assert body["error"].startswith("Input validation error: " + message)
    streamed = httpx.post(
        student.url + "/generate_stream",
        json={"inputs": PROMPT, "parameters": {"response_format": response_format}},
        timeout=30,
    )
    assert streamed.status_code == 200 and '"error_type":"validation"' in streamed.text


# --- the pure parts --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("response_format", "schema"),
    [
        (None, None),
        ({"type": "text"}, None),
        ({"type": "json_object"}, ANY_OBJECT),
        ({"type": "json_schema"}, ANY_OBJECT),
        ({"type": "json_object", "schema": SCHEMA}, SCHEMA),
        ({"type": "json_schema", "schema": SCHEMA}, SCHEMA),
        ({"type": "json_schema", "json_schema": {"name": "x", "schema": SCHEMA}}, SCHEMA),
        ({"type": "json_schema", "json_schema": {"name": "x"}}, ANY_OBJECT),
    ],
)
def test_response_schema_reads_both_forms(
    response_format: dict[str, Any] | None, schema: dict[str, Any] | None
) -> None:
    """LoRAX's and OpenAI's forms give the schema (key order kept); text and none give none."""
    text = response_schema(response_format)
    if schema is None:
        assert text is None
    else:
        assert text is not None and json.loads(text) == schema
        assert list(json.loads(text).get("properties", {})) == list(schema.get("properties", {}))


@pytest.fixture(scope="module")
def grammars() -> Grammars:
    tokenizer = tiny_tokenizer()
    return Grammars(tokenizer, n_vocab=len(tokenizer) + 40, end_ids={EOS})


def test_compiled_schemas_are_cached(grammars: Grammars) -> None:
    """A repeated schema compiles once; each request still gets a fresh matcher of its own."""
    text = json.dumps(SCHEMA)
    before = grammars.compilations
    first, second = grammars.constraint(text), grammars.constraint(text)
    assert grammars.compilations == before + 1
    first.consume(int(_allowed(first, 552).nonzero()[0]))  # "{" or '{"': only `first` moves
    assert not torch.equal(_allowed(first, 552), _allowed(second, 552))


def test_unusable_schema_is_invalid_input(grammars: Grammars) -> None:
    """A schema llguidance cannot compile is refused with its reason."""
    with pytest.raises(InvalidInput, match="look-around"):
        grammars.constraint(json.dumps({"type": "string", "pattern": "(?=a)a"}))


def test_mask_allows_the_grammar_then_only_the_end(grammars: Grammars) -> None:
    """Ids past the tokenizer are never allowed; a complete answer allows only the end token."""
    constraint = grammars.constraint(json.dumps({"enum": ["yes"]}))
    tokenizer = tiny_tokenizer()
    for token in tokenizer('"yes"', add_special_tokens=False)["input_ids"]:
        assert _allowed(constraint, 552)[token]
        assert not _allowed(constraint, 552)[512:].any()
        constraint.consume(token)
    assert constraint.complete
    assert _allowed(constraint, 552).nonzero().flatten().tolist() == [EOS]


def test_failed_grammar_fails_its_row_alone(grammars: Grammars) -> None:
    """Once its matcher fails, the row ends with GenerationFailed rather than free text."""
    told: list[Event | StudentError] = []
    tokenizer = tiny_tokenizer()
    constraint = grammars.constraint(json.dumps(SCHEMA))
    spec = GenerationSpec(prompt_ids=(5, 6), max_new_tokens=10, sampling=Sampling(False, 0))
    row = RowState(
        spec, told.append, tokenizer, special_ids={0, 1, 2}, eos_ids={EOS},
        device=torch.device("cpu"), constraint=constraint,
    )  # fmt: skip
    token = row.choose(torch.tensor([5, 6]), torch.zeros(552))
    row.accept(token)
    assert str(tokenizer.decode([token])).startswith("{") and not row.done
    x = int(tokenizer.convert_tokens_to_ids("x"))  # type: ignore[arg-type]
    with pytest.raises(GenerationFailed, match="doesn't satisfy the grammar"):
        constraint.consume(x)  # "{x": the matcher fails
    row.choose(torch.tensor([5, 6, token]), torch.zeros(552))
    assert row.done and isinstance(told[-1], GenerationFailed)


def test_allowed_bits_are_little_endian() -> None:
    """Bit i of the mask (in little-endian words) is token i."""
    bits = allowed_bits(bytes([0b00000101, 0, 0, 0b10000000]), 40)
    assert bits.nonzero()[0].tolist() == [0, 2, 31] and bits.size == 40


def _allowed(constraint: Constraint, width: int) -> torch.Tensor:
    return constraint.mask(torch.zeros(width)) == 0
