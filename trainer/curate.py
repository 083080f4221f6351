"""Curation: from exchange records to the examples a student learns from. Pure functions.

Per record, ``Rules.examine`` (rules compiled once from a task's ``CurationConfig``):

0. Negative feedback from the application (``trainer.feedback``) drops the record, unless a
   correction replaces its answer.
1. ``to_example``: only chat exchanges with a usable answer. A human correction (request id ->
   gold output) replaces the logged answer and stands whatever that answer was: a failed, cut
   or student exchange with a correction is an example. Otherwise the exchange must be a
   complete, successful teacher answer with text (not only tool calls, not cut by max_tokens).
2. ``scrub``: PII redacted again (built-in rules) in the messages and the completion.
3. Rule filters, on the gold text where corrected: prompt and completion length, must /
   must-not patterns (RE2), teacher refusals.
4. The label, when the task has a ``LabelRule``.

Over all examples, ``curate_splits``: test-group exclusion (frozen tests), exact and near
duplicates (``trainer.dedup``), the per-group cap, the task's criteria when it has some
(``trainer.screening``), the split by group, then class balance.

Every drop has a reason (the constants below), so a dataset card can count them.

Splits: a group's place is ``group_position(group, task)``, a hash, so a group lands in the
same set in every build and never in two. Groups below ``test_fraction`` form the test pool:
``test-indist`` is the pool as is; ``test-balanced`` draws up to ``test_balanced_per_class``
examples of every class present in the pool, the same number of each. A free-text task (no
label rule) has an empty ``test-balanced``: without classes there is nothing to balance, and
``test-indist`` is its test set. Balancing (``balance: true``) applies to train only, so the
in-distribution test set keeps the real traffic mix. The per-group cap applies before the
split, to every set.

Sampling (cap, balance, test-balanced) is seeded and stable: examples are ranked by a hash of
seed and request id, so new data never reshuffles which old examples are chosen.
"""

from __future__ import annotations

import hashlib
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any, Final, NamedTuple

import orjson
import re2

from core.redact import Redactor
from core.text import content_text
from trainer.dedup import deduplicate
from trainer.examples import Example
from trainer.labels import extract_label
from trainer.settings import CurationConfig

# Why a record or example was dropped.
NOT_CHAT: Final = "not_chat"  # another endpoint
NOT_TEACHER: Final = "not_teacher"  # a student's answer (shadow, canary, ...)
INCOMPLETE: Final = "incomplete"  # a cut or aborted stream
ERROR_STATUS: Final = "error_status"  # the answer was not HTTP 200
BAD_REQUEST: Final = "bad_request"  # no JSON request with a list of messages
BAD_RESPONSE: Final = "bad_response"  # no JSON response with a first choice's message
TOOL_CALLS_ONLY: Final = "tool_calls_only"  # an answer with tool calls and no text
EMPTY_COMPLETION: Final = "empty_completion"
TRUNCATED: Final = "truncated"  # finish_reason "length": cut at max_tokens
CONTENT_FILTER: Final = "content_filter"  # finish_reason "content_filter"
PROMPT_TOO_SHORT: Final = "prompt_too_short"
PROMPT_TOO_LONG: Final = "prompt_too_long"
COMPLETION_TOO_SHORT: Final = "completion_too_short"
COMPLETION_TOO_LONG: Final = "completion_too_long"
MUST_MATCH: Final = "must_match"  # a must_match pattern found nothing
MUST_NOT_MATCH: Final = "must_not_match"
REFUSAL: Final = "refusal"
NO_LABEL: Final = "no_label"  # the label rule found nothing (or the JSON did not parse)
UNKNOWN_LABEL: Final = "unknown_label"  # a label outside the configured classes
NEGATIVE_FEEDBACK: Final = "negative_feedback"  # the application said the answer was bad
TEST_GROUP: Final = "test_group"  # the group is in the frozen test sets
GROUP_CAP: Final = "group_cap"
BALANCE: Final = "balance"
# Also from trainer.dedup: "duplicate", "near_duplicate", "test_overlap".

