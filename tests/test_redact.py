"""Redaction of captured text: PII and secrets out, JSON and ordinary numbers intact."""

from __future__ import annotations

import orjson
import pytest

from core.errors import ConfigError
from core.redact import Redactor, luhn_valid
from core.settings import RedactionConfig, RedactionRule
from gateway.config import load_settings

DEFAULT = Redactor.from_config(RedactionConfig())


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("write to bob.smith+x@mail.example.co.uk now", "write to [EMAIL] now"),
        ("call +44 20 7946 0958 today", "call [PHONE] today"),
        ("call (415) 555-0132 today", "call [PHONE] today"),
        ("call 415-555-0132 today", "call [PHONE] today"),
        ("card 4111 1111 1111 1111 ok", "card [CARD] ok"),
        ("card 4111-1111-1111-1111 ok", "card [CARD] ok"),
        ("order 4111111111111112 ok", "order 4111111111111112 ok"),  # fails Luhn
        ("id chatcmpl-4111111111111111 ok", "id chatcmpl-4111111111111111 ok"),  # inside a word
        ("Authorization: Bearer eyJhbGciOiJIUzI1NiJ9.abc", "Authorization: Bearer [TOKEN]"),
        ("key sk-proj-abcdefghijklmnopqrstuvwx end", "key [API_KEY] end"),
        ("aws AKIAIOSFODNN7EXAMPLE end", "aws [API_KEY] end"),
        ("at 1700000000123 ms, 18 tokens", "at 1700000000123 ms, 18 tokens"),
    ],
)
def test_default_rules_on_text(text: str, expected: str) -> None:
    """Each default rule redacts its kind of secret and leaves timestamps and counts alone."""
    assert DEFAULT.text(text) == expected


def test_only_json_string_values_are_rewritten() -> None:
    """Numbers, keys and structure survive; the result is valid JSON with strings redacted."""
    doc = {
        "created": 4111111111111111,
        "messages": [{"role": "user", "content": "me: a@b.io, +1 415 555 0132"}],
        "a@b.io": "key",
    }
    out = orjson.loads(DEFAULT.json(orjson.dumps(doc)))
    assert out["created"] == 4111111111111111
    assert out["messages"][0]["content"] == "me: [EMAIL], [PHONE]"
    assert "a@b.io" in out


def test_clean_json_is_kept_byte_for_byte() -> None:
    """A record with nothing to redact is passed on as it is, spacing included."""
    raw = b'{"model": "m",  "messages": [{"role": "user", "content": "hello there"}]}'
    assert DEFAULT.json(raw) is raw


def test_non_json_text_is_redacted_as_text() -> None:
    """A body that is not JSON (an HTML error page, say) is still redacted."""
    assert DEFAULT.json(b"<p>mail ops@corp.com</p>") == b"<p>mail [EMAIL]</p>"


def test_custom_rules_and_defaults_off() -> None:
    """Configured rules apply; defaults can be switched off."""
    rule = RedactionRule(name="ticket", pattern=r"TCK-\d+", replacement="[TICKET]")
    r = Redactor.from_config(RedactionConfig(defaults=False, rules=(rule,)))
    assert r.text("TCK-123 from a@b.io") == "[TICKET] from a@b.io"


def test_custom_rule_with_groups_keeps_later_rules_working() -> None:
    """Capture groups inside a configured pattern do not confuse which rule matched."""
    rule = RedactionRule(name="order", pattern=r"(ORD)-(\d+)", replacement="[ORDER]")
    r = Redactor([rule])
    assert r.text("ORD-9 and x@y.io") == "[ORDER] and [EMAIL]"
    assert r.text("x@y.io and ORD-9") == "[EMAIL] and [ORDER]"


def test_backtracking_patterns_are_refused_at_startup() -> None:
    """Look-behinds and other non-RE2 constructs fail the config, naming the rule."""
    with pytest.raises(ConfigError, match=r"redaction.rules\[0\].pattern .* is not a valid RE2"):
        load_settings(env={}, redaction={"rules": [{"name": "x", "pattern": "(?<!a)b"}]})


@pytest.mark.parametrize(
    ("digits", "ok"), [("4111111111111111", True), ("4111111111111112", False)]
)
def test_luhn(digits: str, ok: bool) -> None:
    """The Luhn checksum separates card numbers from other digit runs."""
    assert luhn_valid(digits) is ok
