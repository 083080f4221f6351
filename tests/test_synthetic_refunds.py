"""The refund task: character similarity prefers wrong near-copies to right paraphrases; the
task's judging rule does not (trainer.synthetic_refunds)."""

from __future__ import annotations

import random

import pytest
from rapidfuzz import fuzz

from trainer import synthetic_refunds as refunds
from trainer.metrics import rouge_l


def _tickets(n: int) -> list[refunds.Ticket]:
    rng = random.Random(3)
    return [refunds.ticket(rng) for _ in range(n)]


def test_tickets_ask_for_refunds_about_half_the_time() -> None:
    """Both verdicts occur, every thing occurs, the thing is named in the ticket's words."""
    tickets = _tickets(200)
    assert 70 <= sum(t.refund for t in tickets) <= 130
    assert {t.thing for t in tickets} == set(refunds.THINGS)
    assert all(t.thing.split()[0] in t.text for t in tickets)


def test_similarity_prefers_the_wrong_near_copy_the_rule_does_not() -> None:
    """On every ticket the flipped near-copy is closer in characters (ratio and ROUGE-L) to the
    teacher than the right paraphrase, and the rule passes the paraphrase only."""
    for t in _tickets(50):
        reference = refunds.teacher_answer(t)
        wrong, right = refunds.near_copy_wrong(t), refunds.paraphrase(t)
        assert fuzz.ratio(reference, wrong) > fuzz.ratio(reference, right)
        assert rouge_l(reference, wrong) > rouge_l(reference, right)
        assert refunds.as_good(reference, right, t.thing)
        assert not refunds.as_good(reference, wrong, t.thing)
        assert refunds.as_good(reference, reference, t.thing)


@pytest.mark.parametrize(
    ("answer", "expected"),
    [("Yes, it is.", "yes"), ("no; never", "no"), ("  YES - sure", "yes"), ("Maybe.", None),
     ("", None), ("Yesterday it was fine", None)],
)  # fmt: skip
def test_the_verdict_is_the_first_word(answer: str, expected: str | None) -> None:
    """Only a first word of yes or no is a verdict."""
    assert refunds.verdict(answer) == expected
