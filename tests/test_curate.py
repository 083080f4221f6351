"""Curation as pure functions: records to examples, filters, labels, dedup, caps, splits."""

from __future__ import annotations

import random
from collections import Counter
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import pytest

from trainer.curate import (
    FrozenTests,
    Rules,
    balance,
    balanced_sample,
    cap_groups,
    curate_splits,
    group_position,
    scrub,
    to_example,
)
from trainer.dedup import NearIndex, deduplicate, hamming, simhash
from trainer.examples import Example
from trainer.settings import CurationConfig, LabelRule

T0 = datetime(2024, 5, 1, 10, tzinfo=UTC)
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def rec(
    request_id: str = "r1",
    prompt: str = "What is two plus two?",
    answer: Any = "Four.",
    **fields: Any,
) -> dict[str, Any]:
    """A successful teacher chat exchange with the record's columns; ``fields`` override."""
    message: dict[str, Any] = {"role": "assistant", "content": answer}
    record = {
        "request_id": request_id,
        "ts": T0,
        "task": "t",
        "endpoint": "chat.completions",
        "backend": "teacher",
        "route": "teacher",
        "stream": False,
        "complete": True,
        "status": 200,
        "request": orjson.dumps({"messages": [{"role": "user", "content": prompt}]}).decode(),
        "response": orjson.dumps(
            {"choices": [{"message": message, "finish_reason": "stop"}]}
        ).decode(),
        "client": None,
        "user": None,
    }
    record.update(fields)
    return record


def ex(
    request_id: str,
    prompt: str = "hello there",
    *,
    group: str = "g",
    label: str | None = None,
    minutes: int = 0,
    source: str = "teacher",
    system: str | None = None,
) -> Example:
    messages = [{"role": "system", "content": system}] if system else []
    messages.append({"role": "user", "content": prompt})
    return Example(
        request_id=request_id,
        messages=messages,
        completion="ok",
        group=group,
        label=label,
        source=source,
        ts=T0 + timedelta(minutes=minutes),
    )


def words(n: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    return [f"w{rng.randrange(10_000)}" for _ in range(n)]


# --- records to examples ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fields", "reason"),
    [
        ({"endpoint": "embeddings"}, "not_chat"),
        ({"backend": "student"}, "not_teacher"),
        ({"complete": False}, "incomplete"),
        ({"status": 500}, "error_status"),
        ({"request": "not json"}, "bad_request"),
        ({"request": '{"messages": []}'}, "bad_request"),
        ({"request": '{"messages": ["hi"]}'}, "bad_request"),
        ({"response": None}, "bad_response"),
        ({"response": '{"choices": []}'}, "bad_response"),
        ({"response": '{"choices": [{"text": "x"}]}'}, "bad_response"),
        ({"answer": None}, "empty_completion"),
        ({"answer": "  \n"}, "empty_completion"),
        (
            {
                "response": '{"choices": [{"message": {"content": null, '
                '"tool_calls": [{"id": "c1", "type": "function"}]}}]}'
            },
            "tool_calls_only",
        ),
        (
            {
                "response": '{"choices": [{"message": {"content": "cut"}, '
                '"finish_reason": "length"}]}'
            },
            "truncated",
        ),
        (
            {
                "response": '{"choices": [{"message": {"content": "x"}, '
                '"finish_reason": "content_filter"}]}'
            },
            "content_filter",
        ),
    ],
)
def test_to_example_rejects_with_reason(fields: dict[str, Any], reason: str) -> None:
    """Only complete, successful teacher chat answers with text become examples; else a reason."""
    answer = fields.pop("answer", "Four.")
    outcome = to_example(rec(answer=answer, **fields))
    assert outcome.example is None
    assert outcome.reason == reason


@pytest.mark.parametrize(
    ("user", "client", "group"),
    [("u1", "c1", "u1"), (None, "c1", "c1"), (None, None, "r1"), ("", "c1", "c1")],
)
def test_to_example_group_is_user_then_client_then_request(
    user: str | None, client: str | None, group: str
) -> None:
    """The group is the hashed user, else the client, else the request id."""
    example = to_example(rec(user=user, client=client)).example
    assert example is not None and example.group == group


