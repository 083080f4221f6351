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


# A second kind of ticket for the same task: a long forwarded e-mail thread. The same telltale
# words carry the answer (the teacher routes it alike), but its length and words are another
# shape entirely: traffic that shifts to it is input drift a student trained on short tickets
# has not seen (``protege demo --autopilot``).
_NAMES: Final = ("Dana Reyes", "Sam Okafor", "Lee Novak", "Ana Costa", "Kim Laine", "Raj Patel")
_SUBJECTS: Final = ("Re: our account", "Re: question from our office", "Re: follow-up",
                    "Re: still waiting", "Re: case update", "Re: monthly review")  # fmt: skip
_FORWARD: Final = (
    "Forwarding this thread from our finance colleague, see the history below.",
    "Passing this along from my manager; the whole history is quoted underneath.",
    "Sending you the conversation we had internally, the details are further down.",
)  # fmt: skip
_HISTORY: Final = (
    "We discussed this in the weekly meeting and agreed to write to you about it.",
    "Our office has around forty people and most of them rely on this every day.",
    "I looked through the help centre articles first but did not find an answer.",
    "The same thing was reported by two other teams in the building last week.",
    "Could you let us know the next steps and how long it usually takes?",
    "We would appreciate a reply before the end of the week if at all possible.",
)  # fmt: skip


def email_thread(rng: random.Random) -> tuple[str, str]:
    """A long forwarded e-mail thread (about 600 characters) and its category: the cue is
    in the quoted earlier message, among quoted history no cue word is in."""
    category = rng.choice(sorted(CATEGORIES))
    cue = rng.choice(CATEGORIES[category])
    sender, colleague = rng.sample(_NAMES, 2)
    history = rng.sample(_HISTORY, 4)
    quoted = [f"> {line}" for line in (
        f"Hi {colleague.split()[0]},", history[0], f"Something is wrong with the {cue} again.",
        history[1], history[2], f"Best, {sender.split()[0]}",
    )]  # fmt: skip
    lines = [
        f"From: {sender} <{sender.split()[0].lower()}@example.com>",
        f"Subject: Fwd: {rng.choice(_SUBJECTS)}", "", rng.choice(_FORWARD), history[3], "",
        "---------- Forwarded message ----------",
        f"From: {colleague} <{colleague.split()[0].lower()}@example.com>",
        f"Date: {rng.choice(('Mon', 'Tue', 'Wed', 'Thu', 'Fri'))}, {rng.randrange(1, 29)} May "
        f"at {rng.randrange(8, 18)}:{rng.randrange(60):02}", "", *quoted,
    ]  # fmt: skip
    return "\n".join(lines), category


def mixed(rng: random.Random, email_share: float) -> tuple[str, str]:
    """A ticket of either kind: a forwarded e-mail thread with probability ``email_share``."""
    return email_thread(rng) if rng.random() < email_share else ticket(rng)
