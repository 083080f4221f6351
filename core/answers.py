"""What an answer says: the text and tool calls of an OpenAI chat completion, read as JSON or
as normalized text, and checked against a JSON schema.

The gateway checks and scores student answers with these functions and the trainer scores its
test sets with the same ones, so the two never disagree on what an answer means. All are pure;
checking a schema never does I/O (a remote ``$ref`` is not fetched, it leaves the schema
unusable) and runs its ``pattern`` and ``patternProperties`` regular expressions on RE2, so a
schema sent by a client can neither reach the network nor take exponential time.
"""

from __future__ import annotations

from collections.abc import Iterator
from functools import lru_cache
from typing import Any, Final

import jsonschema
import orjson
import re2
from referencing import Registry
from referencing.exceptions import Unresolvable

from core.text import content_text

_FENCE: Final = "```"
_TRAILING_PUNCTUATION: Final = ".,;:!?\u2026\u3002\uff01\uff1f"  # ellipsis, CJK stops
# What ``read_json`` gives for an answer that is not JSON.
NOT_JSON: Final = object()
# How a JSON object, a JSON array or a Markdown code fence around one begins.
_STRUCTURED: Final = frozenset("{[`")
_LATEST: Final = jsonschema.Draft202012Validator


def parse_json_answer(text: str) -> Any:
    """An answer parsed as JSON, a Markdown code fence and surrounding whitespace removed.

    Raises ``ValueError`` when what is left is not JSON.
    """
    body = text.strip()
    if body.startswith(_FENCE):
        # Drop the opening fence line (```json) and a closing fence, if any.
        body = body.partition("\n")[2] if "\n" in body else body[len(_FENCE) :]
        body = body.rstrip()
        if body.endswith(_FENCE):
            body = body[: -len(_FENCE)]
    return orjson.loads(body)


def read_json(text: str) -> Any:
    """``parse_json_answer(text)``, or ``NOT_JSON`` when the answer is not JSON."""
    try:
        return parse_json_answer(text)
    except ValueError:
        return NOT_JSON


def read_structured(text: str) -> Any:
    """``read_json(text)`` where it may hold a JSON object or array (bare or fenced), else
    NOT_JSON without trying: what compares answers as JSON wants only those, and a failed
    parse of free text costs more than a successful one."""
    return read_json(text) if text.lstrip()[:1] in _STRUCTURED else NOT_JSON


def canonical_json(value: Any) -> bytes:
    """A JSON value as compact JSON with sorted keys: equal values give equal bytes.

    Raises ``TypeError`` for what has no canonical form (nested deeper than 255 levels).
    """
    return orjson.dumps(value, option=orjson.OPT_SORT_KEYS)


def normalize_text(text: str) -> str:
    """Case-folded, whitespace collapsed and stripped, trailing punctuation removed."""
    collapsed = " ".join(text.casefold().split())
    return collapsed.rstrip(_TRAILING_PUNCTUATION).rstrip()


def normal_form(text: str, value: Any) -> str:
    """``normalize_answer(text)`` for an answer already read: ``value`` is ``read_json(text)``
    (or ``read_structured(text)``: only an object or array is used)."""
    if isinstance(value, dict | list):
        try:
            return canonical_json(value).decode()
        except TypeError:
            pass
    return normalize_text(text)


def normalize_answer(text: str) -> str:
    """A JSON object or array as canonical JSON with sorted keys; any other answer as text."""
    return normal_form(text, read_structured(text))


def same_field(answer: Any, key: str, value: Any) -> bool:
    """Whether the parsed ``answer`` is an object holding ``value`` (canonically) at ``key``."""
    if not isinstance(answer, dict) or key not in answer:
        return False
    try:
        return canonical_json(answer[key]) == canonical_json(value)
    except TypeError:
        return False


def wants_json(params: dict[str, Any]) -> bool:
    """Whether the request's ``response_format`` asked for JSON."""
    response_format = params.get("response_format")
    return isinstance(response_format, dict) and response_format.get("type") in (
        "json_object",
        "json_schema",
    )


def response_schema(params: dict[str, Any]) -> dict[str, Any] | None:
    """The JSON schema of a ``{"type": "json_schema", "json_schema": {"schema": …}}`` format."""
    response_format = params.get("response_format")
    if not isinstance(response_format, dict) or response_format.get("type") != "json_schema":
        return None
    spec = response_format.get("json_schema")
    schema = spec.get("schema") if isinstance(spec, dict) else None
    return schema if isinstance(schema, dict) else None