def test_to_example_fields() -> None:
    """Messages, completion, source, ts and only the judging parameters are carried over."""
    request = {
        "model": "m",
        "temperature": 0.2,
        "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}],
        "response_format": {"type": "json_object"},
        "tool_choice": "none",
    }
    ts_us = (T0 - EPOCH) // timedelta(microseconds=1)
    outcome = to_example(rec(request=orjson.dumps(request).decode(), ts=ts_us, answer="{}"))
    example = outcome.example
    assert outcome.reason is None and example is not None
    assert example.messages == request["messages"]
    assert example.completion == "{}"
    assert example.source == "teacher"
    assert example.params == {"response_format": {"type": "json_object"}, "tool_choice": "none"}
    assert example.ts == T0


def test_to_example_text_parts() -> None:
    """An answer given as a list of text parts is their text."""
    answer = [{"type": "text", "text": "Four"}, {"type": "text", "text": "indeed."}]
    example = to_example(rec(answer=answer)).example
    assert example is not None and example.completion == "Four\nindeed."


@pytest.mark.parametrize(
    "fields", [{}, {"complete": False}, {"backend": "student"}, {"status": 502}, {"answer": None}]
)
def test_correction_overrides_the_logged_answer(fields: dict[str, Any]) -> None:
    """A correction replaces the answer, whatever it was, and marks the example's source."""
    answer = fields.pop("answer", "Five.")
    example = to_example(rec(answer=answer, **fields), {"r1": "Four."}).example
    assert example is not None
    assert (example.completion, example.source) == ("Four.", "correction")


def test_corrections_are_judged_on_the_gold_text() -> None:
    """Filters see the corrected text: a refusal corrected is kept, a good answer corrected to a
    refusal is dropped."""
    rules = Rules.from_config(CurationConfig())
    refused = rec("r1", answer="I'm sorry, but I can't do maths.")
    assert rules.examine(refused).reason == "refusal"
    assert rules.examine(refused, {"r1": "Four."}).example is not None
    outcome = rules.examine(rec("r2"), {"r2": "I cannot help with that."})
    assert outcome.reason == "refusal"


# --- filters, scrubbing, labels ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("settings", "prompt", "answer", "reason"),
    [
        ({}, "What is two plus two?", "Four.", None),
        ({"min_prompt_chars": 50}, "short", "Four.", "prompt_too_short"),
        ({"max_prompt_chars": 10}, "far too long a prompt", "Four.", "prompt_too_long"),
        ({"min_completion_chars": 10}, "q?", "Four.", "completion_too_short"),
        ({"max_completion_chars": 3}, "q?", "Four.", "completion_too_long"),
        ({"must_match": [r"^\{"]}, "q?", "Four.", "must_match"),
        ({"must_match": [r"^\{", r"\}$"]}, "q?", '{"a": 1}', None),
        ({"must_not_match": ["(?i)four"]}, "q?", "Four.", "must_not_match"),
        ({}, "q?", "AS AN AI LANGUAGE MODEL, I think four.", "refusal"),
        ({}, "q?", "I can\u2019t help with that.", "refusal"),
        ({"refusal_phrases": []}, "q?", "I can't help with that.", None),
    ],
)
def test_rule_filters(
    settings: dict[str, Any], prompt: str, answer: str, reason: str | None
) -> None:
    """Length bounds, must/must-not patterns and refusal phrases drop with their reason."""
    outcome = Rules.from_config(CurationConfig(**settings)).examine(
        rec(prompt=prompt, answer=answer)
    )
    assert outcome.reason == reason
    assert (outcome.example is None) == (reason is not None)


def test_prompt_length_counts_every_message() -> None:
    """The prompt length is the characters of all message texts, system turn included."""
    request = {
        "messages": [{"role": "system", "content": "x" * 6}, {"role": "user", "content": "y" * 5}]
    }
    record = rec(request=orjson.dumps(request).decode())
    assert Rules.from_config(CurationConfig(max_prompt_chars=11)).examine(record).reason is None
    assert Rules.from_config(CurationConfig(max_prompt_chars=10)).examine(record).reason == (
        "prompt_too_long"
    )


