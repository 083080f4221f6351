"""Redaction of captured text: PII and secrets never reach the log store.

Applied to logged requests and responses on the spool writer thread; the live answer to the
client is never altered. Only JSON string values are rewritten (never keys or numbers), so the
logged text stays valid JSON whatever the rules match.

Every record is redacted, so this is on the capture hot path. Patterns run on RE2 (linear time:
no configured rule can backtrack catastrophically). One pre-scan tests all rules at once: a
record in which no rule can match — the common case — costs one scan of its bytes and is kept
as it is. (The pre-scan reads raw JSON: a rule whose match may hold an escape, such as a bearer
token's ``\\/``, gives it a pattern that allows one.) Only a record with a candidate match is
parsed, and only a string with a candidate is resolved, rewritten and serialized again.

Resolution. Each rule finds its matches on its own, so a match one rule turns down never hides
another rule's match in or around it:

- An *isolated* rule's match may not be part of a longer word, number, decimal or path: the
  nearest character on each side that is not joining punctuation (``. + / -``) must be absent or
  other than a letter, digit or underscore — ``415-555-0132.`` ends a sentence, ``3.4111…`` is a
  decimal. The boundaries are part of the rule's RE2 pattern, so RE2 itself picks, at each
  start, the longest end they allow.
- A rule with a check (the card rule's Luhn test) that rejects a match tries the shorter
  matches at the same start, then the later starts inside it. An isolated rule tries every
  start (a match at one start never hides one at the next); any other rule goes on from the
  end of each match it keeps, as a plain regex scan does.
- Accepted matches that overlap are merged into one replacement, that of the match starting
  first (the longer one on equal starts, then the earlier rule): no accepted match is left
  partly in clear.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import orjson
import re2

from core.settings import RedactionConfig, RedactionRule

# Characters that make a match part of something longer (a word, an id, a number, a path), and
# the punctuation among them that only joins when a word character lies beyond it.
_WORD_CHARS = r"A-Za-z0-9_.+/-"
_JOINERS = r".+/-"
_BEFORE = rf"(?:^|[^{_WORD_CHARS}])[{_JOINERS}]*"
_AFTER = rf"[{_JOINERS}]*(?:[^{_WORD_CHARS}]|$)"
# In raw JSON the character before a match may be written as an escape (``\n``, ``\u00e9``).
_BEFORE_IN_JSON = rf"(?:^|[^{_WORD_CHARS}]|\\(?:[bfnrt]|u[0-9A-Fa-f]{{4}}))[{_JOINERS}]*"
# Strings shorter than this cannot hold anything the built-in rules look for.
_MIN_LEN = 6

# A further test a match must pass: (UTF-8 text, start, end).
Accept = Callable[[bytes, int, int], bool]
Span = tuple[int, int, int]  # start, end, index of the rule


def luhn_valid(digits: str) -> bool:
    """True when the digits pass the Luhn checksum used by payment card numbers."""
    return _luhn(digits.encode())


_DOUBLED = bytes.maketrans(b"0123456789", b"0246813579")  # 2d, less 9 above 9
_NOT_DIGITS = bytes(c for c in range(256) if not 48 <= c <= 57)


def _luhn(digits: bytes) -> bool:
    """The Luhn test on ASCII digits, in C loops: the check runs on many candidates."""
    backwards = digits[::-1]
    total = sum(backwards[::2]) + sum(backwards[1::2].translate(_DOUBLED)) - 48 * len(digits)
    return total % 10 == 0


def _luhn_match(data: bytes, start: int, end: int) -> bool:
    return _luhn(data[start:end].translate(None, _NOT_DIGITS))


@dataclass(frozen=True)
class Rule:
    name: str
    pattern: str  # RE2 syntax
    replacement: str
    # Matches inside a longer word, id, number or path are left alone.
    isolated: bool = False
    # A further test a match must pass.
    check: Accept | None = None
    # The pattern as a match reads in raw JSON, for the pre-scan, where escapes can stand inside
    # it; None: the pattern itself.
    raw: str | None = None


BUILTIN_RULES: tuple[Rule, ...] = (
    Rule(
        "email",
        r"[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}",
        "[EMAIL]",
    ),
    Rule(
        "bearer_token",
        r"(?i:bearer)\s+[A-Za-z0-9._~+/=-]{8,}",
        "Bearer [TOKEN]",
        # In raw JSON the space may be \t, \n or \r, and "/" may be written "\/" (PHP does).
        raw=r"(?i:bearer)(?:\s|\\[tnr])+(?:[A-Za-z0-9._~+=-]|\\?/){8,}",
    ),
    Rule(
        "api_key",
        r"(?:sk|pk|rk)-[A-Za-z0-9_-]{16,}|AKIA[0-9A-Z]{16}|gh[pousr]_[A-Za-z0-9]{30,}"
        r"|xox[abpr]-[A-Za-z0-9-]{10,}",
        "[API_KEY]",
        isolated=True,
    ),
    # 13 to 19 digits, plain or grouped the way cards are printed (fours; 4-6-4 and 4-6-5),
    # and Luhn-valid. Looser grouping would take any list of small numbers for a card.
    Rule(
        "card_number",
        r"\d{13,19}|\d{4}(?:[ -]\d{4}){2}[ -](?:\d{1,4}|\d{4}[ -]\d{1,3})"
        r"|\d{4}[ -]\d{6}[ -]\d{4,5}",
        "[CARD]",
        isolated=True,
        check=_luhn_match,
    ),
    # International (+CC …) or grouped national numbers; bare digit runs (timestamps, counts)
    # are left alone.
    Rule(
        "phone",
        r"\+\d{1,3}[ .-]?\(?\d{1,4}\)?(?:[ .-]?\d{2,4}){2,4}"
        r"|\(\d{3}\)[ .-]?\d{3}[ .-]\d{4}|\d{3}[ .-]\d{3}[ .-]\d{4}",
        "[PHONE]",
        isolated=True,
    ),
)


class _Matcher:
    """One rule compiled for resolution: its pattern is group 1, inside its boundaries.

    An isolated rule matches leftmost-longest, so that its match at a start is the longest its
    boundaries allow; any other rule keeps RE2's usual leftmost-first choice.
    """

    def __init__(self, rule: Rule) -> None:
        self.rule = rule
        self.replacement = rule.replacement.encode()
        options = re2.Options()
        options.longest_match = rule.isolated
        before, after = (_BEFORE, _AFTER) if rule.isolated else ("", "")
        self._find = re2.compile(f"{before}({rule.pattern}){after}".encode(), options)
        # Anchored at a start, for the shorter matches there once the check rejects one.
        at = f"({rule.pattern}){after}".encode()
        self._at = re2.compile(at, options) if rule.check else None

    def spans(self, data: bytes, pos: int) -> Iterator[tuple[int, int]]:
        """The rule's accepted matches in ``data`` from ``pos`` on, by start."""
        while pos <= len(data) and (m := self._find.search(data, pos)) is not None:
            start, end = m.span(1)
            end = self._accepted_end(data, start, end, m.end())
            if end > start:
                yield start, end
            # An isolated match begins after a boundary character: search again from the one
            # after this match's, which reaches every later start.
            pos = m.start() + 1 if self.rule.isolated else max(end, start + 1)

    def _accepted_end(self, data: bytes, start: int, end: int, limit: int) -> int:
        """The longest end at ``start`` the check accepts; ``start`` when there is none."""
        check = self.rule.check
        while check is not None and not check(data, start, end):
            m = self._at.match(data, start, limit - 1) if self._at is not None else None
            if m is None:
                return start
            end, limit = m.end(1), m.end()
        return end


