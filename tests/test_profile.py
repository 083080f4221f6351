"""Input profiles and drift scores, as pure functions."""

from __future__ import annotations

import math

import pytest

from core.profile import Profile, drift, js_divergence, psi
from core.text import prompt_text


def test_prompt_text_skips_system_and_keeps_text_parts() -> None:
    """Only what the user said is profiled (no system or developer turn), text parts included."""
    messages = [
        {"role": "system", "content": "You are terse."},
        {"role": "developer", "content": "Answer in JSON."},
        {"role": "user", "content": [{"type": "text", "text": "hello"}, {"type": "image_url"}]},
        {"role": "user", "content": "world"},
    ]
    assert prompt_text(messages) == "hello\nworld"


def test_same_distribution_does_not_drift() -> None:
    """A live profile drawn like the reference scores far below the 0.1 threshold."""
    texts = [f"please reset my password for account {i}" for i in range(200)]
    scores = drift(Profile.of(texts[:100]), Profile.of(texts[100:]))
    assert all(s["psi"] < 0.1 and s["js"] < 0.1 for s in scores.values())


def test_other_language_and_length_drift() -> None:
    """Long Cyrillic prompts against short English ones drift on every feature."""
    ref = Profile.of([f"reset my password {i}" for i in range(100)])
    text = "пожалуйста, помогите мне с моим заказом "  # noqa: RUF001
    live = Profile.of([text * 20 for _ in range(100)])
    scores = drift(ref, live)
    assert all(s["psi"] > 0.1 for s in scores.values()), scores


@pytest.mark.parametrize(
    ("p", "q", "expected"),
    [([0.5, 0.5], [0.5, 0.5], 0.0), ([1.0, 0.0], [0.0, 1.0], 1.0)],
)
def test_js_bounds(p: list[float], q: list[float], expected: float) -> None:
    """JS divergence is 0 for equal and 1 for disjoint distributions (base 2)."""
    assert js_divergence(p, q) == pytest.approx(expected)


def test_psi_closed_form() -> None:
    """PSI matches its closed form on a two-bin example."""
    expected = (0.4 - 0.5) * math.log(0.4 / 0.5) + (0.6 - 0.5) * math.log(0.6 / 0.5)
    assert psi([0.5, 0.5], [0.4, 0.6]) == pytest.approx(expected)


def test_round_trip_through_dict() -> None:
    """A profile survives to_dict/from_dict (as it travels in protege.json)."""
    profile = Profile.of(["a b c", "d e"])
    assert Profile.from_dict(profile.to_dict()) == profile
