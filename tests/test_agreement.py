"""Shadow agreement: a student's answer scored against the teacher's, against closed forms."""

from __future__ import annotations

from typing import Any

import pytest

from gateway.agreement import MAX_FIELDS, SIMILARITY_CHARS, Agreement, score


def _answer(content: Any = None, tool_calls: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    message: dict[str, Any] = {"role": "assistant", "content": content}
    if tool_calls is not None:
        message["tool_calls"] = tool_calls
    return {"object": "chat.completion", "choices": [{"index": 0, "message": message}]}


def _call(call_id: str, name: str, arguments: str) -> dict[str, Any]:
    return {"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}}


@pytest.mark.parametrize(
    ("teacher", "student", "exact", "normalized", "similarity"),
    [
        ("Paris is the capital.", "Paris is the capital.", 1.0, 1.0, 1.0),
        ("Paris is the capital.", "  paris IS the\n capital", 0.0, 1.0, 1.0),
        ("abcd", "abce", 0.0, 0.0, 0.75),  # Indel: 1 - 2 edits / 8 characters
        ("abc", "xyz", 0.0, 0.0, 0.0),
        ("", "", 1.0, 1.0, 1.0),
        ('{"a": 1, "b": 2}', '{"b":2,"a":1}', 0.0, 1.0, 1.0),
        ('{"a": 1}', '```json\n{"a": 1}\n```', 0.0, 1.0, 1.0),
        ("[1, 2]", "[2, 1]", 0.0, 0.0, 0.6),  # "[1,2]" vs "[2,1]": 1 - 4 / 10
    ],
)
def test_text_measures(
    teacher: str, student: str, exact: float, normalized: float, similarity: float
) -> None:
    """exact compares the texts, normalized their normal forms, similarity fuzz.ratio of those."""
    got = score(_answer(teacher), _answer(student))
    assert (got.exact, got.normalized) == (exact, normalized)
    assert got.similarity == pytest.approx(similarity)


@pytest.mark.parametrize(
    ("teacher", "student", "fields", "json_fields"),
    [
        ('{"a": 1, "b": "x"}', '{"b": "x", "a": 1}', {"a": True, "b": True}, 1.0),
        ('{"a": 1, "b": "x"}', '{"a": 1, "b": "y"}', {"a": True, "b": False}, 0.5),
        ('{"a": 1, "b": "x"}', '{"a": 1}', {"a": True, "b": False}, 0.5),
        ('{"a": {"k": [1, 2]}}', '{"a": {"k": [1, 2]}, "z": 0}', {"a": True}, 1.0),
        ('{"a": 1}', '{"a": 1.5}', {"a": False}, 0.0),
        ('{"a": 1, "b": "x"}', "a is 1, b is x", {"a": False, "b": False}, 0.0),
        ('{"a": 1}', "[1]", {"a": False}, 0.0),
        ("{}", '{"a": 1}', {}, 1.0),
        ("[1, 2]", "[1, 2]", None, None),
        ("a is 1", '{"a": 1}', None, None),
        ('"a"', '"a"', None, None),
    ],
)
def test_json_fields(
    teacher: str, student: str, fields: dict[str, bool] | None, json_fields: float | None
) -> None:
    """Each top-level field of a teacher's JSON object agrees when the student holds its value;
    a teacher answer that is not an object has no fields."""
    got = score(_answer(teacher), _answer(student))
    assert got.fields == fields
    assert got.json_fields == json_fields


def test_fields_are_bounded_in_teacher_order() -> None:
    """At most MAX_FIELDS fields are compared: the teacher's first ones, in its order."""
    names = [f"f{i:02d}" for i in range(MAX_FIELDS + 8)][::-1]
    teacher = "{" + ", ".join(f'"{name}": 1' for name in names) + "}"
    got = score(_answer(teacher), _answer(teacher))
    assert got.fields is not None
    assert list(got.fields) == names[:MAX_FIELDS]
    assert got.json_fields == 1.0


@pytest.mark.parametrize(
    ("agreement", "overall"),
    [
        (Agreement(0.0, 0.0, 0.9, {"a": True, "b": False}, 0.5), 0.5),
        (Agreement(0.0, 0.0, 0.9, None, None), 0.9),
        (Agreement(1.0, 1.0, 1.0, {}, 1.0), 1.0),
    ],
)
def test_overall(agreement: Agreement, overall: float) -> None:
    """overall is json_fields when the teacher answered a JSON object, else similarity."""
    assert agreement.overall == overall


SEARCH = '{"city": "Paris", "units": "c"}'


@pytest.mark.parametrize(
    ("teacher", "student", "exact", "normalized"),
    [
        (
            _answer(None, [_call("call_a", "weather", SEARCH)]),
            _answer(None, [_call("call_b", "weather", '{"units":"c","city":"Paris"}')]),
            1.0,
            1.0,
        ),
        (
            _answer("", [_call("call_a", "weather", SEARCH)]),
            _answer("Let me look.", [_call("call_b", "weather", SEARCH)]),
            1.0,
            1.0,
        ),
        (
            _answer(None, [_call("call_a", "weather", SEARCH)]),
            _answer(None, [_call("call_a", "weather", '{"city": "Lyon", "units": "c"}')]),
            0.0,
            0.0,
        ),
        (
            _answer(None, [_call("call_a", "weather", SEARCH)]),
            _answer(None, [_call("call_a", "forecast", SEARCH)]),
            0.0,
            0.0,
        ),
        (_answer(None, [_call("call_a", "weather", SEARCH)]), _answer("It is sunny."), 0.0, 0.0),
    ],
)
def test_tool_calls(
    teacher: dict[str, Any], student: dict[str, Any], exact: float, normalized: float
) -> None:
    """Answers making tool calls are compared by the calls' names and arguments, not their ids
    or the text beside them."""
    got = score(teacher, student)
    assert (got.exact, got.normalized) == (exact, normalized)
    assert got.fields is None
    assert got.overall == got.similarity


def test_content_parts_read_as_text() -> None:
    """An answer given as content parts is read as its parts' text joined by a newline."""
    parts = [{"type": "text", "text": "Paris is"}, {"type": "text", "text": "the capital."}]
    got = score(_answer("Paris is\nthe capital."), _answer(parts))
    assert got.exact == 1.0


def test_similarity_reads_a_bounded_prefix() -> None:
    """Similarity compares only the first SIMILARITY_CHARS characters of each answer."""
    prefix = "a" * SIMILARITY_CHARS
    got = score(_answer(prefix + "b" * 5000), _answer(prefix + "c" * 5000))
    assert (got.exact, got.normalized, got.similarity) == (0.0, 0.0, 1.0)


def test_missing_answers_agree_as_empty() -> None:
    """Completions without a readable choice are read as empty answers."""
    got = score({"choices": []}, {})
    assert (got.exact, got.normalized, got.similarity, got.fields) == (1.0, 1.0, 1.0, None)


def test_to_dict() -> None:
    """to_dict gives plain JSON values, floats rounded to four places, overall included."""
    got = Agreement(0.0, 0.0, 2 / 3, {"a": True, "b": False, "c": False}, 1 / 3)
    assert got.to_dict() == {
        "exact": 0.0,
        "normalized": 0.0,
        "similarity": 0.6667,
        "fields": {"a": True, "b": False, "c": False},
        "json_fields": 0.3333,
        "overall": 0.3333,
    }
