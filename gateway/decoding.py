"""How a student is asked to decode: its adapter's published policy, the route's override, and
what the client set itself.

An OpenAI-compatible server samples at temperature 1 when a request names none, and LoRAX does.
A large teacher sampled at 1 is near-deterministic on a narrow task; a small student is not, and
clients omit ``temperature`` all the time. So a published adapter's ``protege.json`` carries a
decoding policy and the schema its answers were learned to follow::

    "decoding": {"temperature": 0.0, "top_p": null, "max_tokens": 96,
                 "max_temperature": null, "basis": {...}},
    "output_schema": {...a JSON schema...} | null

(``basis`` is the trainer's account of its choice; the gateway ignores it). A key of the wrong
type or out of range is ignored with a warning; an absent one is null. A route may override the
policy key by key, or leave the published one aside (``StudentDecoding``).

``apply`` turns a client's request into the student's, by these rules, for every student call
(answering, hybrid, shadow) and never the teacher's:

    temperature      the policy's when the client set none (absent or null); an explicit
                     client temperature passes untouched, unless ``max_temperature`` is set
                     and it is higher: then it is lowered to it (recorded under ``capped``).
                     A default above ``max_temperature`` is lowered to it too
    top_p            the policy's when the client set none
    max_tokens       the policy's when the client set neither ``max_tokens`` nor
                     ``max_completion_tokens``
    response_format  the learned schema, as LoRAX's ``{"type": "json_object", "schema": …}``,
                     when the client sent no ``response_format`` of its own and no tools (nor
                     legacy ``functions``)

What was set or changed is recorded in the exchange's ``detail.decoding``, e.g.
``{"temperature": 0.0, "max_tokens": 96, "response_format": "output_schema"}``, plus
``"capped": {"temperature": <the client's>}`` when a client temperature was lowered; nothing is
recorded when nothing was applied. The learned schema is also what the output checks judge
an answer by when neither the request nor the route's checks carry a schema, for a request it
could have been sent with (no format of the client's, no tools), whether or not it was sent.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

from pydantic import Field

from core.answers import schema_validator
from core.settings import Model

# (key, lowest, highest, lowest excluded) of each number the policy holds.
_RANGES: Final = (
    ("temperature", 0.0, 2.0, False),
    ("top_p", 0.0, 1.0, True),
    ("max_temperature", 0.0, 2.0, False),
)
OUTPUT_SCHEMA: Final = "output_schema"  # detail.decoding's response_format when it was sent


class StudentDecoding(Model):
    """A route's override of its students' decoding (``routes[i].student_decoding``)."""

    # Apply the adapter's published policy and learned schema; false: only the values below.
    published: bool = True
    # Each replaces the published value when set (None: no override); see gateway.decoding.
    temperature: float | None = Field(default=None, ge=0, le=2, allow_inf_nan=False)
    top_p: float | None = Field(default=None, gt=0, le=1, allow_inf_nan=False)
    max_tokens: int | None = Field(default=None, ge=1)
    max_temperature: float | None = Field(default=None, ge=0, le=2, allow_inf_nan=False)
    # Ask the student for the learned output schema (constrained decoding).
    output_schema: bool = True


@dataclass(frozen=True, slots=True)
class Decoding:
    """A decoding policy: the defaults for what a client leaves unset, and a temperature cap."""

    temperature: float | None = None
    top_p: float | None = None
    max_tokens: int | None = None
    max_temperature: float | None = None


@dataclass(frozen=True, slots=True)
class Published:
    """What an adapter's manifest says about decoding, read and checked once."""

    decoding: Decoding = Decoding()
    output_schema: dict[str, Any] | None = None
    # The schema's validator, compiled once (None when there is no usable schema).
    validator: Any = None


@dataclass(frozen=True, slots=True)
class Applied:
    """One student request: its fields, what the gateway changed, and the schema to check."""

    fields: dict[str, Any]
    # The record's detail.decoding; None when nothing was set or changed.
    record: dict[str, Any] | None = None
    # The learned schema's validator when it stands for the request's schema in the checks.
    schema: Any = None