_CHAT: Final = "chat.completions"
_PARAMS: Final = ("response_format", "tools", "tool_choice")
# Request settings that decide how an answer is sampled (kept as the example's ``decoding``).
_SAMPLING: Final = ("temperature", "top_p")
_FINISH_DROPS: Final = {"length": TRUNCATED, "content_filter": CONTENT_FILTER}
_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)


class Outcome(NamedTuple):
    """One record's fate: the example, or None and the reason it was dropped."""

    example: Example | None
    reason: str | None = None


def _drop(reason: str) -> Outcome:
    return Outcome(None, reason)


def to_example(record: Mapping[str, Any], corrections: Mapping[str, str] | None = None) -> Outcome:
    """The example an exchange record teaches, or why it teaches none (see the module doc)."""
    if record.get("endpoint") != _CHAT:
        return _drop(NOT_CHAT)
    request = _json_object(record.get("request"))
    messages = request.get("messages")
    if not isinstance(messages, list) or not messages:
        return _drop(BAD_REQUEST)
    if not all(isinstance(m, dict) for m in messages):
        return _drop(BAD_REQUEST)
    request_id = str(record["request_id"])
    gold = (corrections or {}).get(request_id)
    if gold is not None:
        completion, source = gold, "correction"
    else:
        failure = _failure(record)
        if failure is not None:
            return _drop(failure)
        answer, reason = _answer(record.get("response"))
        if answer is None:
            return _drop(reason or BAD_RESPONSE)
        completion, source = answer, "teacher"
    example = Example(
        request_id=request_id,
        messages=messages,
        completion=completion,
        group=str(record.get("user") or record.get("client") or request_id),
        source=source,
        params={k: request[k] for k in _PARAMS if k in request},
        decoding=sampling_settings(request),
        ts=_timestamp(record["ts"]),
    )
    return Outcome(example)


def sampling_settings(request: Mapping[str, Any]) -> dict[str, float]:
    """The sampling settings a request set: its numeric ``temperature`` and ``top_p``."""
    return {
        key: float(value)
        for key in _SAMPLING
        if isinstance(value := request.get(key), int | float) and not isinstance(value, bool)
    }


def _failure(record: Mapping[str, Any]) -> str | None:
    """Why a logged answer is not a teacher's finished success, if it is not."""
    if record.get("backend") != "teacher":
        return NOT_TEACHER
    if not record.get("complete"):
        return INCOMPLETE
    if record.get("status") != 200:
        return ERROR_STATUS
    return None


def _answer(response: Any) -> tuple[str | None, str | None]:
    """``(text, None)`` of the first choice's message, or ``(None, reason)``."""
    choices = _json_object(response).get("choices")
    first = choices[0] if isinstance(choices, list) and choices else None
    message = first.get("message") if isinstance(first, dict) else None
    if not isinstance(first, dict) or not isinstance(message, dict):
        return None, BAD_RESPONSE
    finish = _FINISH_DROPS.get(str(first.get("finish_reason")))
    if finish is not None:
        return None, finish
    text = content_text(message.get("content"))
    if text.strip():
        return text, None
    if message.get("tool_calls") or message.get("function_call"):
        return None, TOOL_CALLS_ONLY
    return None, EMPTY_COMPLETION


def _json_object(text: Any) -> dict[str, Any]:
    """``text`` parsed as a JSON object; empty when it is not one."""
    if not isinstance(text, str | bytes):
        return {}
    try:
        doc = orjson.loads(text)
    except orjson.JSONDecodeError:
        return {}
    return doc if isinstance(doc, dict) else {}


def _timestamp(ts: datetime | int) -> datetime:
    """A record's ``ts``: a datetime from a store read, or integer microseconds (spool form)."""
    if isinstance(ts, datetime):
        return ts
    return datetime.fromtimestamp(ts / 1_000_000, tz=UTC)


def scrub(example: Example, redactor: Redactor) -> Example:
    """``example`` with the redactor applied to every message text and to the completion."""
    return replace(
        example,
        messages=[_scrub_message(m, redactor) for m in example.messages],
        completion=redactor.text(example.completion),
    )


