"""Reading a class label out of an answer, by a task's ``label`` rule (see ``trainer.settings``).

Curation reads the reference label of every example this way, and evaluation reads the label a
model predicted the same way, so the two can never disagree on what an answer means.

- ``json_path: "$.a.b"``: the answer parsed as JSON (surrounding whitespace and a Markdown
  ```` ```json ```` fence are tolerated), then key ``a``, then key ``b``; a numeric step indexes
  an array (``$.items.0``).
- ``regex``: the first match of an RE2 pattern anywhere in the answer; its first capture group
  when the pattern has one and it took part in the match, else the whole match.

A label is a string: ``1`` reads as ``"1"``, ``true`` as ``"true"``, ``"spam"`` as ``"spam"``.
No label (``None``) when the answer is not JSON, the path is missing, the value is ``null``, an
object or an array, the pattern does not match, or what it found is empty.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

import re2

from core.answers import parse_json_answer
from trainer.settings import LabelRule


def extract_label(text: str, rule: LabelRule) -> str | None:
    """The class label ``rule`` reads from the answer ``text``, or ``None`` when there is none."""
    if rule.json_path is not None:
        return _label_at_path(text, rule.json_path)
    assert rule.regex is not None  # LabelRule holds exactly one of the two
    return _label_by_regex(text, rule.regex)


def label_text(value: Any) -> str | None:
    """A JSON scalar as a label string; ``None`` for null, objects, arrays and empty strings."""
    if value is None or isinstance(value, dict | list):
        return None
    if isinstance(value, bool):
        return "true" if value else "false"
    text = value if isinstance(value, str) else str(value)
    return text or None


def _label_at_path(text: str, path: str) -> str | None:
    try:
        value = parse_json_answer(text)
    except ValueError:
        return None
    for step in path.split(".")[1:]:
        if isinstance(value, dict) and step in value:
            value = value[step]
        elif isinstance(value, list) and step.isdigit() and int(step) < len(value):
            value = value[int(step)]
        else:
            return None
    return label_text(value)


def _label_by_regex(text: str, pattern: str) -> str | None:
    match = _compiled(pattern).search(text)
    if match is None:
        return None
    group = match.group(1) if match.re.groups else None
    found = group if group is not None else match.group(0)
    return found or None


@lru_cache(maxsize=64)
def _compiled(pattern: str) -> Any:
    return re2.compile(pattern)
