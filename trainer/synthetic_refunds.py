"""A free-text synthetic task where character similarity misjudges answers: refund requests.

Each ticket either asks for a refund or does not, about one product thing; the teacher answers
in one sentence that starts with its verdict::

    Yes, the customer asks for a refund of the double charge.
    No, the customer asks about the invoice address, not a refund.

What makes an answer right is the verdict (and the thing it is about), not its wording. So a
near-copy of the teacher's sentence with the verdict flipped scores high on character
similarity and is wrong, while a paraphrase with the right verdict scores low and is right.
``as_good`` is the rule a judge of this task applies (pairwise: is the answer as good as the
teacher's?); ``near_copy_wrong`` and ``paraphrase`` make the two kinds of answer for tests and
benchmarks of judged evaluation.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass
from typing import Final

SYSTEM: Final = (
    "Does the customer ask for a refund? Answer in one sentence that starts with Yes or No "
    "and names what the ticket is about."
)
# thing -> (the refund ask, the non-refund ask)
THINGS: Final = {
    "double charge": ("I was charged twice, please refund the double charge",
                      "I see a double charge, can you explain why it happened"),
    "annual plan": ("I cancelled the annual plan, I want my money back",
                    "how do I switch my annual plan to monthly"),
    "broken headphones": ("the broken headphones arrived dead, refund them please",
                          "the broken headphones need a repair appointment"),
    "late delivery": ("the late delivery ruined the gift, I want a refund",
                      "where is my late delivery, the tracking is stuck"),
    "invoice address": ("the invoice address is wrong so refund and re-bill me",
                        "please change the invoice address on my account"),
}  # fmt: skip
_OPENERS: Final = ("Hi,", "Hello team,", "Good morning.", "Dear support,", "Hey,")
_CLOSERS: Final = ("Thanks.", "Best regards.", "Cheers.", "Thank you in advance.")
_FIRST_WORD: Final = re.compile(r"[A-Za-z]+")


@dataclass(frozen=True)
class Ticket:
    text: str
    thing: str
    refund: bool


def ticket(rng: random.Random) -> Ticket:
    thing = rng.choice(sorted(THINGS))
    refund = rng.random() < 0.5
    ask = THINGS[thing][0 if refund else 1]
    return Ticket(f"{rng.choice(_OPENERS)} {ask}. {rng.choice(_CLOSERS)}", thing, refund)


def messages(text: str) -> list[dict[str, str]]:
    return [{"role": "system", "content": SYSTEM}, {"role": "user", "content": text}]


def teacher_answer(t: Ticket) -> str:
    """The teacher's (always right) answer."""
    if t.refund:
        return f"Yes, the customer asks for a refund of the {t.thing}."
    return f"No, the customer asks about the {t.thing}, not a refund."


def near_copy_wrong(t: Ticket) -> str:
    """The teacher's sentence with its verdict flipped: similar in characters, wrong."""
    return ("No" if t.refund else "Yes") + teacher_answer(t)[3 if t.refund else 2 :]


def paraphrase(t: Ticket) -> str:
    """The right verdict in other words: dissimilar in characters, right."""
    if t.refund:
        return f"Yes - they want their money back for the {t.thing}."
    return f"No; this is a question about the {t.thing} and nobody wants money returned."


def verdict(answer: str) -> str | None:
    """``yes`` or ``no``: the answer's first word, if it is one of them."""
    match = _FIRST_WORD.search(answer)
    word = match.group(0).lower() if match else ""
    return word if word in ("yes", "no") else None


def as_good(reference: str, answer: str, thing: str) -> bool:
    """The task's judging rule: the answer is as good as the teacher's when it gives the same
    verdict and names the same thing."""
    return verdict(answer) == verdict(reference) is not None and thing in answer.lower()