@pytest.mark.parametrize(
    ("settings", "key"),
    [
        ({"must_match": ["ok", "("]}, "must_match[1]"),
        ({"must_not_match": ["(?<=x)y"]}, "must_not_match[0]"),
        ({"label": LabelRule(regex="[a-")}, "label.regex"),
    ],
)
def test_bad_patterns_fail_naming_the_key(settings: dict[str, Any], key: str) -> None:
    """An invalid RE2 pattern fails when the rules are compiled, naming its setting."""
    with pytest.raises(ValueError, match=key.replace("[", r"\[").replace("]", r"\]")):
        Rules.from_config(CurationConfig(**settings))


def test_scrub_redacts_messages_and_completion() -> None:
    """PII left in older data is redacted in string and text-part contents and the answer."""
    example = Example(
        request_id="r",
        messages=[
            {"role": "user", "content": "mail ann@example.com"},
            {"role": "user", "content": [{"type": "text", "text": "call +1 415 555 0100"}]},
        ],
        completion="Sure, bob@example.org",
        group="g",
    )
    clean = scrub(example, Rules.from_config(CurationConfig()).redactor)
    assert clean.messages[0]["content"] == "mail [EMAIL]"
    assert clean.messages[1]["content"][0]["text"] == "call [PHONE]"
    assert clean.completion == "Sure, [EMAIL]"


@pytest.mark.parametrize(
    ("rule", "classes", "answer", "label", "reason"),
    [
        (LabelRule(json_path="$.category"), (), '{"category": "bug"}', "bug", None),
        (LabelRule(json_path="$.a.b"), (), '```json\n{"a": {"b": 2}}\n```', "2", None),
        (LabelRule(json_path="$.a.b"), (), '{"a": {"c": 2}}', None, "no_label"),
        (LabelRule(json_path="$.category"), (), "category: bug", None, "no_label"),
        (LabelRule(json_path="$.category"), ("bug", "billing"), '{"category": "x"}', None,
         "unknown_label"),
        (LabelRule(regex=r"^(spam|ham)\b"), (), "spam, clearly", "spam", None),
        (LabelRule(regex=r"(?i)toxic|clean"), (), "It is Toxic.", "Toxic", None),
        (LabelRule(regex=r"^(spam|ham)\b"), (), "maybe spam", None, "no_label"),
        (LabelRule(regex=r"^(spam|ham)\b"), ("spam",), "ham", None, "unknown_label"),
    ],
)  # fmt: skip
def test_label_extraction(
    rule: LabelRule, classes: tuple[str, ...], answer: str, label: str | None, reason: str | None
) -> None:
    """Labels come from a JSON path or a regex (first group, else whole match); labels outside
    the classes and answers without one are dropped with a reason."""
    rules = Rules.from_config(CurationConfig(label=rule, classes=classes))
    outcome = rules.examine(rec(answer=answer))
    assert outcome.reason == reason
    assert (outcome.example.label if outcome.example else None) == label


# --- duplicates -------------------------------------------------------------------------------


def test_exact_duplicates_keep_the_earliest() -> None:
    """Prompts equal up to case and whitespace are duplicates; the earliest stays."""
    late = ex("b", "Hello   THERE", minutes=5)
    early = ex("a", "hello there", minutes=1)
    other = ex("c", "hello where", minutes=0)
    kept, drops = deduplicate([late, early, other], distance=-1)
    assert {e.request_id for e in kept} == {"a", "c"}
    assert drops == Counter({"duplicate": 1})


def test_a_correction_wins_over_an_earlier_duplicate() -> None:
    """Among duplicates a human correction stays, however late."""
    kept, _ = deduplicate([ex("a"), ex("b", minutes=9, source="correction")], distance=3)
    assert [e.request_id for e in kept] == ["b"]


