"""Redaction of captured text: PII and secrets out, JSON and ordinary numbers intact."""

from __future__ import annotations

import asyncio
import itertools
import json
import string
from collections.abc import Callable
from pathlib import Path

import openai
import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from core.errors import ConfigError
from core.read import read_exchanges
from core.redact import Redactor, luhn_valid
from core.settings import RedactionConfig, RedactionRule
from gateway.config import load_settings
from sidecar.config import load_sidecar_settings
from sidecar.service import run
from tests.conftest import RunningGateway

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


# Regression cases: a match one rule rejects must not hide what another rule (or the same rule,
# starting later) accepts in or around it.
@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("call 555-123-4567 1234", "call [PHONE] 1234"),
        ("email bob@example.com or 555-123-4567 4242", "email [EMAIL] or [PHONE] 4242"),
        ("ref 12 4111 1111 1111 1111", "ref 12 [CARD]"),
        # The card rule takes "1234 5678 9012 415" and Luhn rejects it.
        ("ref 1234 5678 9012 415 555 0132 ok", "ref 1234 5678 9012 [PHONE] ok"),
        ("card 4111 1111 1111 1111 5 ok", "card [CARD] 5 ok"),
        ("call 415-555-0132. Or mail.", "call [PHONE]. Or mail."),
        ("card 4111 1111 1111 1111...", "card [CARD]..."),
        ("pi 3.4111111111111111 ok", "pi 3.4111111111111111 ok"),  # a decimal, not a card
    ],
)
def test_rejected_matches_give_way(text: str, expected: str) -> None:
    """A rejected candidate (Luhn, boundaries) leaves every accepted match around it redacted."""
    assert DEFAULT.text(text) == expected


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (b'"line one\\n4111 1111 1111 1111"', "line one\n[CARD]"),
        (b'"caf\\u00e9415-555-0132"', "caf\u00e9[PHONE]"),
        (b'"key:\\tsk-abcdefghijklmnopqrstuv"', "key:\t[API_KEY]"),
    ],
)
def test_json_escapes_do_not_hide_secrets(raw: bytes, expected: str) -> None:
    """A secret right after an escaped character (``\\n``, ``\\u00e9``) in raw JSON is redacted."""
    assert orjson.loads(DEFAULT.json(b'{"content": ' + raw + b"}")) == {"content": expected}


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (b'"Authorization: Bearer ab\\/cdefghij"', "Authorization: Bearer [TOKEN]"),
        (b'"Bearer\\tabcdefghijkl"', "Bearer [TOKEN]"),
        (b'"bearer\\nabcdefghijkl rest"', "Bearer [TOKEN] rest"),
    ],
)
def test_json_escapes_inside_a_secret_do_not_hide_it(raw: bytes, expected: str) -> None:
    """A bearer token holding an escape in raw JSON (``\\/`` as PHP writes it, a ``\\t`` or
    ``\\n`` after "Bearer") is still found by the pre-scan and redacted."""
    assert orjson.loads(DEFAULT.json(b'{"content": ' + raw + b"}")) == {"content": expected}


def test_overlapping_matches_are_redacted_as_one() -> None:
    """Overlapping accepted matches become one replacement: the first-starting match's."""
    rules = (
        RedactionRule(name="ab", pattern="ab+", replacement="[AB]"),
        RedactionRule(name="bc", pattern="b+c", replacement="[BC]"),
    )
    r = Redactor(rules, builtin=False)
    assert r.text("xx abbbc yy bc") == "xx [AB] yy [BC]"


# --- Property: no default-rule secret survives, and text without one is left alone. ---

DIGITS = "0123456789"
WORD_CHARS = string.ascii_letters + DIGITS
# What may sit between a secret and its neighbours: whitespace or punctuation that does not
# join it to them (a secret glued into a longer word or number is, by design, not a secret).
SEPARATORS = (" ", "  ", "\n", "\t", ", ", ". ", "; ", ": ", "! ", "? ", " (", ") ", " - ",
              " / ", " | ", '"', "'", " = ", "*", "<", ">", "\\", "\u00e9")  # fmt: skip