def schema_validator(schema: dict[str, Any]) -> Any:
    """A ``jsonschema`` validator for ``schema`` (compiled once per distinct schema), or
    ``None`` when the schema is not valid."""
    try:
        key = canonical_json(schema)
    except TypeError:
        return None
    return _validator(key)


def conforms(value: Any, schema: dict[str, Any]) -> bool | None:
    """Whether a parsed JSON value (``NOT_JSON`` never does) satisfies ``schema``; ``None``
    when the schema cannot be used (invalid, a ``$ref`` it does not hold, nested too deep)."""
    if value is NOT_JSON:
        return False
    validator = schema_validator(schema)
    return None if validator is None else satisfies(validator, value)


def satisfies(validator: Any, value: Any) -> bool | None:
    """Whether a parsed JSON value satisfies a ``schema_validator`` validator; ``None`` when
    it cannot tell (a ``$ref`` the schema does not hold, nesting too deep)."""
    try:
        return bool(validator.is_valid(value))
    except (Unresolvable, RecursionError):
        return None


@lru_cache(maxsize=32)
def _validator(schema_json: bytes) -> Any:
    schema = orjson.loads(schema_json)
    try:
        # An unknown $schema is read as the latest draft (and then checked against it).
        cls = jsonschema.validators.validator_for(schema, default=_LATEST)
        cls.check_schema(schema)
    except (jsonschema.SchemaError, RecursionError, TypeError):
        return None
    # An empty registry: the schema's own $defs and the meta-schemas only, nothing fetched.
    return _on_re2(cls)(schema, registry=Registry())


@lru_cache(maxsize=8)
def _on_re2(cls: Any) -> Any:
    return jsonschema.validators.extend(
        cls, {"pattern": _pattern, "patternProperties": _pattern_properties}
    )


@lru_cache(maxsize=256)
def _re2(pattern: str) -> Any:
    try:
        return re2.compile(pattern)
    except (re2.error, UnicodeEncodeError):
        return None  # beyond RE2 (lookaround, backreferences): not judged


def _found(pattern: str, text: str) -> bool:
    compiled = _re2(pattern)
    try:
        return compiled is None or compiled.search(text) is not None
    except UnicodeEncodeError:  # a lone surrogate: not judged
        return True


def _pattern(validator: Any, pattern: str, instance: Any, schema: Any) -> Iterator[Any]:
    if validator.is_type(instance, "string") and not _found(pattern, instance):
        yield jsonschema.ValidationError(f"{instance!r} does not match {pattern!r}")


def _pattern_properties(
    validator: Any, patterns: dict[str, Any], instance: Any, schema: Any
) -> Iterator[Any]:
    if not validator.is_type(instance, "object"):
        return
    for pattern, subschema in patterns.items():
        for key, value in instance.items():
            if _found(pattern, key):
                yield from validator.descend(value, subschema, path=key, schema_path=pattern)


def _message(completion: dict[str, Any]) -> dict[str, Any]:
    choices = completion.get("choices")
    first = choices[0] if isinstance(choices, list) and choices else None
    message = first.get("message") if isinstance(first, dict) else None
    return message if isinstance(message, dict) else {}


def answer_text(completion: dict[str, Any]) -> str:
    """The text of a chat completion's first choice (``core.text``); empty when it has none."""
    return content_text(_message(completion).get("content"))


def tool_calls_text(completion: dict[str, Any]) -> str:
    """The first choice's tool calls as canonical JSON, ``[{"arguments", "name"}, …]`` in call
    order (arguments parsed when they are JSON); empty when it made none.

    Call ids are left out, so two answers calling the same tools the same way give equal text.
    """
    calls = _message(completion).get("tool_calls")
    if not isinstance(calls, list) or not calls:
        return ""
    try:
        return canonical_json([_call(call, parse=True) for call in calls]).decode()
    except TypeError:  # arguments nested too deep to canonicalize: compared as sent
        return canonical_json([_call(call, parse=False) for call in calls]).decode()


def _call(call: Any, *, parse: bool) -> dict[str, Any]:
    function = call.get("function") if isinstance(call, dict) else None
    if not isinstance(function, dict):
        return {"name": None, "arguments": None}
    arguments = function.get("arguments")
    if parse and isinstance(arguments, str):
        parsed = read_json(arguments)
        arguments = arguments if parsed is NOT_JSON else parsed
    return {"name": function.get("name"), "arguments": arguments}
