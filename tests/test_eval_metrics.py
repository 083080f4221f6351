"""Label extraction and the metric functions, against hand-computed values."""

from __future__ import annotations

import random
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from trainer import metrics
from trainer.examples import Example
from trainer.labels import extract_label
from trainer.metrics import (
    OTHER,
    classification_scores,
    conforms,
    evaluate_predictions,
    exact_match,
    field_agreement,
    json_validity,
    normalize_answer,
    normalized_match,
    prompt_preview,
    response_schema,
    rouge_l,
    schema_validity,
)
from trainer.settings import LabelRule

PATH = LabelRule(json_path="$.category")
NESTED = LabelRule(json_path="$.result.label")
INDEX = LabelRule(json_path="$.labels.0")
GROUP = LabelRule(regex=r"(?i)label:\s*(\w+)")
WHOLE = LabelRule(regex=r"spam|ham")


@pytest.mark.parametrize(
    ("text", "rule", "expected"),
    [
        ('{"category": "billing"}', PATH, "billing"),
        ('  \n{"category": "billing"}\n ', PATH, "billing"),
        ('```json\n{"category": "bug"}\n```', PATH, "bug"),
        ('```\n{"category": "bug"}\n```', PATH, "bug"),
        ('{"category": 1}', PATH, "1"),
        ('{"category": 2.5}', PATH, "2.5"),
        ('{"category": true}', PATH, "true"),
        ('{"category": false}', PATH, "false"),
        ('{"category": null}', PATH, None),
        ('{"category": ""}', PATH, None),
        ('{"category": ["a"]}', PATH, None),
        ('{"other": "x"}', PATH, None),
        ("category: billing", PATH, None),
        ('["billing"]', PATH, None),
        ('{"result": {"label": "ok"}}', NESTED, "ok"),
        ('{"result": "ok"}', NESTED, None),
        ('{"labels": ["first", "second"]}', INDEX, "first"),
        ('{"labels": []}', INDEX, None),
        ("Label: spam, because...", GROUP, "spam"),
        ("no label here", GROUP, None),
        ("this is ham.", WHOLE, "ham"),
        ("this is eggs.", WHOLE, None),
    ],
)
def test_extract_label(text: str, rule: LabelRule, expected: str | None) -> None:
    """A label is read by JSON path or RE2 pattern and normalized to a string, or is None."""
    assert extract_label(text, rule) == expected


def test_regex_group_that_did_not_take_part_falls_back_to_the_whole_match() -> None:
    """When the first group is unset in the match, the whole match is the label."""
    assert extract_label("verdict: unknown", LabelRule(regex=r"label=(\w+)|unknown")) == "unknown"


@pytest.mark.parametrize(
    ("predictions", "references", "exact", "normalized"),
    [
        (["Paris", "paris"], ["Paris", "Paris"], 1 / 2, 1.0),
        (["  The  answer is 42. "], ["the answer is 42"], 0.0, 1.0),
        (["Yes!"], ["yes"], 0.0, 1.0),
        (['{"b": 1, "a": [1, 2]}'], ['{"a":[1,2],"b":1}'], 0.0, 1.0),
        (['```json\n{"a": {"y": 2, "x": 1}}\n```'], ['{"a": {"x": 1, "y": 2}}'], 0.0, 1.0),
        (['{"a": "X"}'], ['{"a": "x"}'], 0.0, 0.0),
        (["Paris", "Lyon"], ["Paris", "Nice"], 1 / 2, 1 / 2),
        ([], [], 0.0, 0.0),
    ],
)
def test_exact_and_normalized_match(
    predictions: list[str], references: list[str], exact: float, normalized: float
) -> None:
    """Normalized match folds case, whitespace and trailing punctuation; JSON compares parsed."""
    assert exact_match(predictions, references) == pytest.approx(exact)
    assert normalized_match(predictions, references) == pytest.approx(normalized)


def test_normalized_json_keeps_values_exact() -> None:
    """Reordered keys normalize to the same text; string values keep their case."""
    assert normalize_answer('{"b": "Q", "a": 1}') == '{"a":1,"b":"Q"}'


def test_json_validity_counts_parseable_predictions() -> None:
    """Two of four predictions parse as JSON (a fenced one counts)."""
    predictions = ['{"a": 1}', "```json\n[1]\n```", "{a: 1}", "sure! here it is"]
    assert json_validity(predictions) == pytest.approx(0.5)