def digits(low: int, high: int | None = None) -> st.SearchStrategy[str]:
    return st.text(DIGITS, min_size=low, max_size=low if high is None else high)


def check_digit(body: str, *, valid: bool) -> str:
    """``body`` and a last digit that makes it pass (or fail) the Luhn check."""
    return next(body + d for d in DIGITS if luhn_valid(body + d) is valid)


@st.composite
def card_numbers(draw: st.DrawFn, *, valid: bool = True, max_digits: int = 19) -> str:
    """13 to ``max_digits`` digits: plain, in fours, or 4-6-rest, by spaces or dashes."""
    n = draw(st.integers(13, max_digits))
    number = check_digit(draw(digits(n - 1)), valid=valid)
    layout = draw(st.sampled_from(["plain", "fours", "4-6"]))
    if layout == "plain":
        return number
    sizes = [4, 6, n - 10] if layout == "4-6" and n in (14, 15) else [4] * (n // 4) + [n % 4]
    cuts = list(itertools.accumulate(sizes, initial=0))
    groups = [number[a:b] for a, b in itertools.pairwise(cuts) if b > a]
    return draw(st.sampled_from(" -")).join(groups)


@st.composite
def phone_numbers(draw: st.DrawFn) -> str:
    """Each format the phone rule claims: +CC …, (415) 555-0132, 415-555-0132, 415.555.0132,
    415 555 0132."""
    form = draw(st.sampled_from(["+", "()", "-", ".", " "]))
    if form == "+":
        sep = st.sampled_from(" .-")
        area = draw(digits(1, 4))
        area = f"({area})" if draw(st.booleans()) else area
        groups = draw(st.lists(st.tuples(sep, digits(2, 4)), min_size=2, max_size=4))
        return f"+{draw(digits(1, 3))}{draw(sep)}{area}" + "".join(s + g for s, g in groups)
    a, b, c = draw(digits(3)), draw(digits(3)), draw(digits(4))
    return f"({a}) {b}-{c}" if form == "()" else form.join((a, b, c))


EMAILS = st.from_regex(
    r"[a-z0-9]{1,8}(?:[.+_][a-z0-9]{1,8})?@[a-z0-9]{1,8}(?:\.[a-z0-9]{1,8})?\.[a-z]{2,6}",
    fullmatch=True,
)
BEARER_TOKENS = st.builds(
    "{} {}".format,
    st.sampled_from(["Bearer", "bearer", "BEARER"]),
    st.text(WORD_CHARS + "._~+/=-", min_size=8, max_size=40),
)
API_KEYS = st.one_of(
    st.builds("{}-{}".format, st.sampled_from(["sk", "pk", "rk"]),
              st.text(WORD_CHARS + "_-", min_size=16, max_size=40)),
    st.text(string.ascii_uppercase + DIGITS, min_size=16, max_size=16).map("AKIA{}".format),
    st.builds("gh{}_{}".format, st.sampled_from("pousr"),
              st.text(WORD_CHARS, min_size=30, max_size=40)),
    st.builds("xox{}-{}".format, st.sampled_from("abpr"),
              st.text(WORD_CHARS + "-", min_size=10, max_size=30)),
)  # fmt: skip
SECRETS = st.one_of(EMAILS, phone_numbers(), card_numbers(), BEARER_TOKENS, API_KEYS)

WORDS = st.text(string.ascii_lowercase, min_size=1, max_size=10).filter(lambda w: "bearer" not in w)
# Things that are not secrets: words, counts and timestamps, Luhn-invalid digit runs, punctuation,
# and Luhn-valid digits glued into an id or a decimal.
NOT_SECRETS = st.one_of(
    WORDS,
    st.integers(0, 10**12 - 1).map(str),
    card_numbers(valid=False, max_digits=16),
    digits(12, 18).map(lambda body: check_digit(body, valid=False)),
    st.sampled_from(list("!?,;:()[]{}<>\"'*&%$#")),
    digits(15).map(lambda body: "chatcmpl-" + check_digit(body, valid=True)),
    digits(15).map(lambda body: "3." + check_digit(body, valid=True)),
)
REDACTABLE = settings(max_examples=400, deadline=None, derandomize=True, database=None)


@st.composite
def texts_with_secrets(draw: st.DrawFn) -> tuple[str, list[str], list[str]]:
    """Random text holding at least one secret; the secrets and the other pieces in it."""
    piece = st.one_of(SECRETS.map(lambda s: (s, True)), NOT_SECRETS.map(lambda s: (s, False)))
    pieces = draw(st.lists(piece, max_size=6))
    pieces.insert(draw(st.integers(0, len(pieces))), (draw(SECRETS), True))
    edges = st.sampled_from(("", *SEPARATORS))
    text = draw(edges)
    for i, (piece, _) in enumerate(pieces):
        text += piece + draw(edges if i == len(pieces) - 1 else st.sampled_from(SEPARATORS))
    secrets = [piece for piece, secret in pieces if secret]
    return text, secrets, [piece for piece, secret in pieces if not secret]


@REDACTABLE
@given(texts_with_secrets())
def test_no_secret_survives(case: tuple[str, list[str], list[str]]) -> None:
    """Any default-rule secret set apart by a space or punctuation is gone from the output
    (its text survives only where a non-secret piece, say a longer number, holds it too)."""
    text, secrets, others = case
    out = DEFAULT.text(text)
    for secret in secrets:
        assert out.count(secret) <= sum(other.count(secret) for other in others), (secret, out)


@settings(REDACTABLE, max_examples=200)
@given(texts_with_secrets(), st.booleans())
def test_json_values_are_redacted_as_text(
    case: tuple[str, list[str], list[str]], ascii_only: bool
) -> None:
    """A string value in raw JSON (separators escaped) is redacted exactly as the text itself."""
    text = case[0]
    raw = json.dumps({"content": text}, ensure_ascii=ascii_only).encode()
    assert orjson.loads(DEFAULT.json(raw)) == {"content": DEFAULT.text(text)}


@REDACTABLE
@given(st.lists(st.tuples(WORDS, st.sampled_from(SEPARATORS), NOT_SECRETS,
                          st.sampled_from(SEPARATORS)), min_size=1, max_size=8))  # fmt: skip
def test_text_without_secrets_is_unchanged(phrases: list[tuple[str, str, str, str]]) -> None:
    """Words, counts, timestamps, Luhn-invalid runs and glued ids come out as they went in."""
    text = "".join("".join(phrase) for phrase in phrases)
    assert DEFAULT.text(text) == text


def test_stored_requests_keep_no_phone_number(
    make_gateway: Callable[..., RunningGateway], tmp_path: Path
) -> None:
    """Sent with the openai client and shipped by the sidecar, the stored requests hold
    ``[PHONE]`` and ``[EMAIL]``, never the phone number or the address."""
    gw = make_gateway()
    client = openai.OpenAI(base_url=gw.url + "/v1", api_key="k", max_retries=0, timeout=10)
    for content in ("call 555-123-4567 1234", "email bob@example.com or 555-123-4567 4242"):
        client.chat.completions.create(model="m", messages=[{"role": "user", "content": content}])
    gw.stop()
    store = f"file://{tmp_path / 'store'}"
    sidecar = load_sidecar_settings(
        env={}, spool={"dir": str(gw.settings.spool.dir)}, store=store, sidecar={"metrics_port": 0}
    )
    assert asyncio.run(run(sidecar, once=True)) == 0
    requests = read_exchanges(store, columns=["request"]).column("request").to_pylist()
    assert len(requests) == 2
    assert not [r for r in requests if "555-123-4567" in r or "bob@example.com" in r]
    assert all("[PHONE]" in r for r in requests)
    assert any("[EMAIL]" in r for r in requests)
