"""The decoding policy chosen from greedy and sampled scores (trainer.decoding), and the
sampling settings a curated example keeps (trainer.curate)."""

from __future__ import annotations

import orjson
import pytest

from trainer.curate import sampling_settings, to_example
from trainer.decoding import (
    MAX_TOKENS_MARGIN,
    MAX_TOKENS_SLACK,
    as_traffic,
    choose_policy,
    settings_of,
    traffic_mix,
)
from trainer.examples import Example, examples_from_table, examples_to_table

TRAFFIC = {"requests": 1, "temperature_unset": 1.0, "temperature": {"1": 1.0}}


def _example(i: int, **decoding: float) -> Example:
    return Example(f"r{i}", [{"role": "user", "content": f"q{i}"}], f"a{i}", "g", decoding=decoding)


@pytest.mark.parametrize(
    ("greedy", "sampled", "temperature"),
    [
        ({"indist": 1.0, "balanced": 1.0}, {"indist": 0.975, "balanced": 1.0}, 0.0),
        ({"test-indist": 1.0}, {"test-indist": 1.0}, 0.0),  # a tie goes to greedy
        ({"a": 0.6, "b": 0.7}, {"a": 0.7, "b": 0.6}, 0.0),  # sampling must win everywhere
        ({"a": 0.6, "b": 0.7}, {"a": 0.65, "b": 0.71}, None),  # it does: the client's default
        ({}, {}, 0.0),  # nothing measured: greedy
    ],
)
def test_greedy_unless_sampling_scores_higher_on_every_set(
    greedy: dict[str, float], sampled: dict[str, float], temperature: float | None
) -> None:
    """The policy sets temperature 0 for clients that set none, unless sampling won."""
    policy = choose_policy(greedy, sampled, longest_answer_tokens=10, traffic=TRAFFIC)
    assert policy["temperature"] == temperature
    assert policy["top_p"] is None and policy["max_temperature"] is None
    assert policy["basis"]["greedy"] == greedy and policy["basis"]["traffic"] == TRAFFIC


def test_max_tokens_is_the_longest_training_answer_with_a_margin() -> None:
    """A student that loses its way stops a little past the teacher's longest answer."""
    policy = choose_policy({}, {}, longest_answer_tokens=40, traffic=TRAFFIC)
    assert policy["max_tokens"] == int(40 * MAX_TOKENS_MARGIN) + MAX_TOKENS_SLACK
    assert policy["basis"]["longest_answer_tokens"] == 40


def test_each_example_is_answered_with_its_own_requests_sampling() -> None:
    """Examples are grouped by (temperature, top_p), unset counting as 1; order is kept."""
    examples = [_example(0), _example(1, temperature=0.0), _example(2, top_p=0.9), _example(3)]
    calls: list[tuple[list[str], float, float]] = []

    def generate_at(batch: list[Example], temperature: float, top_p: float) -> list[str]:
        calls.append(([e.request_id for e in batch], temperature, top_p))
        return [f"{e.request_id}@{temperature}/{top_p}" for e in batch]

    answers = as_traffic(generate_at)(examples)
    assert answers == ["r0@1.0/1.0", "r1@0.0/1.0", "r2@1.0/0.9", "r3@1.0/1.0"]
    assert sorted(calls) == [
        (["r0", "r3"], 1.0, 1.0), (["r1"], 0.0, 1.0), (["r2"], 1.0, 0.9),
    ]  # fmt: skip
    assert settings_of(examples[2]) == (1.0, 0.9)


def test_traffic_mix_counts_unset_temperatures_as_the_providers_default() -> None:
    """The share leaving temperature unset, and each temperature's share."""
    mix = traffic_mix([_example(0), _example(1), _example(2, temperature=0.0), _example(3)])
    assert mix == {"requests": 4, "temperature_unset": 0.75, "temperature": {"0": 0.25, "1": 0.75}}


@pytest.mark.parametrize(
    ("request_fields", "expected"),
    [
        ({}, {}),
        ({"temperature": 0}, {"temperature": 0.0}),
        ({"temperature": 0.7, "top_p": 0.9}, {"temperature": 0.7, "top_p": 0.9}),
        ({"temperature": None, "top_p": "high"}, {}),
        ({"temperature": True}, {}),
    ],
)
def test_curation_keeps_the_numeric_sampling_settings_a_request_set(
    request_fields: dict[str, object], expected: dict[str, float]
) -> None:
    """Only numbers count; null, strings and booleans are as if unset."""
    assert sampling_settings(request_fields) == expected


def test_the_sampling_settings_travel_with_the_example_through_a_snapshot() -> None:
    """Curated from the record's request, written to Parquet and read back."""
    request = {"messages": [{"role": "user", "content": "hi"}], "temperature": 0.2}
    response = {"choices": [{"message": {"role": "assistant", "content": "hello"},
                             "finish_reason": "stop"}]}  # fmt: skip
    record = {
        "request_id": "r1", "endpoint": "chat.completions", "backend": "teacher", "status": 200,
        "complete": True,
        "request": orjson.dumps(request).decode(), "response": orjson.dumps(response).decode(),
        "ts": 1_700_000_000_000_000,
    }  # fmt: skip
    example = to_example(record).example
    assert example is not None and example.decoding == {"temperature": 0.2}
    assert examples_from_table(examples_to_table([example]))[0].decoding == {"temperature": 0.2}
    plain = Example("r2", request["messages"], "x", "g")
    assert examples_from_table(examples_to_table([plain]))[0].decoding == {}