def test_field_agreement_with_missing_fields() -> None:
    """A missing or different field disagrees; each field's share is over references holding it."""
    references = ['{"a": 1, "b": "x"}', '{"a": 2, "b": "y"}', '{"a": 3, "c": [1, 2]}']
    predictions = ['{"a": 1, "b": "x"}', '{"a": 2}', "not json at all"]
    scores = field_agreement(predictions, references)
    # a: 2 of 3; b: 1 of 2; c: 0 of 1.
    assert scores.per_field == pytest.approx({"a": 2 / 3, "b": 1 / 2, "c": 0.0})
    assert scores.mean == pytest.approx((2 / 3 + 1 / 2 + 0.0) / 3)
    assert scores.per_example == pytest.approx([1.0, 0.5, 0.0])


def test_field_agreement_compares_nested_values_by_content() -> None:
    """Nested objects agree whatever their key order; 1 and true do not."""
    scores = field_agreement(
        ['{"a": {"y": 2, "x": 1}, "b": true}'], ['{"a": {"x": 1, "y": 2}, "b": 1}']
    )
    assert scores.per_field == {"a": 1.0, "b": 0.0}


def _format(schema: dict[str, Any]) -> dict[str, Any]:
    return {
        "response_format": {"type": "json_schema", "json_schema": {"name": "t", "schema": schema}}
    }


TICKET = {
    "type": "object",
    "properties": {
        "category": {"type": "string", "enum": ["billing", "bug"]},
        "priority": {"type": "integer"},
        "tags": {"type": "array", "items": {"type": "string"}},
    },
    "required": ["category", "priority"],
}
SCHEMA_CASES = [
    ('{"category": "bug", "priority": 2}', True),
    ('{"category": "bug", "priority": 2, "tags": ["a"]}', True),
    ('{"category": "bug"}', False),  # required
    ('{"category": "other", "priority": 2}', False),  # enum
    ('{"category": "bug", "priority": "2"}', False),  # type
    ('{"category": "bug", "priority": true}', False),  # a boolean is no integer
    ('{"category": "bug", "priority": 2, "tags": [1]}', False),  # items
    ('["bug", 2]', False),
]


def test_response_schema_is_read_from_params() -> None:
    """Only a json_schema response format carries a schema."""
    assert response_schema(_format(TICKET)) == TICKET
    assert response_schema({"response_format": {"type": "json_object"}}) is None
    assert response_schema({}) is None


def test_schema_validity() -> None:
    """Schema validity is the share of valid predictions among examples with a schema."""
    predictions = [text for text, _ in SCHEMA_CASES] + ["not json", '{"x": 1}']
    schemas = [TICKET] * (len(SCHEMA_CASES) + 1) + [None]
    # 2 valid of the 9 with a schema; the last example has none and is not counted.
    assert schema_validity(predictions, schemas) == pytest.approx(2 / 9)
    assert schema_validity(["{}"], [None]) is None


@pytest.mark.parametrize(("text", "valid"), SCHEMA_CASES)
def test_schema_check(text: str, valid: bool) -> None:
    """A parsed answer is checked against the request's JSON schema."""
    assert conforms(metrics.parse_json_answer(text), TICKET) is valid


def test_classification_scores_with_an_absent_class() -> None:
    """A reference class never predicted has F1 0 and still counts in macro-F1."""
    reference = ["a", "a", "b", "b", "c", None]
    predicted = ["a", "b", "b", "b", "zzz", "a"]
    scores = classification_scores(predicted, reference)
    # The last example has no reference label and is left out: 3 right of 5.
    assert scores.accuracy == pytest.approx(3 / 5)
    a, b, c = (scores.per_class[k] for k in "abc")
    assert (a.precision, a.recall, a.f1, a.support) == pytest.approx((1.0, 0.5, 2 / 3, 2))
    assert (b.precision, b.recall, b.f1, b.support) == pytest.approx((2 / 3, 1.0, 0.8, 2))
    assert (c.precision, c.recall, c.f1, c.support) == (0.0, 0.0, 0.0, 1)
    assert scores.macro_f1 == pytest.approx((2 / 3 + 0.8 + 0.0) / 3)
    assert set(scores.per_class) == {"a", "b", "c"}  # "zzz" is no class


