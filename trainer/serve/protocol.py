"""LoRAX's request shapes, and the pure step from a request to what the engine generates.

Requests are read as LoRAX reads them: unknown fields are ignored, ``parameters`` may be left
out. Checks, their order and their messages are LoRAX's (``router/src/validation.rs``); a
failed check is an ``InvalidInput`` (422, ``validation``). Sampling follows LoRAX's server: a
request samples when ``do_sample`` is set or any warper is (temperature other than 0 and 1,
``top_k``, ``top_p`` < 1, ``typical_p`` < 1), and never at temperature 0.

``response_format`` constrains the answer to JSON (``trainer.serve.constrained``): ``{"type":
"json_object" | "json_schema", "schema": {...}}`` as LoRAX reads it, or OpenAI's ``{"type":
"json_schema", "json_schema": {"schema": {...}}}``; without a schema, any JSON object;
``{"type": "text"}`` is free text. Any other shape is an ``InvalidInput``.

Accepted and ignored, as this server cannot honour them: ``adapter_source`` (adapters come from
the store), ``api_token``, ``watermark``, ``frequency_penalty`` and ``presence_penalty``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Final

from pydantic import BaseModel, ConfigDict, Field

from trainer.serve.errors import InvalidInput

MAX_SEED = 2**64 - 1
ANY_OBJECT: Final = {"type": "object"}  # the schema of a JSON answer that names none
JSON_FORMATS: Final = ("json_object", "json_schema")


class _Lenient(BaseModel):
    model_config = ConfigDict(extra="ignore")


class Parameters(_Lenient):
    adapter_id: str | None = None
    adapter_source: str | None = None
    merged_adapters: dict[str, Any] | None = None
    api_token: str | None = None
    best_of: int | None = Field(default=None, ge=0)
    temperature: float | None = None
    repetition_penalty: float | None = None
    frequency_penalty: float | None = None
    presence_penalty: float | None = None
    top_k: int | None = None
    top_p: float | None = None
    typical_p: float | None = None
    do_sample: bool = False
    max_new_tokens: int | None = Field(default=None, ge=0)
    ignore_eos_token: bool = False
    return_full_text: bool | None = None
    stop: list[str] = Field(default_factory=list)
    truncate: int | None = Field(default=None, ge=0)
    watermark: bool = False
    details: bool = False
    decoder_input_details: bool = False
    return_k_alternatives: int | None = None
    apply_chat_template: bool = False
    seed: int | None = Field(default=None, ge=0, le=MAX_SEED)
    response_format: dict[str, Any] | None = None


class GenerateRequest(_Lenient):
    """``POST /generate``, ``/generate_stream`` and ``/`` (where ``stream`` picks the answer)."""

    inputs: str
    parameters: Parameters = Field(default_factory=Parameters)
    stream: bool = False


@dataclass(frozen=True)
class Limits:
    max_input_length: int
    max_total_tokens: int
    max_stop_sequences: int
    max_best_of: int = 1  # best_of > 1 (several answers, the likeliest kept) is not implemented


@dataclass(frozen=True)
class Sampling:
    """How one request picks its tokens: greedily, or sampled with its own seeded generator."""

    do_sample: bool
    seed: int
    temperature: float = 1.0
    top_k: int = 0  # 0: off
    top_p: float = 1.0  # 1.0: off
    typical_p: float = 1.0  # 1.0: off
    repetition_penalty: float = 1.0  # 1.0: off


@dataclass(frozen=True)
class GenerationSpec:
    """What the engine generates for one request."""

    prompt_ids: tuple[int, ...]
    max_new_tokens: int
    sampling: Sampling
    stop: tuple[str, ...] = ()
    ignore_eos: bool = False
    prefill_details: bool = False  # logprobs of the prompt tokens (decoder_input_details)
    alternatives: int = 0  # most likely other tokens reported per step (return_k_alternatives)
    schema: str | None = None  # the JSON schema the answer must satisfy (response_format), as text


def problems(p: Parameters, limits: Limits, *, stream: bool) -> list[str]:
    """Every LoRAX validation message ``p`` earns, in LoRAX's order (empty: valid)."""
    best_of = 1 if p.best_of is None else p.best_of
    checks = [
        (p.merged_adapters is not None, "`merged_adapters` is not supported by this server"),
        (stream and best_of != 1, "`best_of` != 1 is not supported when `stream` == True"),
        (
            stream and p.decoder_input_details,
            "`decoder_input_details` == true is not supported when streaming tokens",
        ),
        (best_of > limits.max_best_of, "`best_of` != 1 is not allowed for this endpoint"),
        (p.temperature is not None and p.temperature < 0, "`temperature` must be non-negative"),
        (
            p.repetition_penalty is not None and p.repetition_penalty <= 0,
            "`repetition_penalty` must be strictly positive",
        ),
        (p.top_p is not None and not 0 < p.top_p < 1, "`top_p` must be > 0.0 and < 1.0"),
        (
            p.typical_p is not None and not 0 < p.typical_p < 1,
            "`typical_p` must be > 0.0 and < 1.0",
        ),
        (p.top_k is not None and p.top_k <= 0, "`top_k` must be strictly positive"),
        (
            p.return_k_alternatives is not None and p.return_k_alternatives <= 0,
            "`return_k_alternatives` must be strictly positive",
        ),
        (p.max_new_tokens == 0, "`max_new_tokens` must be strictly positive"),
        (
            len(p.stop) > limits.max_stop_sequences,
            f"`stop` supports up to {limits.max_stop_sequences} stop sequences. "
            f"Given: {len(p.stop)}",
        ),
        (
            p.truncate is not None and not 0 < p.truncate <= limits.max_input_length,
            f"`truncate` must be strictly positive and less than {limits.max_input_length}. "
            f"Given: {p.truncate}",
        ),
    ]
    return [message for failed, message in checks if failed]


