"""Redaction of captured text: PII and secrets out, JSON and ordinary numbers intact."""

from __future__ import annotations

import orjson
import pytest

from gateway.config import RedactionConfig, RedactionRule
from gateway.redact import Redactor, luhn_valid

DEFAULT = Redactor.from_config(RedactionConfig())


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("write to bob.smith+x@mail.example.co.uk now", "write to [EMAIL] now"),
        ("call +44 20 7946 0958 today", "call [PHONE] today"),
        ("call (415) 555-0132 today", "call [PHONE] today"),
        ("card 4111 1111 1111 1111 ok", "card [CARD] ok"),
        ("card 4111-1111-1111-1111 ok", "card [CARD] ok"),
        ("order 4111111111111112 ok", "order 4111111111111112 ok"),  # fails Luhn
        ("Authorization: Bearer eyJhbGciOiJIUzI1NiJ9.abc", "Authorization: Bearer [TOKEN]"),
        ("key sk-proj-abcdefghijklmnopqrstuvwx end", "key [API_KEY] end"),
        ("aws AKIAIOSFODNN7EXAMPLE end", "aws [API_KEY] end"),
        (
            '{"created": 1700000000, "total_tokens": 18}',
            '{"created": 1700000000, "total_tokens": 18}',
        ),
    ],
)
def test_default_rules(text: str, expected: str) -> None:
    """Each default rule redacts its kind of secret and leaves timestamps and counts alone."""
    assert DEFAULT(text) == expected


def test_redacted_json_stays_valid() -> None:
    """Redacting serialized JSON keeps it parseable."""
    doc = orjson.dumps({"messages": [{"content": "me: a@b.io, +1 415 555 0132"}]}).decode()
    assert orjson.loads(DEFAULT(doc))["messages"][0]["content"] == "me: [EMAIL], [PHONE]"


def test_custom_rules_and_defaults_off() -> None:
    """Configured rules apply; defaults can be switched off."""
    rule = RedactionRule(name="ticket", pattern=r"TCK-\d+", replacement="[TICKET]")
    r = Redactor.from_config(RedactionConfig(defaults=False, rules=(rule,)))
    assert r("TCK-123 from a@b.io") == "[TICKET] from a@b.io"


def test_replacement_that_breaks_json_is_refused() -> None:
    """A replacement with a quote would corrupt the JSON text and is refused."""
    with pytest.raises(ValueError, match="replacement"):
        Redactor([RedactionRule(name="q", pattern="x", replacement='"')])


@pytest.mark.parametrize(
    ("digits", "ok"), [("4111111111111111", True), ("4111111111111112", False)]
)
def test_luhn(digits: str, ok: bool) -> None:
    """The Luhn checksum separates card numbers from other digit runs."""
    assert luhn_valid(digits) is ok