def test_confusion_matrix_puts_unknown_predictions_in_other() -> None:
    """Rows are reference classes; a label outside them, or none, lands in OTHER."""
    scores = classification_scores(["a", None, "x", "b"], ["a", "a", "b", "b"])
    assert scores.confusion == {
        "a": {"a": 1, "b": 0, OTHER: 1},
        "b": {"a": 0, "b": 1, OTHER: 1},
    }


@pytest.mark.parametrize(
    ("prediction", "reference", "expected"),
    [
        # LCS "the cat the mat" = 4 of 6 and 4 of 6 tokens: P = R = F = 2/3.
        ("the cat sat on the mat", "the cat lay under the mat", 2 / 3),
        # LCS "police the gunman" = 3 of 4 tokens on each side: F = 3/4.
        ("police killed the gunman", "police kill the gunman", 3 / 4),
        # LCS "a c" = 2; P = 2/3, R = 2/2: F = 2·(2/3)·1 / (2/3 + 1) = 0.8.
        ("a b c", "a c", 0.8),
        ("The Cat", "the cat", 1.0),
        ("", "", 1.0),
        ("", "x", 0.0),
        ("x y", "z", 0.0),
    ],
)
def test_rouge_l(prediction: str, reference: str, expected: float) -> None:
    """ROUGE-L F1 is the LCS of case-folded whitespace tokens."""
    assert rouge_l(prediction, reference) == pytest.approx(expected)


def test_rouge_l_caps_the_length() -> None:
    """Only the first max_tokens tokens of each side are compared."""
    assert rouge_l("a b c d", "a b x y", max_tokens=2) == 1.0


def reference_lcs(a: list[str], b: list[str]) -> int:
    """The textbook dynamic programme: ``table[i][j]`` is the LCS length of a[:i] and b[:j]."""
    table = [[0] * (len(b) + 1) for _ in range(len(a) + 1)]
    for i, x in enumerate(a, 1):
        for j, y in enumerate(b, 1):
            same = x == y
            table[i][j] = table[i - 1][j - 1] + 1 if same else max(table[i - 1][j], table[i][j - 1])
    return table[-1][-1]


def reference_rouge_l(pred: list[str], ref: list[str], max_tokens: int) -> float:
    """ROUGE-L F1 of two token lists, case-folded and cut to ``max_tokens`` here."""
    pred = [t.casefold() for t in pred][:max_tokens]
    ref = [t.casefold() for t in ref][:max_tokens]
    if not pred or not ref:
        return float(pred == ref)
    common = reference_lcs(pred, ref)
    if not common:
        return 0.0
    precision, recall = common / len(pred), common / len(ref)
    return 2 * precision * recall / (precision + recall)


@pytest.mark.parametrize(
    ("prediction", "reference", "expected"),
    [
        ("a\tb\nc   d", "a b c d", 1.0),  # any run of whitespace separates tokens
        ("a\u00a0b\u2003c", "a b c", 1.0),  # Unicode whitespace too (str.split)
        ("STRASSE Straße", "strasse strasse", 1.0),  # case-folded, not only lower-cased
        ("cat.", "cat", 0.0),  # punctuation belongs to its token
        ("ab", "ba", 0.0),  # a token is compared whole, never character by character
        ("ab cd", "a b c d", 0.0),
        ("a aa a", "aa a", 0.8),  # one- and several-character tokens: LCS "aa a", P 2/3, R 1
    ],
)
def test_rouge_l_tokens(prediction: str, reference: str, expected: float) -> None:
    """A token is a case-folded run of non-whitespace characters, compared whole."""
    assert rouge_l(prediction, reference) == pytest.approx(expected)


_VOCAB = ["a", "b", "the", "The", "cat", "CAT", "ß", "ss", "x.", "é", "É", "12", "猫"]
_TOKEN = st.sampled_from(_VOCAB) | st.text(alphabet="abcABé.ß猫", min_size=1, max_size=3)
_SPACE = st.sampled_from([" ", "  ", "\t", "\n", "\u00a0", " \r\n "])


@st.composite
def _answer(draw: st.DrawFn) -> tuple[list[str], str]:
    """Tokens, and a text of them joined by random whitespace (maybe around them too)."""
    tokens = draw(st.lists(_TOKEN, max_size=40))
    spaces = draw(st.lists(_SPACE, min_size=len(tokens) + 1, max_size=len(tokens) + 1))
    lead = spaces[0] if draw(st.booleans()) else ""
    text = lead + "".join(t + s for t, s in zip(tokens, spaces[1:], strict=True))
    return tokens, text