def published_of(manifest: Mapping[str, Any]) -> tuple[Published, tuple[str, ...]]:
    """The decoding policy and learned schema of a ``protege.json``, and the problems found
    (each a key ignored, and why)."""
    decoding, problems = _decoding_of(manifest.get("decoding"))
    schema = manifest.get("output_schema")
    validator = None
    if schema is not None and not isinstance(schema, dict):
        problems += (f"output_schema must be an object or null, got {type(schema).__name__}",)
        schema = None
    elif schema is not None:
        validator = schema_validator(schema)
        if validator is None:
            problems += ("output_schema is not a valid JSON schema",)
            schema = None
    return Published(decoding, schema, validator), problems


def _decoding_of(raw: Any) -> tuple[Decoding, tuple[str, ...]]:
    if raw is None:
        return Decoding(), ()
    if not isinstance(raw, dict):
        return Decoding(), (f"decoding must be an object or null, got {type(raw).__name__}",)
    values: dict[str, Any] = {}
    problems: list[str] = []
    for key, low, high, low_open in _RANGES:
        value = raw.get(key)
        if value is None:
            continue
        if _number(value) and (low < value if low_open else low <= value) and value <= high:
            values[key] = float(value)
        else:
            bound = "(" if low_open else "["
            problems.append(f"decoding.{key} must be null or a number in {bound}{low:g}, "
                            f"{high:g}], got {value!r}")  # fmt: skip
    max_tokens = raw.get("max_tokens")
    if isinstance(max_tokens, int) and not isinstance(max_tokens, bool) and max_tokens >= 1:
        values["max_tokens"] = max_tokens
    elif max_tokens is not None:
        problems.append(f"decoding.max_tokens must be null or an integer >= 1, got {max_tokens!r}")
    return Decoding(**values), tuple(problems)


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def policy(published: Published | None, route: StudentDecoding) -> Decoding:
    """The policy in force: the published one (when the route uses it and it is loaded), each
    key the route sets replacing it."""
    base = published.decoding if route.published and published is not None else Decoding()
    return Decoding(
        temperature=_first(route.temperature, base.temperature),
        top_p=_first(route.top_p, base.top_p),
        max_tokens=_first(route.max_tokens, base.max_tokens),
        max_temperature=_first(route.max_temperature, base.max_temperature),
    )


def _first(override: Any, published: Any) -> Any:
    return published if override is None else override


def apply(
    fields: dict[str, Any], published: Published | None, route: StudentDecoding
) -> Applied:
    """The student's request for the client's ``fields``, by the module's rules: pure.

    ``published``: the adapter's, None until it is loaded (only the route's own values apply).
    """
    rules = policy(published, route)
    out: dict[str, Any] = {}  # fields set or changed
    record: dict[str, Any] = {}
    _temperature(fields, rules, out, record)
    if rules.top_p is not None and fields.get("top_p") is None:
        out["top_p"] = record["top_p"] = rules.top_p
    unset = fields.get("max_tokens") is None and fields.get("max_completion_tokens") is None
    if rules.max_tokens is not None and unset:
        out["max_tokens"] = record["max_tokens"] = rules.max_tokens
    learned = _learned(fields, published, route)
    if learned is not None and route.output_schema:
        out["response_format"] = {"type": "json_object", "schema": learned.output_schema}
        record["response_format"] = OUTPUT_SCHEMA
    schema = None if learned is None else learned.validator
    if not out:
        return Applied(fields, None, schema)
    merged = {**fields, **out}
    if "max_tokens" in out:
        merged.pop("max_completion_tokens", None)  # null, or max_tokens would not be set
    return Applied(merged, record, schema)


def _temperature(
    fields: dict[str, Any], rules: Decoding, out: dict[str, Any], record: dict[str, Any]
) -> None:
    """The default temperature for a client that set none; a cap on one that set too high."""
    cap = rules.max_temperature
    asked = fields.get("temperature")
    if asked is None:
        if rules.temperature is not None:
            value = rules.temperature if cap is None else min(rules.temperature, cap)
            out["temperature"] = record["temperature"] = value
    elif cap is not None and _number(asked) and asked > cap:
        out["temperature"] = record["temperature"] = cap
        record["capped"] = {"temperature": asked}


def _learned(
    fields: dict[str, Any], published: Published | None, route: StudentDecoding
) -> Published | None:
    """``published`` when its learned schema applies to this request, else None."""
    if not route.published or published is None or published.validator is None:
        return None
    if fields.get("response_format") is not None or fields.get("tools") or fields.get("functions"):
        return None
    return published