def _scrub_message(message: dict[str, Any], redactor: Redactor) -> dict[str, Any]:
    content = message.get("content")
    if isinstance(content, str):
        return {**message, "content": redactor.text(content)}
    if isinstance(content, list):
        parts = [
            {**p, "text": redactor.text(p["text"])}
            if isinstance(p, dict) and isinstance(p.get("text"), str)
            else p
            for p in content
        ]
        return {**message, "content": parts}
    return message


def prompt_chars(example: Example) -> int:
    """The length of the prompt: the characters of every message's text."""
    return sum(len(content_text(m.get("content"))) for m in example.messages)


@dataclass(frozen=True)
class Rules:
    """A task's ``CurationConfig`` with its patterns compiled, applied record by record."""

    config: CurationConfig
    must_match: tuple[Any, ...]
    must_not_match: tuple[Any, ...]
    refusals: tuple[str, ...]
    redactor: Redactor

    @classmethod
    def from_config(cls, config: CurationConfig) -> Rules:
        """Compile once; a bad pattern fails here, naming its key."""
        if config.label is not None and config.label.regex is not None:
            _compile(config.label.regex, "label.regex")
        return cls(
            config=config,
            must_match=tuple(
                _compile(p, f"must_match[{i}]") for i, p in enumerate(config.must_match)
            ),
            must_not_match=tuple(
                _compile(p, f"must_not_match[{i}]") for i, p in enumerate(config.must_not_match)
            ),
            refusals=tuple(_fold(p) for p in config.refusal_phrases if p.strip()),
            redactor=Redactor((), builtin=True),
        )

    def examine(
        self,
        record: Mapping[str, Any],
        corrections: Mapping[str, str] | None = None,
        negative: AbstractSet[str] = frozenset(),
    ) -> Outcome:
        """A record through negative feedback (the request ids in ``negative``), conversion,
        scrubbing, the filters and labelling."""
        request_id = str(record.get("request_id"))
        if request_id in negative and request_id not in (corrections or {}):
            return _drop(NEGATIVE_FEEDBACK)
        outcome = to_example(record, corrections)
        if outcome.example is None:
            return outcome
        example = scrub(outcome.example, self.redactor)
        reason = self.check(example)
        return _drop(reason) if reason else self.labelled(example)

    def check(self, example: Example) -> str | None:
        """Why ``example`` fails the rule filters, or None when it passes."""
        c = self.config
        prompt, text = prompt_chars(example), example.completion
        checks = (
            (prompt < c.min_prompt_chars, PROMPT_TOO_SHORT),
            (prompt > c.max_prompt_chars, PROMPT_TOO_LONG),
            (len(text) < c.min_completion_chars, COMPLETION_TOO_SHORT),
            (len(text) > c.max_completion_chars, COMPLETION_TOO_LONG),
            (any(p.search(text) is None for p in self.must_match), MUST_MATCH),
            (any(p.search(text) is not None for p in self.must_not_match), MUST_NOT_MATCH),
        )
        for failed, reason in checks:
            if failed:
                return reason
        folded = _fold(text)
        return REFUSAL if any(p in folded for p in self.refusals) else None

    def labelled(self, example: Example) -> Outcome:
        """``example`` with its label, or why it has none the task accepts."""
        rule = self.config.label
        if rule is None:
            return Outcome(example)
        label = extract_label(example.completion, rule)
        if label is None:
            return _drop(NO_LABEL)
        if self.config.classes and label not in self.config.classes:
            return _drop(UNKNOWN_LABEL)
        return Outcome(replace(example, label=label))


def _compile(pattern: str, key: str) -> Any:
    try:
        return re2.compile(pattern)
    except re2.error as exc:
        raise ValueError(f"curation: {key} is not a valid RE2 pattern {pattern!r}: {exc}") from exc


def _fold(text: str) -> str:
    """Casefolded, with typographic apostrophes (U+2019) made plain."""
    return text.replace("\u2019", "'").casefold()


def rank(seed: int, example: Example) -> bytes:
    """A seeded order of examples that adding others never changes."""
    return hashlib.blake2b(f"{seed}\x1f{example.request_id}".encode(), digest_size=8).digest()


def sample(examples: Sequence[Example], k: int, seed: int) -> list[Example]:
    """``k`` of ``examples`` (all if fewer), chosen by seeded rank."""
    return sorted(examples, key=lambda e: rank(seed, e))[:k]