@settings(max_examples=300, deadline=None, derandomize=True, database=None)
@given(pred=_answer(), ref=_answer(), max_tokens=st.integers(1, 45))
def test_rouge_l_matches_a_reference_lcs(
    pred: tuple[list[str], str], ref: tuple[list[str], str], max_tokens: int
) -> None:
    """On random answers, ROUGE-L equals the textbook LCS over the tokens they were made of."""
    expected = reference_rouge_l(pred[0], ref[0], max_tokens)
    assert rouge_l(pred[1], ref[1], max_tokens=max_tokens) == pytest.approx(expected)


def test_rouge_l_matches_a_reference_lcs_on_long_answers() -> None:
    """Answers longer than ROUGE_MAX_TOKENS (and than a 64-bit word of rapidfuzz's bit-parallel
    LCS) score as the textbook LCS of their first ROUGE_MAX_TOKENS tokens does."""
    rng = random.Random(7)
    for _ in range(3):
        pred = rng.choices(_VOCAB, k=rng.randint(60, 600))
        ref = rng.choices(_VOCAB, k=rng.randint(60, 600))
        expected = reference_rouge_l(pred, ref, metrics.ROUGE_MAX_TOKENS)
        assert rouge_l(" ".join(pred), " ".join(ref)) == pytest.approx(expected)


def test_prompt_preview_is_the_last_user_turn() -> None:
    """The preview shows the last user turn's text parts, cut to the limit."""
    messages = [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": "first"},
        {"role": "assistant", "content": "ok"},
        {"role": "user", "content": [{"type": "text", "text": "second question"}]},
    ]
    assert prompt_preview(messages, limit=6) == "second"


def _example(completion: str, i: int = 0, **params: Any) -> Example:
    return Example(
        request_id=f"r{i}",
        messages=[{"role": "user", "content": f"question {i}"}],
        completion=completion,
        group=f"g{i}",
        params=params,
    )


def test_evaluate_predictions_on_json_answers() -> None:
    """Object references are scored by field agreement, validity and per-example agreement."""
    examples = [_example('{"a": 1, "b": 2}', 0), _example('{"a": 1, "b": 3}', 1)]
    scores = evaluate_predictions(examples, ['{"b": 2, "a": 1}', '{"a": 1}'])
    assert scores.kind == "json"
    assert scores.metrics() == pytest.approx(
        {
            "exact_match": 0.0,
            "normalized_match": 0.5,
            "json_valid": 1.0,
            "field_agreement": (1.0 + 0.5) / 2,
        }
    )
    assert [(r.correct, r.score) for r in scores.records] == [(True, 1.0), (False, 0.5)]


def test_evaluate_predictions_on_labels() -> None:
    """With a label rule, the example's stored label is the reference and accuracy is scored."""
    examples = [_example("Label: spam", 0), _example("Label: ham", 1)]
    examples[1] = Example(**{**vars(examples[1]), "label": "eggs"})
    scores = evaluate_predictions(examples, ["label: spam!", "Label: ham"], label_rule=GROUP)
    assert scores.kind == "classification"
    assert scores.classes is not None and scores.classes.accuracy == 0.5
    assert [(r.reference_label, r.predicted_label) for r in scores.records] == [
        ("spam", "spam"),
        ("eggs", "ham"),
    ]


def test_evaluate_predictions_on_free_text() -> None:
    """Free text gets ROUGE-L and, where the request asked for JSON, JSON validity."""
    examples = [
        _example("the cat sat on the mat", 0),
        _example("fine", 1, response_format={"type": "json_object"}),
    ]
    scores = evaluate_predictions(examples, ["the cat lay under the mat", "fine"])
    assert scores.kind == "text"
    assert scores.rouge_l == pytest.approx((2 / 3 + 1.0) / 2)
    assert scores.json_valid == 0.0
    assert scores.fields is None and scores.classes is None


def test_evaluate_predictions_needs_one_answer_per_example() -> None:
    """A prediction list of the wrong length is an error, not a silent truncation."""
    with pytest.raises(ValueError, match="1 predictions for 2 examples"):
        evaluate_predictions([_example("a", 0), _example("b", 1)], ["a"])