def test_near_duplicates_are_removed_and_distinct_texts_kept() -> None:
    """A long text with a one-word edit is a near-duplicate; unrelated texts all stay."""
    base = words(400, seed=1)
    edited = [*base]
    edited[200] = "changed"
    assert hamming(simhash(" ".join(base)), simhash(" ".join(edited))) <= 3
    distinct = [ex(f"d{i}", " ".join(words(400, seed=100 + i)), minutes=i) for i in range(30)]
    pair = [ex("orig", " ".join(base), minutes=-1), ex("edit", " ".join(edited), minutes=50)]
    kept, drops = deduplicate([*distinct, *pair], distance=3)
    assert {e.request_id for e in kept} == {"orig"} | {e.request_id for e in distinct}
    assert drops == Counter({"near_duplicate": 1})
    kept, drops = deduplicate([*distinct, *pair], distance=-1)
    assert len(kept) == 32 and not drops


def test_near_duplicates_ignore_case_and_punctuation() -> None:
    """Texts differing only in case and punctuation have one fingerprint."""
    text = " ".join(words(30, seed=3))
    assert simhash(text) == simhash(text.upper().replace(" ", ", ") + "!")


def test_a_shared_system_prompt_does_not_make_near_duplicates() -> None:
    """Fingerprints cover the user turns: a long common system prompt does not merge them."""
    system = " ".join(words(2000, seed=9))
    examples = [ex(f"e{i}", f"comment number {i} says {i * 7}", system=system) for i in range(50)]
    kept, drops = deduplicate(examples, distance=3)
    assert len(kept) == 50 and not drops


@pytest.mark.parametrize("distance", [0, 1, 3, 5])
def test_near_index_finds_what_brute_force_finds(distance: int) -> None:
    """Band buckets return exactly the fingerprints within the distance (pigeonhole)."""
    rng = random.Random(distance)
    stored = [rng.getrandbits(64) for _ in range(300)]
    index = NearIndex(distance)
    for fingerprint in stored:
        index.add(fingerprint)
    queries = [rng.getrandbits(64) for _ in range(100)]
    for fingerprint in stored[:100]:  # flip up to distance + 1 random bits
        flips = rng.sample(range(64), rng.randint(0, distance + 1))
        queries.append(fingerprint ^ sum(1 << b for b in flips))
    for query in queries:
        assert index.near(query) == any(hamming(query, s) <= distance for s in stored)


# --- caps, balance, splits --------------------------------------------------------------------


def test_cap_per_group_is_a_seeded_stable_sample() -> None:
    """A group keeps at most the cap, chosen by seed; more data does not reshuffle the choice."""
    power = [ex(f"p{i:03}", group="power", minutes=i) for i in range(100)]
    small = [ex(f"s{i}", group="small") for i in range(3)]
    kept, dropped = cap_groups([*power, *small], limit=10, seed=7)
    counts = Counter(e.group for e in kept)
    assert counts == {"power": 10, "small": 3} and dropped == 90
    assert kept == cap_groups([*reversed(power), *small], limit=10, seed=7)[0]
    assert kept != cap_groups([*power, *small], limit=10, seed=8)[0]
    assert {e.request_id for e in kept if e.group == "power"} != {f"p{i:03}" for i in range(10)}
    more = [*power, *(ex(f"q{i}", group="power") for i in range(100))]
    again = {e.request_id for e in cap_groups(more, limit=10, seed=7)[0]}
    chosen_before = {e.request_id for e in kept if e.group == "power"}
    assert {i for i in again if i.startswith("p")} <= chosen_before


def test_balance_cuts_classes_to_the_rarest() -> None:
    """Every class is downsampled to the rarest class's count; free text is left alone."""
    examples = [ex(f"a{i}", label="a") for i in range(30)] + [
        ex(f"b{i}", label="b") for i in range(4)
    ]
    kept, dropped = balance(examples, seed=0)
    assert Counter(e.label for e in kept) == {"a": 4, "b": 4} and dropped == 26
    free = [ex(f"f{i}") for i in range(5)]
    assert balance(free, seed=0) == (free, 0)