class Redactor:
    """Applies the built-in rules (optionally) and the configured ones."""

    def __init__(self, rules: Iterable[RedactionRule], *, builtin: bool = True) -> None:
        self.rules = (BUILTIN_RULES if builtin else ()) + tuple(
            Rule(r.name, r.pattern, r.replacement) for r in rules
        )
        self._matchers = tuple(_Matcher(rule) for rule in self.rules)
        # The pre-scan demands the boundaries an isolated rule does, so that ids like
        # "chatcmpl-0000…" do not send a record down the slow path.
        scan = "|".join(
            f"{_BEFORE_IN_JSON}(?:{r.raw or r.pattern}){_AFTER}"
            if r.isolated
            else f"(?:{r.raw or r.pattern})"
            for r in self.rules
        )
        self._bytes = re2.compile(scan.encode()) if self.rules else None

    @classmethod
    def from_config(cls, config: RedactionConfig) -> Redactor:
        return cls(config.rules, builtin=config.defaults)

    def json(self, data: bytes) -> bytes:
        """``data`` (JSON text) with its string values redacted; non-JSON is redacted as text."""
        if self._bytes is None or self._bytes.search(data) is None:
            return data
        try:
            doc = orjson.loads(data)
        except orjson.JSONDecodeError:
            return self.text(data.decode("utf-8", errors="replace")).encode()
        return orjson.dumps(self._walk(doc))

    def text(self, s: str) -> str:
        """``s`` with every accepted match replaced (see the module docstring)."""
        if self._bytes is None or len(s) < _MIN_LEN:
            return s
        data = s.encode()
        first = self._bytes.search(data)
        if first is None:
            return s
        spans = self._resolve(data, first.start())
        if not spans:
            return s
        out: list[bytes] = []
        pos = 0
        for start, end, i in spans:
            out += (data[pos:start], self._matchers[i].replacement)
            pos = end
        out.append(data[pos:])
        return b"".join(out).decode()

    def _resolve(self, data: bytes, pos: int) -> list[Span]:
        """Every rule's accepted matches from ``pos`` on, overlapping ones merged."""
        found = sorted(
            (start, -end, i)
            for i, matcher in enumerate(self._matchers)
            for start, end in matcher.spans(data, pos)
        )
        merged: list[Span] = []
        for start, neg_end, i in found:
            if merged and start < merged[-1][1]:
                first_start, first_end, first = merged[-1]
                merged[-1] = (first_start, max(first_end, -neg_end), first)
            else:
                merged.append((start, -neg_end, i))
        return merged

    def _walk(self, node: Any) -> Any:
        if isinstance(node, str):
            return self.text(node)
        if isinstance(node, dict):
            return {k: self._walk(v) for k, v in node.items()}
        if isinstance(node, list):
            return [self._walk(v) for v in node]
        return node
