"""The consensus of a teacher's answers to one request: pure functions (``trainer.relabel``).

The answers are the original one first, then the K samples (the playbook's "aggregate your
teachers": a majority vote over several answers of a teacher beats any one of them).

- A label task (a ``label`` rule): the vote is on the label each answer reads as. The winner
  must hold at least ``consensus`` of all the answers (an answer with no label votes for "no
  label"; a tie goes to the original's). When the original's label wins, the original stands
  as it was; otherwise, with a ``json_path`` rule, the original's JSON with the winning value
  put at that path (its other fields and its formatting kept); with a ``regex`` rule, the first
  sample that reads as the winner.
- A JSON task (every answer a JSON object): one vote per top-level field over the union of the
  answers' fields (a field missing from an answer votes "absent"; an answer that is not a JSON
  object votes for nothing). Every field's winner must hold ``consensus``; the agreement is the
  weakest field's share. The winning values, in the original's key order (new keys after, in
  the order first seen) and in its formatting (compact, spaced or indented, fenced or not),
  are the new answer; the original text stands when they are its own.
- Free text (``pick``): the pairwise judge's verdicts "is answer i as good as answer j"; the
  answer judged as good as the most others wins (a tie: the earlier, the original first), and
  its share of the others must reach ``consensus``.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

from core.answers import NOT_JSON, canonical_json, read_json
from trainer.labels import extract_label
from trainer.settings import LabelRule

# Why an example has no consensus (the relabel card counts them).
NO_CONSENSUS: Final = "no_consensus"
NO_LABEL: Final = "no_label"  # the winning answer has no label
UNKNOWN_LABEL: Final = "unknown_label"  # the winner is outside the task's classes
NOT_JSON_ANSWER: Final = "not_json"  # the original, or most answers, not a JSON object
UNJUDGED: Final = "unjudged"  # free text: a pair the judge gave no verdict on

_ABSENT: Final = b"\x00absent"  # the vote of an answer missing a field
_INVALID: Final = b"\x00invalid"  # the vote of an answer that is not a JSON object
_FENCE: Final = "```"


@dataclass(frozen=True)
class Consensus:
    """The answers' verdict: the new answer (None: none agreed on), the agreement, why none."""

    completion: str | None
    agreement: float
    reason: str | None = None

    @property
    def kept(self) -> bool:
        return self.completion is not None


def majority(votes: Sequence[Hashable]) -> tuple[Any, float]:
    """The most common vote (a tie: the first cast) and its share of all the votes."""
    winner, count = Counter(votes).most_common(1)[0]
    return winner, count / len(votes)


def label_consensus(
    original: str,
    samples: Sequence[str],
    rule: LabelRule,
    classes: Sequence[str],
    consensus: float,
) -> Consensus:
    """The consensus of a label task's answers (see the module doc)."""
    labels = [extract_label(answer, rule) for answer in (original, *samples)]
    winner, share = majority(labels)
    if share < consensus:
        return Consensus(None, share, NO_CONSENSUS)
    if winner is None:
        return Consensus(None, share, NO_LABEL)
    if classes and winner not in classes:
        return Consensus(None, share, UNKNOWN_LABEL)
    if winner == labels[0]:
        return Consensus(original, share)
    first = next(s for s, label in zip(samples, labels[1:], strict=True) if label == winner)
    if rule.json_path is None or labels[0] is None:  # nothing of the original to keep
        return Consensus(first, share)
    steps = rule.json_path.split(".")[1:]
    value = _at(read_json(first), steps)
    return Consensus(render_like(original, _with(read_json(original), steps, value)), share)


