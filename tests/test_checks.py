"""Output checks on student answers: which checks an answer fails, for a config and a request."""

from __future__ import annotations

import urllib.request
from typing import Any

import pytest

from core.answers import schema_validator
from gateway.checks import CHECKS, OutputChecks
from gateway.policy import OutputChecksConfig

TICKET = {
    "type": "object",
    "properties": {"priority": {"enum": ["low", "high"]}},
    "required": ["priority"],
}
OTHER = {"type": "object", "required": ["other"]}


def _answer(content: Any = None, tool_calls: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    message: dict[str, Any] = {"role": "assistant", "content": content}
    if tool_calls is not None:
        message["tool_calls"] = tool_calls
    return {"object": "chat.completion", "choices": [{"index": 0, "message": message}]}


def _call(name: str = "lookup", arguments: str = '{"id": 7}') -> dict[str, Any]:
    return {"id": "call_1", "type": "function", "function": {"name": name, "arguments": arguments}}


def _asks(kind: str, schema: dict[str, Any] | None = None) -> dict[str, Any]:
    response_format: dict[str, Any] = {"type": kind}
    if schema is not None:
        response_format["json_schema"] = {"name": "s", "schema": schema}
    return {"model": "m", "messages": [], "response_format": response_format}


def _run(config: dict[str, Any], fields: dict[str, Any], answer: dict[str, Any]) -> tuple[str, ...]:
    return OutputChecks(OutputChecksConfig(**config)).run(fields, answer)


PLAIN: dict[str, Any] = {"model": "m", "messages": []}


@pytest.mark.parametrize(
    ("config", "fields", "answer", "failed"),
    [
        ({}, PLAIN, _answer("The invoice is paid."), ()),
        # JSON required by the request, by the config, or by a schema.
        ({}, _asks("json_object"), _answer('{"a": 1}'), ()),
        ({}, _asks("json_object"), _answer(' \n{"a": 1}\n'), ()),
        ({}, _asks("json_object"), _answer("sure: {}"), ("json_parse",)),
        ({}, _asks("json_object"), _answer("[1, 2]"), ("json_parse",)),
        ({}, _asks("json_object"), _answer('```json\n{"a": 1}\n```'), ("json_parse",)),
        ({"json_object": True}, PLAIN, _answer("42"), ("json_parse",)),
        ({"json_object": True}, PLAIN, _answer('{"a": 1}'), ()),
        ({}, _asks("json_schema", TICKET), _answer('{"priority": "high"}'), ()),
        ({}, _asks("json_schema", TICKET), _answer('{"priority": "urgent"}'), ("json_schema",)),
        ({}, _asks("json_schema", TICKET), _answer("high"), ("json_parse",)),
        ({}, _asks("json_schema", {"type": "array"}), _answer("[1]"), ()),
        ({"json_schema": TICKET}, PLAIN, _answer('{"priority": "low"}'), ()),
        ({"json_schema": TICKET}, PLAIN, _answer("{}"), ("json_schema",)),
        ({"json_schema": TICKET}, PLAIN, _answer("low"), ("json_parse",)),
        ({"json_schema": OTHER}, _asks("json_schema", TICKET), _answer('{"priority": "low"}'), ()),
        ({"json_schema": TICKET}, _asks("json_object"), _answer('{"x": 1}'), ("json_schema",)),
        # A schema that is not valid is not judged; the answer must still be JSON.
        ({}, _asks("json_schema", {"type": 12}), _answer('{"a": 1}'), ()),
        ({}, _asks("json_schema", {"type": 12}), _answer("no"), ("json_parse",)),
        ({}, _asks("json_schema", {"$schema": {}}), _answer('{"a": 1}'), ()),
        ({}, _asks("json_schema", {"$schema": "urn:x", **TICKET}), _answer("{}"), ("json_schema",)),
    ],
)
def test_json_checks(
    config: dict[str, Any], fields: dict[str, Any], answer: dict[str, Any], failed: tuple[str, ...]
) -> None:
    """JSON is required by response_format, json_object or a schema; not JSON fails json_parse
    alone, JSON outside the request's schema (else the configured one) fails json_schema."""
    assert _run(config, fields, answer) == failed


@pytest.mark.parametrize(
    ("config", "content", "failed"),
    [
        ({"must_match": [r"order #\d+"]}, "Your order #12 ships today.", ()),
        ({"must_match": [r"order #\d+"]}, "Your order ships today.", ("must_match",)),
        ({"must_match": ["ships", "today"]}, "It ships tomorrow.", ("must_match",)),
        ({"must_match": ["(?i)SHIPS"]}, "It ships.", ()),
        ({"must_not_match": [r"https?://"]}, "See http://x.test", ("must_not_match",)),
        ({"must_not_match": [r"https?://", "password"]}, "Your password is", ("must_not_match",)),
        ({"must_not_match": [r"https?://"]}, "No links here.", ()),
        ({"must_match": ["é+"]}, "café", ()),
        ({"must_match": ["^café$"]}, "café", ()),
        ({"max_chars": 5}, "12345", ()),
        ({"max_chars": 5}, "123456", ("max_length",)),
        ({"max_chars": 5}, "ééééé", ()),
    ],
)
def test_text_checks(config: dict[str, Any], content: str, failed: tuple[str, ...]) -> None:
    """must_match needs every pattern found, must_not_match none; max_length counts characters."""
    assert _run(config, PLAIN, _answer(content)) == failed


@pytest.mark.parametrize(
    ("config", "content", "failed"),
    [
        ({}, "I'm Sorry, But I CAN'T share that.", ("refusal",)),
        ({}, "As an AI language model, I think so.", ("refusal",)),
        ({}, "I can help with that.", ()),
        ({"refusal_phrases": []}, "I am unable to do that.", ()),
        ({"refusal_phrases": ["NO WAY"]}, "no way, sorry", ("refusal",)),
        ({"refusal_phrases": ["NO WAY"]}, "I am unable to do that.", ()),
    ],
)
def test_refusal(config: dict[str, Any], content: str, failed: tuple[str, ...]) -> None:
    """A refusal phrase found anywhere in the text, ignoring case, fails refusal."""
    assert _run(config, PLAIN, _answer(content)) == failed


@pytest.mark.parametrize(
    ("config", "answer", "failed"),
    [
        ({}, _answer(""), ("empty",)),
        ({}, _answer(" \n\t"), ("empty",)),
        ({}, _answer(None), ("empty",)),
        ({}, _answer([]), ("empty",)),
        ({}, {"choices": []}, ("empty",)),
        ({"non_empty": False}, _answer(""), ()),
        ({}, _answer(None, [_call()]), ()),
        ({}, _answer([{"type": "text", "text": "Paid"}, {"type": "text", "text": "."}]), ()),
    ],
)
def test_empty(config: dict[str, Any], answer: dict[str, Any], failed: tuple[str, ...]) -> None:
    """An answer with neither text nor a tool call fails empty (when non_empty is on)."""
    assert _run(config, PLAIN, answer) == failed


TOOL_ONLY = _answer(None, [_call()])  # canonical text: [{"arguments":{"id":7},"name":"lookup"}]


@pytest.mark.parametrize(
    ("config", "fields", "answer", "failed"),
    [
        ({"json_object": True, "must_match": ["x"]}, _asks("json_object"), TOOL_ONLY, ()),
        ({"must_not_match": ["lookup"]}, PLAIN, TOOL_ONLY, ()),
        ({"max_chars": 40}, PLAIN, TOOL_ONLY, ()),
        ({"max_chars": 39}, PLAIN, TOOL_ONLY, ("max_length",)),
        ({"must_match": ["x"]}, PLAIN, _answer("Looking it up.", [_call()]), ("must_match",)),
    ],
)
def test_tool_calls(
    config: dict[str, Any], fields: dict[str, Any], answer: dict[str, Any], failed: tuple[str, ...]
) -> None:
    """An answer that is only tool calls skips the text checks; max_length counts the calls."""
    assert _run(config, fields, answer) == failed


def test_failures_come_in_checks_order() -> None:
    """Several failed checks are reported once each, in CHECKS order."""
    config = {"json_object": True, "must_match": ["ok"], "must_not_match": ["do"], "max_chars": 5}
    failed = _run(config, PLAIN, _answer("I am unable to do that."))
    assert failed == ("json_parse", "must_match", "must_not_match", "max_length", "refusal")
    assert set(failed) <= set(CHECKS)


def test_schema_ref_is_never_fetched(monkeypatch: pytest.MonkeyPatch) -> None:
    """A request schema whose $ref points elsewhere is not judged, and nothing is fetched."""
    fetched: list[Any] = []

    def urlopen(*args: Any, **kwargs: Any) -> None:
        fetched.append(args)
        raise OSError("no network in tests")

    monkeypatch.setattr(urllib.request, "urlopen", urlopen)
    schema = {"$ref": "http://127.0.0.1:9/schema.json"}
    assert _run({}, _asks("json_schema", schema), _answer('{"a": 1}')) == ()
    assert fetched == []


def test_schema_patterns_run_in_linear_time() -> None:
    """A schema pattern that backtracks exponentially elsewhere is judged, in linear time."""
    schema = {"type": "object", "properties": {"a": {"pattern": "^(a+)+$"}}}
    # Some 2**64 steps for a backtracking engine (Python's re): it would never return, and the
    # suite's per-test timeout would fail the test. RE2 reads the text once.
    failed = _run({}, _asks("json_schema", schema), _answer('{"a": "' + "a" * 64 + 'b"}'))
    assert failed == ("json_schema",)


def test_checks_are_reusable() -> None:
    """One OutputChecks answers many runs, each judged on its own answer."""
    checks = OutputChecks(OutputChecksConfig(must_match=("ok",)))
    assert checks.run(PLAIN, _answer("ok")) == ()
    assert checks.run(PLAIN, _answer("no")) == ("must_match",)
    assert checks.run(PLAIN, _answer("ok")) == ()


LEARNED = schema_validator(TICKET)


@pytest.mark.parametrize(
    ("config", "fields", "content", "failed"),
    [
        ({}, PLAIN, '{"priority": "high"}', ()),
        ({}, PLAIN, '{"priority": "righteous"}', ("json_schema",)),
        ({}, PLAIN, "high", ("json_parse",)),
        ({}, _asks("json_schema", OTHER), '{"other": 1}', ()),
        ({"json_schema": OTHER}, PLAIN, '{"other": 1}', ()),
        ({"json_schema": OTHER}, PLAIN, '{"priority": "high"}', ("json_schema",)),
    ],
)
def test_learned_schema_comes_last(
    config: dict[str, Any], fields: dict[str, Any], content: str, failed: tuple[str, ...]
) -> None:
    """The adapter's learned schema judges an answer whose request and config name none."""
    checks = OutputChecks(OutputChecksConfig(**config))
    assert checks.run(fields, _answer(content), LEARNED) == failed