def _by(examples: Iterable[Example], attr: str) -> dict[Any, list[Example]]:
    out: defaultdict[Any, list[Example]] = defaultdict(list)
    for example in examples:
        out[getattr(example, attr)].append(example)
    return out


def chronological(examples: Iterable[Example]) -> list[Example]:
    return sorted(examples, key=lambda e: (e.ts, e.request_id))


def cap_groups(examples: Sequence[Example], limit: int, seed: int) -> tuple[list[Example], int]:
    """At most ``limit`` examples per group (a seeded sample), and how many were dropped."""
    kept = [e for group in _by(examples, "group").values() for e in sample(group, limit, seed)]
    return chronological(kept), len(examples) - len(kept)


def balance(examples: Sequence[Example], seed: int) -> tuple[list[Example], int]:
    """Every class cut to the rarest class's count (seeded); unlabelled input is kept as is."""
    classes = _by((e for e in examples if e.label is not None), "label")
    if not classes:
        return list(examples), 0
    rarest = min(len(members) for members in classes.values())
    kept = [e for members in classes.values() for e in sample(members, rarest, seed)]
    return chronological(kept), len(examples) - len(kept)


def balanced_sample(pool: Sequence[Example], per_class: int, seed: int) -> list[Example]:
    """The same number (at most ``per_class``) of every class in ``pool``; empty unlabelled."""
    classes = _by((e for e in pool if e.label is not None), "label")
    if not classes:
        return []
    n = min(per_class, *(len(members) for members in classes.values()))
    return chronological(e for members in classes.values() for e in sample(members, n, seed))


def group_position(group: str, task: str) -> float:
    """Where ``group`` falls in [0, 1) for ``task``: fixed, so a group's set never changes."""
    digest = hashlib.blake2b(f"{task}\x1f{group}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64


@dataclass(frozen=True)
class FrozenTests:
    """Test sets made by an earlier build, and every group they hold: none of them trains."""

    splits: Mapping[str, list[Example]]  # test-indist, test-balanced
    groups: frozenset[str]


# Judges examples (the cheap filters passed), returning those kept and the drops by reason.
Screen = Callable[[list[Example]], tuple[list[Example], Counter[str]]]


def curate_splits(
    examples: Sequence[Example],
    task: str,
    config: CurationConfig,
    *,
    seed: int,
    frozen: FrozenTests | None = None,
    screen: Screen | None = None,
) -> tuple[dict[str, list[Example]], Counter[str]]:
    """Examined examples -> ``{train, test-indist, test-balanced}`` and the drops by reason.

    With ``frozen`` tests, those are the test sets; the examples of their groups, and repeats
    of their prompts, are dropped, and the rest all train. Otherwise groups split by hash.
    ``screen`` (the task's criteria, ``trainer.screening``) sees what the cheap filters kept,
    before the split and balancing, so these stay exact and no judge call is spent on an example
    dropped anyway; it never sees the frozen test sets.
    """
    drops: Counter[str] = Counter()
    reserved: list[Example] = []
    if frozen is not None:
        fresh = [e for e in examples if e.group not in frozen.groups]
        drops[TEST_GROUP] = len(examples) - len(fresh)
        examples = fresh
        reserved = [e for split in frozen.splits.values() for e in split]
    kept, dups = deduplicate(examples, config.near_duplicate_distance, reserved)
    drops.update(dups)
    kept, drops[GROUP_CAP] = cap_groups(kept, config.max_per_group, seed)
    if screen is not None:
        kept, screened = screen(kept)
        drops.update(screened)
    if frozen is not None:
        splits = {"train": kept, **{k: list(v) for k, v in frozen.splits.items()}}
    else:
        pool = [e for e in kept if group_position(e.group, task) < config.test_fraction]
        splits = {
            "train": [e for e in kept if group_position(e.group, task) >= config.test_fraction],
            "test-indist": pool,
            "test-balanced": balanced_sample(pool, config.test_balanced_per_class, seed),
        }
    if config.balance:
        splits["train"], drops[BALANCE] = balance(splits["train"], seed)
    return splits, +drops  # unary plus: without the zero counts