def field_consensus(original: str, samples: Sequence[str], consensus: float) -> Consensus:
    """The consensus of a JSON task's answers, field by field (see the module doc)."""
    objects = [read_json(answer) for answer in (original, *samples)]
    if not isinstance(objects[0], dict):
        return Consensus(None, 0.0, NOT_JSON_ANSWER)
    keys = list(dict.fromkeys(k for o in objects if isinstance(o, dict) for k in o))
    values: dict[bytes, Any] = {}
    winners: dict[str, bytes] = {}
    agreement = 1.0
    for key in keys:
        votes = [_vote(o, key, values) for o in objects]
        winner, share = majority(votes)
        agreement = min(agreement, share)
        if share < consensus:
            return Consensus(None, agreement, NO_CONSENSUS)
        if winner == _INVALID:
            return Consensus(None, agreement, NOT_JSON_ANSWER)
        winners[key] = winner
    chosen = {k: values[w] for k, w in winners.items() if w != _ABSENT}
    if list(chosen) == list(objects[0]) and all(
        winners[k] == canonical_json(v) for k, v in objects[0].items()
    ):
        return Consensus(original, agreement)
    return Consensus(render_like(original, chosen), agreement)


def _vote(answer: Any, key: str, values: dict[bytes, Any]) -> bytes:
    """One answer's vote on ``key``: its value's canonical JSON (first value seen kept)."""
    if not isinstance(answer, dict):
        return _INVALID
    if key not in answer:
        return _ABSENT
    vote = canonical_json(answer[key])
    values.setdefault(vote, answer[key])
    return vote


def _at(doc: Any, steps: Sequence[str]) -> Any:
    for step in steps:
        doc = doc[int(step)] if isinstance(doc, list) else doc[step]
    return doc


def _with(doc: Any, steps: Sequence[str], value: Any) -> Any:
    """``doc`` (a JSON value) with ``value`` at the path ``steps``; ``doc`` left unchanged."""
    if not steps:
        return value
    head, rest = steps[0], steps[1:]
    if isinstance(doc, list):
        index = int(head)
        return [_with(v, rest, value) if i == index else v for i, v in enumerate(doc)]
    return {k: _with(v, rest, value) if k == head else v for k, v in doc.items()}


_STYLES: Final[tuple[Callable[[Any], str], ...]] = (
    lambda o: json.dumps(o, ensure_ascii=False, separators=(",", ":")),  # orjson's, compact
    lambda o: json.dumps(o, ensure_ascii=False),  # ", " and ": "
    lambda o: json.dumps(o, ensure_ascii=False, indent=2),
    lambda o: json.dumps(o, ensure_ascii=False, indent=4),
    lambda o: json.dumps(o, separators=(",", ":")),  # \u escapes
    lambda o: json.dumps(o),
)


def render_like(original: str, value: Any) -> str:
    """``value`` as JSON written the way ``original`` (a JSON answer) is: the same separators
    or indentation, the same code fence and surrounding whitespace; compact when unsure."""
    body = original.strip()
    lead = original[: len(original) - len(original.lstrip())]
    trail = original[len(original.rstrip()) :]
    opening = closing = ""
    if body.startswith(_FENCE):
        opening, _, body = body.partition("\n")
        body = body.rstrip()
        if body.endswith(_FENCE):
            body, closing = body[: -len(_FENCE)].rstrip(), _FENCE
    parsed = read_json(body)
    style = next((f for f in _STYLES if parsed is not NOT_JSON and f(parsed) == body), _STYLES[0])
    text = style(value)
    if opening:
        text = f"{opening}\n{text}\n{closing}" if closing else f"{opening}\n{text}"
    return f"{lead}{text}{trail}"


def pick(count: int, verdicts: Mapping[tuple[int, int], str], consensus: float) -> tuple[
    int | None, float, str | None
]:
    """``(winner, agreement, reason)`` among ``count`` free-text answers, from the pairwise
    verdicts ``(i, j) -> pass|fail|error|skipped`` ("is answer i as good as answer j").

    No winner (None) when a verdict is missing (``unjudged``) or the best answer is as good as
    fewer than ``consensus`` of the others (``no_consensus``)."""
    if count < 2:
        return 0, 1.0, None
    pairs = [(i, j) for i in range(count) for j in range(count) if i != j]
    if any(verdicts.get(pair) not in ("pass", "fail") for pair in pairs):
        return None, 0.0, UNJUDGED
    scores = [sum(verdicts[(i, j)] == "pass" for j in range(count) if j != i) for i in
              range(count)]  # fmt: skip
    best = max(range(count), key=lambda i: (scores[i], -i))
    agreement = scores[best] / (count - 1)
    if agreement < consensus:
        return None, agreement, NO_CONSENSUS
    return best, agreement, None
