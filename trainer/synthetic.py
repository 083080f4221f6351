"""A synthetic task whose correct answers are known: routing support tickets.

Each ticket mentions a product area through a few telltale words among filler; the right
answer is a JSON object naming the area. A deterministic "teacher" answers it perfectly, so a
student's agreement with the teacher is its accuracy. Used by the learning test and the demo.
"""

from __future__ import annotations

import random
from typing import Final

import orjson

CATEGORIES: Final = {
    "billing": ("invoice", "refund", "charged twice", "payment", "receipt", "subscription fee"),
    "bug": ("crashes", "error message", "freezes", "blank screen", "exception", "broken button"),
    "account": ("password", "log in", "locked out", "username", "two-factor code", "email change"),
}
SYSTEM: Final = 'Route the ticket. Reply with JSON: {"category": "billing" | "bug" | "account"}.'
_OPENERS: Final = ("Hi,", "Hello team,", "Urgent:", "Good morning.", "Hey,", "Dear support,")
_FILLER: Final = (
    "I have been a customer for years", "this started yesterday", "please help",
    "it happens on my phone and laptop", "my colleague has the same issue",
    "I tried again this morning", "thanks in advance", "it is blocking my work",
)  # fmt: skip


def ticket(rng: random.Random) -> tuple[str, str]:
    """A ticket text and its category."""
    category = rng.choice(sorted(CATEGORIES))
    cue = rng.choice(CATEGORIES[category])
    parts = [rng.choice(_OPENERS), f"something is wrong with the {cue},", rng.choice(_FILLER)]
    rng.shuffle(parts[1:])
    return " ".join(parts) + ".", category


def messages(text: str) -> list[dict[str, str]]:
    return [{"role": "system", "content": SYSTEM}, {"role": "user", "content": text}]


def answer(category: str) -> str:
    """The teacher's (always correct) answer."""
    return orjson.dumps({"category": category}).decode()


def teacher_answer(ticket_text: str) -> str:
    """The deterministic teacher: finds the telltale words in a ticket."""
    for category, cues in sorted(CATEGORIES.items()):
        if any(cue in ticket_text for cue in cues):
            return answer(category)
    return answer("bug")
