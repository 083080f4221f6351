"""Redaction of captured text: PII and secrets never reach the log store.

Applied to the JSON text of logged requests and responses, on the spool writer thread; the live
answer to the client is never altered. Replacements must keep the JSON valid, so they may not
contain quotes or backslashes (checked at start-up).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable

from gateway.config import RedactionConfig, RedactionRule

DEFAULT_RULES: tuple[RedactionRule, ...] = (
    RedactionRule(
        name="email",
        pattern=r"[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}",
        replacement="[EMAIL]",
    ),
    RedactionRule(
        name="bearer_token",
        pattern=r"(?i:bearer)\s+[A-Za-z0-9._~+/=-]{8,}",
        replacement="Bearer [TOKEN]",
    ),
    RedactionRule(
        name="api_key",
        pattern=(
            r"\b(?:sk|pk|rk)-[A-Za-z0-9_-]{16,}"
            r"|\bAKIA[0-9A-Z]{16}\b"
            r"|\bgh[pousr]_[A-Za-z0-9]{30,}"
            r"|\bxox[abpr]-[A-Za-z0-9-]{10,}"
        ),
        replacement="[API_KEY]",
    ),
    RedactionRule(
        # 13 to 19 digits, optionally grouped by spaces or dashes; kept only if Luhn-valid.
        name="card_number",
        pattern=r"(?<![\w.])\d(?:[ -]?\d){12,18}(?![\w.])",
        replacement="[CARD]",
    ),
    RedactionRule(
        # International (+CC …) or grouped national numbers; bare digit runs are left alone
        # so that timestamps and token counts in the JSON survive.
        name="phone",
        pattern=(
            r"(?<![\w+])\+\d{1,3}[ .-]?\(?\d{1,4}\)?(?:[ .-]?\d{2,4}){2,4}(?!\w)"
            r"|(?<![\w+])\(?\d{3}\)?[ .-]\d{3}[ .-]\d{4}(?!\w)"
        ),
        replacement="[PHONE]",
    ),
)


def luhn_valid(digits: str) -> bool:
    """True when the digits pass the Luhn checksum used by payment card numbers."""
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = ord(ch) - 48
        if i % 2:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


class Redactor:
    """Applies every rule in one pass over the text."""

    def __init__(self, rules: Iterable[RedactionRule]) -> None:
        self._rules = list(rules)
        for rule in self._rules:
            if '"' in rule.replacement or "\\" in rule.replacement:
                raise ValueError(f'redaction rule {rule.name}: replacement may not hold " or \\')
        self._pattern = (
            re.compile("|".join(f"(?P<r{i}>{r.pattern})" for i, r in enumerate(self._rules)))
            if self._rules
            else None
        )

    @classmethod
    def from_config(cls, config: RedactionConfig) -> Redactor:
        return cls((DEFAULT_RULES if config.defaults else ()) + tuple(config.rules))

    def __call__(self, text: str) -> str:
        if self._pattern is None:
            return text
        return self._pattern.sub(self._replace, text)

    def _replace(self, match: re.Match[str]) -> str:
        group = match.lastgroup
        if group is None:  # pragma: no cover - every alternative is a named group
            return match.group(0)
        rule = self._rules[int(group[1:])]
        if rule.name == "card_number" and not luhn_valid(re.sub(r"\D", "", match.group(0))):
            return match.group(0)
        return rule.replacement


Redact = Callable[[str], str]
