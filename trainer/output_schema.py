"""The shape of a valid answer, learned from the teacher's answers: a JSON schema per task.

When every kept training answer is a JSON object (or every one an array), their schema is
derived from them and published in ``protege.json`` as ``output_schema``; the gateway asks the
student for it (constrained decoding) and checks answers against it. Derived, value by value:

- types: what occurred (an integer field that once held 2.5 is a number; a field that is
  sometimes null accepts null);
- objects: the keys seen, in first-seen order; ``required`` those present in every instance;
  no other key (``additionalProperties: false``);
- arrays: one item schema learned from every element seen;
- strings: an ``enum`` of the values seen when they are few and each recurs
  (``ENUM_MAX_VALUES`` distinct at most, seen ``ENUM_MIN_REPEATS`` times each on average: the
  six categories, the three priorities — never names or free text), else a ``pattern`` when
  every value has one of the ``FORMATS`` (a ``YYYY-MM-DD`` date), else any string.

Numbers get no range: the teacher's extremes are not the task's. The schema is published only
when it accepts every answer it was learned from (``Learned.accepted`` = ``examples``), which
also guards this module against itself.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

import orjson
import re2
from jsonschema import Draft202012Validator

# A string field becomes an enum only with at most this many distinct values...
ENUM_MAX_VALUES: Final = 32
# ...each seen this many times on average (a few examples of free text never qualify).
ENUM_MIN_REPEATS: Final = 4
# Formats a string field takes when every value has one: name -> anchored RE2 pattern.
FORMATS: Final = {
    "date": r"^\d{4}-\d{2}-\d{2}$",
    "date-time": r"^\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}(:\d{2}(\.\d+)?)?(Z|[+-]\d{2}:?\d{2})?$",
    "time": r"^\d{2}:\d{2}(:\d{2})?$",
    "uuid": r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$",
}
_COMPILED: Final = {name: re2.compile(pattern) for name, pattern in FORMATS.items()}
# JSON Schema's type names, in the order a type list is written.
_TYPES: Final = ("object", "array", "string", "integer", "number", "boolean", "null")


@dataclass(frozen=True)
class Learned:
    """A learned schema and how many of the answers it was learned from it accepts."""

    schema: dict[str, Any]
    examples: int
    accepted: int

    @property
    def publishable(self) -> bool:
        return self.examples > 0 and self.accepted == self.examples

    def fit(self) -> dict[str, Any]:
        """``protege.json``'s ``output_schema_fit``: the share of training answers accepted."""
        return {"examples": self.examples, "accepted": self.accepted,
                "share": self.accepted / self.examples if self.examples else 0.0}  # fmt: skip


@dataclass
class _Shape:
    """What the values seen at one place of the answers had in common."""

    types: Counter[str] = field(default_factory=Counter)
    keys: dict[str, _Shape] = field(default_factory=dict)  # first-seen order
    key_counts: Counter[str] = field(default_factory=Counter)
    items: _Shape | None = None
    strings: Counter[str] = field(default_factory=Counter)
    many_strings: bool = False  # more distinct strings than an enum may hold
    formats: set[str] | None = None  # formats every string so far has; None: no string yet

    def add(self, value: Any) -> None:
        kind = _type_of(value)
        self.types[kind] += 1
        if kind == "object":
            for key, child in value.items():
                self.key_counts[key] += 1
                self.keys.setdefault(key, _Shape()).add(child)
        elif kind == "array":
            for item in value:
                if self.items is None:
                    self.items = _Shape()
                self.items.add(item)
        elif kind == "string":
            self._add_string(value)

    def _add_string(self, value: str) -> None:
        if not self.many_strings:
            self.strings[value] += 1
            if len(self.strings) > ENUM_MAX_VALUES:
                self.many_strings = True
                self.strings.clear()
        found = {name for name, pattern in _COMPILED.items() if pattern.search(value)}
        self.formats = found if self.formats is None else self.formats & found

    def schema(self) -> dict[str, Any]:
        types = _type_list(self.types)
        out: dict[str, Any] = {"type": types[0] if len(types) == 1 else types}
        if "object" in types:
            out["properties"] = {key: shape.schema() for key, shape in self.keys.items()}
            out["required"] = [k for k in self.keys if self.key_counts[k] == self.types["object"]]
            out["additionalProperties"] = False
        if "array" in types and self.items is not None:
            out["items"] = self.items.schema()
        if "string" in types:
            out.update(self._string_rule())
        return out

    def _string_rule(self) -> dict[str, Any]:
        """An enum of the few recurring values (where only strings, or null, occur), else the
        format every value has, else nothing."""
        few = not self.many_strings and self.types["string"] >= ENUM_MIN_REPEATS * len(self.strings)
        if few and set(self.types) <= {"string", "null"}:
            values: list[Any] = sorted(self.strings)
            if "null" in self.types:
                values.append(None)  # an enum bounds every type: null stays allowed
            return {"enum": values}
        if self.formats:
            return {"pattern": FORMATS[min(self.formats)]}
        return {}


def learn_schema(answers: Sequence[str]) -> Learned | None:
    """The schema of ``answers`` (the teacher's texts), or None when they are not all JSON
    objects, nor all JSON arrays."""
    values = [_parsed(text) for text in answers]
    if not values or any(v is _NOT_JSON for v in values):
        return None
    kinds = {_type_of(v) for v in values}
    if kinds not in ({"object"}, {"array"}):
        return None
    shape = _Shape()
    for value in values:
        shape.add(value)
    # No "$schema": the keywords used read the same in every draft, and some constrained
    # decoders refuse keywords they do not know.
    schema = shape.schema()
    return Learned(schema, len(values), _accepted(schema, values))


def _accepted(schema: dict[str, Any], values: Iterable[Any]) -> int:
    validator = Draft202012Validator(schema, format_checker=None)
    return sum(1 for value in values if validator.is_valid(value))


_NOT_JSON: Final = object()


def _parsed(text: str) -> Any:
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError:
        return _NOT_JSON


def _type_of(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    return "array" if isinstance(value, list) else "object"


def _type_list(types: Counter[str]) -> list[str]:
    """The JSON Schema types of what was seen (integer folded into number when both were)."""
    seen = set(types)
    if "number" in seen:
        seen.discard("integer")
    return [t for t in _TYPES if t in seen]
