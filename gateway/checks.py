"""Output checks on a student's answer, by the task's ``OutputChecksConfig``.

``OutputChecks.run`` names the checks an answer fails, in ``CHECKS`` order:

    json_parse      JSON is required (the request's ``response_format`` is ``json_object`` or
                    ``json_schema``, ``json_object`` is set, or a schema applies) and the text
                    is not JSON as it stands (a Markdown fence fails: the client parses the
                    body as sent); where ``json_object`` is asked for, it must be an object
    json_schema     the JSON answer does not satisfy the schema: the request's
                    ``response_format`` schema, else the configured one, else the adapter's
                    learned one where it applies (``gateway.decoding``; not checked when
                    json_parse failed, nor when the schema itself is unusable)
    must_match      some ``must_match`` RE2 pattern is not found in the text
    must_not_match  some ``must_not_match`` RE2 pattern is found in the text
    max_length      the text is longer than ``max_chars`` characters (for an answer that is
                    only tool calls: their canonical text, see ``core.answers``)
    empty           ``non_empty`` and the answer has neither text (once stripped) nor a tool call
    refusal         a refusal phrase occurs in the text, ignoring case

An answer that is only tool calls skips every text check but ``max_length``. Patterns are
compiled and phrases case-folded once, when the checks are built; a run costs a few passes over
the answer.
"""

from __future__ import annotations

from typing import Any, Final

import orjson
import re2

from core.answers import (
    answer_text,
    response_schema,
    satisfies,
    schema_validator,
    tool_calls_text,
    wants_json,
)
from gateway.policy import OutputChecksConfig

CHECKS: Final = (
    "json_parse",
    "json_schema",
    "must_match",
    "must_not_match",
    "max_length",
    "empty",
    "refusal",
)


class OutputChecks:
    """A task's output checks, compiled once from its config."""

    __slots__ = (
        "_json_object",
        "_max_chars",
        "_must_match",
        "_must_not_match",
        "_non_empty",
        "_refusals",
        "_schema",
    )

    def __init__(self, config: OutputChecksConfig) -> None:
        self._json_object = config.json_object
        # The configured schema's validator (None: no schema, or one that cannot be used).
        schema = config.json_schema
        self._schema: Any = None if schema is None else schema_validator(schema)
        # Patterns compiled as UTF-8 bytes: the text is encoded once per run, not per pattern.
        self._must_match = tuple(re2.compile(p.encode()) for p in config.must_match)
        self._must_not_match = tuple(re2.compile(p.encode()) for p in config.must_not_match)
        self._max_chars = config.max_chars
        self._non_empty = config.non_empty
        self._refusals = tuple(p.casefold() for p in config.refusal_phrases if p)

    def run(
        self, fields: dict[str, Any], completion: dict[str, Any], learned: Any = None
    ) -> tuple[str, ...]:
        """The checks failed by ``completion`` (a ``chat.completion``) answering the request
        ``fields``, in ``CHECKS`` order; empty when it passes them all.

        ``learned``: the validator of the adapter's learned output schema (compiled once per
        adapter), when it applies to this request; the last schema the answer is judged by."""
        text = answer_text(completion)
        has_text = bool(text.strip())
        tools = "" if has_text else tool_calls_text(completion)
        failed: set[str] = set()
        if has_text or not tools:
            self._text_checks(fields, text, failed, learned)
        length = len(text) if has_text or not tools else len(tools)
        if self._max_chars is not None and length > self._max_chars:
            failed.add("max_length")
        if self._non_empty and not has_text and not tools:
            failed.add("empty")
        return tuple(name for name in CHECKS if name in failed)

    def _text_checks(
        self, fields: dict[str, Any], text: str, failed: set[str], learned: Any
    ) -> None:
        json_failure = self._json_check(fields, text, learned)
        if json_failure is not None:
            failed.add(json_failure)
        if self._must_match or self._must_not_match:
            encoded = text.encode("utf-8", "surrogatepass")
            if any(p.search(encoded) is None for p in self._must_match):
                failed.add("must_match")
            if any(p.search(encoded) is not None for p in self._must_not_match):
                failed.add("must_not_match")
        if self._refusals:
            folded = text.casefold()
            if any(phrase in folded for phrase in self._refusals):
                failed.add("refusal")

    def _json_check(self, fields: dict[str, Any], text: str, learned: Any) -> str | None:
        """``json_parse`` or ``json_schema`` when the text fails that check, else ``None``."""
        requested = response_schema(fields)
        fallback = learned if self._schema is None else self._schema
        has_schema = requested is not None or fallback is not None
        if not (self._json_object or has_schema or wants_json(fields)):
            return None
        try:
            value = orjson.loads(text)
        except ValueError:
            return "json_parse"
        if self._object_required(fields) and not isinstance(value, dict):
            return "json_parse"
        validator = fallback if requested is None else schema_validator(requested)
        if validator is not None and satisfies(validator, value) is False:
            return "json_schema"
        return None

    def _object_required(self, fields: dict[str, Any]) -> bool:
        response_format = fields.get("response_format")
        asked = isinstance(response_format, dict) and response_format.get("type") == "json_object"
        return self._json_object or asked
