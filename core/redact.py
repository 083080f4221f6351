"""Redaction of captured text: PII and secrets never reach the log store.

Applied to logged requests and responses on the spool writer thread; the live answer to the
client is never altered. Only JSON string values are rewritten (never keys or numbers), so the
logged text stays valid JSON whatever the rules match.

Every record is redacted, so this is on the capture hot path. Patterns run on RE2 (linear time:
no configured rule can backtrack catastrophically, and one pass tests all rules at once). A
record in which no rule can match — the common case — costs one scan of its bytes and is kept
as it is; only a record with a candidate match is parsed, rewritten and serialized again.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import orjson
import re2

from core.settings import RedactionConfig, RedactionRule

# Characters that make a match part of something longer (a word, an id, a number, a path).
_WORD_CHARS = r"A-Za-z0-9_.+/-"
_WORDISH = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_.+/-")
# Strings shorter than this cannot hold anything the built-in rules look for.
_MIN_LEN = 6

Accept = Callable[[str, int, int], bool]


def luhn_valid(digits: str) -> bool:
    """True when the digits pass the Luhn checksum used by payment card numbers."""
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = ord(ch) - 48
        if i % 2:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


def _isolated(s: str, start: int, end: int) -> bool:
    """The match is not part of a longer word, number or decimal."""
    return (start == 0 or s[start - 1] not in _WORDISH) and (
        end == len(s) or s[end] not in _WORDISH
    )


def _luhn_match(s: str, start: int, end: int) -> bool:
    return luhn_valid("".join(c for c in s[start:end] if c.isdigit()))


@dataclass(frozen=True)
class Rule:
    name: str
    pattern: str  # RE2 syntax
    replacement: str
    # Matches inside a longer word, id, number or path are left alone.
    isolated: bool = False
    # A further test a match must pass (string, start, end).
    check: Accept | None = None

    def accepts(self, s: str, start: int, end: int) -> bool:
        if self.isolated and not _isolated(s, start, end):
            return False
        return self.check is None or self.check(s, start, end)


BUILTIN_RULES: tuple[Rule, ...] = (
    Rule(
        "email",
        r"[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}",
        "[EMAIL]",
    ),
    Rule("bearer_token", r"(?i:bearer)\s+[A-Za-z0-9._~+/=-]{8,}", "Bearer [TOKEN]"),
    Rule(
        "api_key",
        r"(?:sk|pk|rk)-[A-Za-z0-9_-]{16,}|AKIA[0-9A-Z]{16}|gh[pousr]_[A-Za-z0-9]{30,}"
        r"|xox[abpr]-[A-Za-z0-9-]{10,}",
        "[API_KEY]",
        isolated=True,
    ),
    # 13 to 19 digits, optionally grouped by spaces or dashes, and Luhn-valid.
    Rule("card_number", r"\d(?:[ -]?\d){12,18}", "[CARD]", isolated=True, check=_luhn_match),
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


class Redactor:
    """Applies the built-in rules (optionally) and the configured ones in one pass."""

    def __init__(self, rules: Iterable[RedactionRule], *, builtin: bool = True) -> None:
        self.rules = (BUILTIN_RULES if builtin else ()) + tuple(
            Rule(r.name, r.pattern, r.replacement) for r in rules
        )
        self._by_group: dict[int, Rule] = {}
        parts, group = [], 1
        for rule in self.rules:
            parts.append(f"({rule.pattern})")
            self._by_group[group] = rule
            group += 1 + re2.compile(rule.pattern).groups
        combined = "|".join(parts)
        self._text = re2.compile(combined) if parts else None
        # The pre-scan of whole records also demands the left boundary that the accept checks
        # would, so that ids like "chatcmpl-0000…" do not send a record down the slow path.
        scan = "|".join(
            f"(?:^|[^{_WORD_CHARS}])(?:{r.pattern})" if r.isolated else f"(?:{r.pattern})"
            for r in self.rules
        )
        self._bytes = re2.compile(scan.encode()) if parts else None

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
        """``s`` with every accepted match replaced."""
        if self._text is None or len(s) < _MIN_LEN:
            return s
        out: list[str] = []
        pos = 0
        for m in self._text.finditer(s):
            rule = self._by_group[m.lastindex]
            start, end = m.span()
            if not rule.accepts(s, start, end):
                continue
            out += (s[pos:start], rule.replacement)
            pos = end
        if not out:
            return s
        out.append(s[pos:])
        return "".join(out)

    def _walk(self, node: Any) -> Any:
        if isinstance(node, str):
            return self.text(node)
        if isinstance(node, dict):
            return {k: self._walk(v) for k, v in node.items()}
        if isinstance(node, list):
            return [self._walk(v) for v in node]
        return node
