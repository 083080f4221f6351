"""The output schema learned from the teacher's JSON answers (trainer.output_schema)."""

from __future__ import annotations

import itertools

import orjson
import pytest
from jsonschema import Draft202012Validator

from trainer.output_schema import ENUM_MAX_VALUES, learn_schema

CATEGORIES = ("billing", "bug", "feature", "account", "shipping", "other")
PRIORITIES = ("low", "medium", "high")


def _tickets(n: int) -> list[str]:
    pairs = itertools.islice(itertools.cycle(itertools.product(CATEGORIES, PRIORITIES)), n)
    return [orjson.dumps({"category": c, "priority": p}).decode() for c, p in pairs]


def _valid(schema: dict, value: object) -> bool:
    return Draft202012Validator(schema).is_valid(value)


def test_a_classification_answer_learns_its_enums_and_required_keys() -> None:
    """Low-cardinality string fields become enums; every key is required; no other key."""
    learned = learn_schema(_tickets(90))
    assert learned is not None and learned.publishable
    schema = learned.schema
    assert schema["type"] == "object"
    assert schema["required"] == ["category", "priority"]
    assert schema["additionalProperties"] is False
    assert schema["properties"]["category"]["enum"] == sorted(CATEGORIES)
    assert schema["properties"]["priority"]["enum"] == sorted(PRIORITIES)
    assert _valid(schema, {"category": "bug", "priority": "low"})
    for invented in ("unimportant", " low", "righteous"):
        assert not _valid(schema, {"category": "bug", "priority": invented})
    assert not _valid(schema, {"category": "bug"})
    assert not _valid(schema, {"category": "bug", "priority": "low", "extra": 1})


def test_free_text_and_names_never_become_enums() -> None:
    """A string field whose values rarely repeat stays any string."""
    answers = [orjson.dumps({"name": f"customer {i}", "note": "ok"}).decode() for i in range(40)]
    schema = learn_schema(answers).schema  # type: ignore[union-attr]
    assert "enum" not in schema["properties"]["name"]
    assert schema["properties"]["note"]["enum"] == ["ok"]
    assert _valid(schema, {"name": "someone new", "note": "ok"})


def test_few_examples_make_no_enum() -> None:
    """Three distinct values in five answers are not enough evidence of a closed set."""
    answers = [orjson.dumps({"city": c}).decode() for c in ("Oslo", "Rome", "Oslo", "Lima", "Rome")]
    schema = learn_schema(answers).schema  # type: ignore[union-attr]
    assert schema["properties"]["city"] == {"type": "string"}


def test_too_many_distinct_values_make_no_enum() -> None:
    """More distinct values than an enum may hold, however often each recurs."""
    values = [f"v{i}" for i in range(ENUM_MAX_VALUES + 1)] * 10
    schema = learn_schema([orjson.dumps({"k": v}).decode() for v in values]).schema  # type: ignore[union-attr]
    assert "enum" not in schema["properties"]["k"]


def test_a_format_every_value_agrees_on_becomes_a_pattern() -> None:
    """Dates in YYYY-MM-DD give a pattern; one odd value drops it."""
    dates = [orjson.dumps({"due": f"2026-{m:02d}-{d:02d}"}).decode()
             for m in range(1, 13) for d in (3, 17)]  # fmt: skip
    schema = learn_schema(dates).schema  # type: ignore[union-attr]
    assert _valid(schema, {"due": "2027-01-31"})
    assert not _valid(schema, {"due": "31/01/2027"})
    mixed = learn_schema([*dates, orjson.dumps({"due": "next week"}).decode()])
    assert mixed is not None and "pattern" not in mixed.schema["properties"]["due"]


def test_types_optional_keys_nulls_and_nesting() -> None:
    """Integers widen to numbers, a key absent somewhere is optional, nulls stay allowed,
    nested objects and arrays get their own schema."""
    values = [
        {"total": 12, "lines": [{"sku": "a", "qty": 1}], "ref": None},
        {"total": 9.5, "lines": [], "ref": "x-1"},
        {"total": 3, "lines": [{"sku": "b", "qty": 2}, {"sku": "c", "qty": 1}]},
    ]
    learned = learn_schema([orjson.dumps(v).decode() for v in values])
    assert learned is not None and learned.publishable
    props = learned.schema["properties"]
    assert props["total"]["type"] == "number"
    assert learned.schema["required"] == ["total", "lines"]
    assert props["ref"]["type"] == ["string", "null"]
    item = props["lines"]["items"]
    assert item["required"] == ["sku", "qty"] and item["properties"]["qty"]["type"] == "integer"
    assert not _valid(learned.schema, {"total": 1, "lines": [{"sku": "a"}]})


@pytest.mark.parametrize(
    "answers",
    [
        [],
        ["billing", "bug"],
        ['{"a": 1}', "not json"],
        ['{"a": 1}', "[1, 2]"],
        ["1", "2"],
        ['```json\n{"a": 1}\n```'],
    ],
)
def test_no_schema_unless_every_answer_is_a_json_object_or_every_one_an_array(
    answers: list[str],
) -> None:
    """Plain text, a mix, scalars or fenced JSON learn nothing."""
    assert learn_schema(answers) is None


def test_the_schema_accepts_every_answer_it_was_learned_from() -> None:
    """The fit is counted, and publishable only at 100 %."""
    learned = learn_schema(_tickets(36))
    assert learned is not None
    assert learned.fit() == {"examples": 36, "accepted": 36, "share": 1.0}
