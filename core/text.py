"""Message text: the one way a chat message list reads as plain text.

The drift profile, deduplication, curation, chat-template rendering and redaction all look at
the same text of a request: a message's content is its string, or its text parts joined by a
newline (image and audio parts carry no text); a list of messages is their contents joined by
a newline, instruction turns (``system``, ``developer``) left out where only what the user
said matters.
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Any, Final

# Turns that instruct the model rather than ask it something.
INSTRUCTIONS: Final = frozenset({"system", "developer"})


def content_text(content: Any) -> str:
    """The text of one message's content: a string, or the text parts of a list of parts."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        texts = (p.get("text") for p in content if isinstance(p, dict))
        return "\n".join(t for t in texts if isinstance(t, str))
    return ""


def messages_text(messages: Any, *, skip: Collection[str] = ()) -> str:
    """The contents of ``messages`` whose role is not in ``skip``, joined by a newline; empty for
    anything that is not a list of messages."""
    if not isinstance(messages, list):
        return ""
    return "\n".join(
        content_text(m.get("content"))
        for m in messages
        if isinstance(m, dict) and m.get("role") not in skip
    )


def prompt_text(messages: Any) -> str:
    """What the user said: every turn but the instructions (drift profiles, near-duplicates)."""
    return messages_text(messages, skip=INSTRUCTIONS)
