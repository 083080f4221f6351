"""How far a student's shadow answer agrees with the teacher's answer to the same request.

Each side is read as its first choice's text or, when that choice made tool calls, as the calls'
canonical text (``core.answers``). The measures, each in [0, 1]:

    exact        1 when the two texts are identical
    normalized   1 when they are equal once normalized: JSON as canonical JSON, other text
                 case-folded with whitespace collapsed and trailing punctuation dropped
    similarity   rapidfuzz's ``fuzz.ratio`` of the normalized texts (their first
                 ``SIMILARITY_CHARS`` characters each, so the cost is bounded)
    json_fields  when the teacher answered a JSON object: the share of its top-level fields
                 (the first ``MAX_FIELDS``) the student's JSON object holds with the same value

``Agreement.overall`` is the one number the guardrails judge: json_fields where there is one,
else similarity.
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import islice
from typing import Any, Final

from rapidfuzz import fuzz

from core.answers import answer_text, normal_form, read_structured, same_field, tool_calls_text

# Characters of each normalized answer the similarity reads.
SIMILARITY_CHARS: Final = 5_000
# Teacher fields compared per answer, in the teacher's order (a bounded set of metric labels).
MAX_FIELDS: Final = 32
# Decimal places kept by ``Agreement.to_dict``.
_DIGITS: Final = 4


@dataclass(frozen=True, slots=True)
class Agreement:
    exact: float  # 1.0 or 0.0
    normalized: float  # 1.0 or 0.0
    similarity: float  # 0..1
    # Per teacher field: the student holds the same value; None when the teacher's answer is
    # not a JSON object.
    fields: dict[str, bool] | None
    # Mean of fields (1.0 for an object without fields); None when fields is.
    json_fields: float | None

    @property
    def overall(self) -> float:
        """json_fields when the teacher answered a JSON object, else similarity."""
        return self.similarity if self.json_fields is None else self.json_fields

    def to_dict(self) -> dict[str, Any]:
        """The scores as plain JSON values, floats rounded, for an exchange record."""
        return {
            "exact": self.exact,
            "normalized": self.normalized,
            "similarity": round(self.similarity, _DIGITS),
            "fields": None if self.fields is None else dict(self.fields),
            "json_fields": None if self.json_fields is None else round(self.json_fields, _DIGITS),
            "overall": round(self.overall, _DIGITS),
        }


def score(teacher: dict[str, Any], student: dict[str, Any]) -> Agreement:
    """The student's ``chat.completion`` scored against the teacher's for the same request."""
    teacher_text, student_text = compared_text(teacher), compared_text(student)
    teacher_value, student_value = read_structured(teacher_text), read_structured(student_text)
    teacher_normal = normal_form(teacher_text, teacher_value)
    student_normal = normal_form(student_text, student_value)
    fields = _fields(teacher_value, student_value)
    return Agreement(
        exact=float(teacher_text == student_text),
        normalized=float(teacher_normal == student_normal),
        similarity=_similarity(teacher_normal, student_normal),
        fields=fields,
        json_fields=None if fields is None else _share(fields),
    )


def compared_text(completion: dict[str, Any]) -> str:
    """What is compared of an answer: its tool calls' canonical text when its first choice
    made any, else its text."""
    return tool_calls_text(completion) or answer_text(completion)


def _similarity(a: str, b: str) -> float:
    return float(fuzz.ratio(a[:SIMILARITY_CHARS], b[:SIMILARITY_CHARS])) / 100.0


def _fields(teacher: Any, student: Any) -> dict[str, bool] | None:
    if not isinstance(teacher, dict):
        return None
    return {key: same_field(student, key, teacher[key]) for key in islice(teacher, MAX_FIELDS)}


def _share(fields: dict[str, bool]) -> float:
    return sum(fields.values()) / len(fields) if fields else 1.0