def check(p: Parameters, limits: Limits, *, stream: bool) -> None:
    """Raise ``InvalidInput`` with the first problem of ``p``, if any."""
    found = problems(p, limits, stream=stream)
    if found:
        raise InvalidInput(found[0])


def response_schema(response_format: dict[str, Any] | None) -> str | None:
    """The JSON schema ``response_format`` holds the answer to, as JSON text; None: free text.

    The text keeps the schema's key order: llguidance writes properties in that order.
    """
    if response_format is None or response_format.get("type") == "text":
        return None
    kind = response_format.get("type")
    if kind not in JSON_FORMATS:
        kinds = ", ".join(("text", *JSON_FORMATS))
        raise InvalidInput(f"`response_format.type` must be one of {kinds}. Given: {kind!r}")
    schema = response_format.get("schema")
    if schema is None and response_format.get("json_schema") is not None:
        nested = response_format["json_schema"]
        if not isinstance(nested, dict):
            raise InvalidInput("`response_format.json_schema` must be an object")
        schema = nested.get("schema")
    if schema is None:
        schema = ANY_OBJECT
    if not isinstance(schema, dict):
        raise InvalidInput("`response_format.schema` must be a JSON object")
    return json.dumps(schema, separators=(",", ":"), ensure_ascii=False)


def sampling_of(p: Parameters, seed: int) -> Sampling:
    """LoRAX's choice between greedy decoding and sampling, with the warpers it applies."""
    temperature = 1.0 if p.temperature is None else p.temperature
    top_k = p.top_k or 0
    top_p = 1.0 if p.top_p is None else p.top_p
    typical_p = 1.0 if p.typical_p is None else p.typical_p
    warped = temperature not in (0.0, 1.0) or top_k > 0 or top_p < 1.0 or typical_p < 1.0
    return Sampling(
        do_sample=(p.do_sample or warped) and temperature != 0.0,
        seed=seed,
        temperature=temperature,
        top_k=top_k,
        top_p=top_p,
        typical_p=typical_p,
        repetition_penalty=p.repetition_penalty or 1.0,
    )


def spec_of(p: Parameters, prompt_ids: list[int], limits: Limits, *, seed: int) -> GenerationSpec:
    """The engine's job for a checked request whose input tokenizes to ``prompt_ids``."""
    schema = response_schema(p.response_format)
    if p.truncate is not None:
        prompt_ids = prompt_ids[-p.truncate :]
    n = len(prompt_ids)
    if p.max_new_tokens is not None and n + p.max_new_tokens > limits.max_total_tokens:
        raise InvalidInput(
            f"`inputs` tokens + `max_new_tokens` must be <= {limits.max_total_tokens}. "
            f"Given: {n} `inputs` tokens and {p.max_new_tokens} `max_new_tokens`"
        )
    if n > limits.max_input_length:
        raise InvalidInput(
            f"`inputs` must have less than {limits.max_input_length} tokens. Given: {n}"
        )
    return GenerationSpec(
        prompt_ids=tuple(prompt_ids),
        max_new_tokens=p.max_new_tokens or limits.max_total_tokens - n,
        sampling=sampling_of(p, seed),
        stop=tuple(p.stop),
        ignore_eos=p.ignore_eos_token,
        prefill_details=p.decoder_input_details,
        alternatives=p.return_k_alternatives or 0,
        schema=schema,
    )