def test_balanced_sample_has_equal_classes() -> None:
    """test-balanced takes the same number of every class, at most the per-class size."""
    pool = [ex(f"a{i}", label="a") for i in range(30)] + [ex(f"b{i}", label="b") for i in range(12)]
    assert Counter(e.label for e in balanced_sample(pool, 50, seed=0)) == {"a": 12, "b": 12}
    assert Counter(e.label for e in balanced_sample(pool, 5, seed=0)) == {"a": 5, "b": 5}
    assert balanced_sample([ex("f")], 5, seed=0) == []


def random_examples(rng: random.Random, n: int, groups: int) -> list[Example]:
    return [
        ex(
            f"r{i:05}",
            f"prompt {i} {rng.random()}",
            group=f"user-{rng.randrange(groups)}",
            label=rng.choice(["a", "a", "a", "b", "c"]),
            minutes=rng.randrange(10_000),
        )
        for i in range(n)
    ]


@pytest.mark.parametrize("seed", range(5))
def test_splits_never_share_a_group(seed: int) -> None:
    """Whatever the data, no group is in train and a test set; test-balanced is drawn from
    test-indist with equal classes; a group's set depends on the group and task only."""
    rng = random.Random(seed)
    config = CurationConfig(test_fraction=0.2, test_balanced_per_class=20, max_per_group=1000)
    examples = random_examples(rng, 2000, groups=rng.randint(20, 400))
    splits, _ = curate_splits(examples, "tickets", config, seed=seed)
    train_groups = {e.group for e in splits["train"]}
    test_groups = {e.group for e in splits["test-indist"] + splits["test-balanced"]}
    assert not train_groups & test_groups
    assert {e.request_id for e in splits["test-balanced"]} <= {
        e.request_id for e in splits["test-indist"]
    }
    assert len(set(Counter(e.label for e in splits["test-balanced"]).values())) <= 1
    for group in test_groups:
        assert group_position(group, "tickets") < 0.2
    assert len(splits["train"]) + len(splits["test-indist"]) == 2000


def test_group_positions_spread_evenly() -> None:
    """About test_fraction of groups land in the test pool."""
    share = sum(group_position(f"u{i}", "t") < 0.1 for i in range(10_000)) / 10_000
    assert 0.09 < share < 0.11
    assert group_position("u1", "t") == group_position("u1", "t") != group_position("u1", "t2")


def test_free_text_has_no_balanced_test_set() -> None:
    """Without labels, test-balanced is empty and test-indist is the test set."""
    examples = [ex(f"r{i}", f"text {i}", group=f"g{i}") for i in range(200)]
    splits, _ = curate_splits(examples, "t", CurationConfig(test_fraction=0.3), seed=0)
    assert splits["test-indist"] and splits["test-balanced"] == []


def test_balancing_applies_to_train_only() -> None:
    """With balance on, train classes are equal and test-indist keeps the real mix."""
    rng = random.Random(1)
    examples = random_examples(rng, 3000, groups=300)
    config = CurationConfig(balance=True, test_fraction=0.3, max_per_group=1000)
    splits, drops = curate_splits(examples, "t", config, seed=0)
    train = Counter(e.label for e in splits["train"])
    assert len(set(train.values())) == 1 and drops["balance"] > 0
    indist = Counter(e.label for e in splits["test-indist"])
    assert indist["a"] > 2 * indist["b"]


def test_frozen_tests_exclude_their_groups_and_prompts() -> None:
    """With frozen tests, their groups never train, nor any repeat of their prompts; all other
    examples train."""
    test = [ex("t1", "held out prompt", group="tg")]
    frozen = FrozenTests({"test-indist": test, "test-balanced": []}, frozenset({"tg"}))
    examples = [
        ex("n1", "new from test group", group="tg"),
        ex("n2", "Held  out PROMPT", group="other"),
        ex("n3", "fresh prompt", group="u9"),
    ]
    splits, drops = curate_splits(examples, "t", CurationConfig(), seed=0, frozen=frozen)
    assert [e.request_id for e in splits["train"]] == ["n3"]
    assert splits["test-indist"] == test
    assert drops == Counter({"test_group": 1, "test_overlap": 1})
