"""Markdown for a person: tables, code spans, fenced blocks, numbers (the reports' pieces)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final

# Longest prompt, reference, prediction or schema shown in one block.
SHOWN_CHARS: Final = 600
NONE: Final = "—"  # a value that does not exist
EMPTY: Final = "n/a"  # a value of nothing (an empty test set)


def table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = [row(header), "|" + "---|" * len(header)]
    return "\n".join(lines + [row(r) for r in rows])


def row(cells: Sequence[str]) -> str:
    return "| " + " | ".join(cell(c) for c in cells) + " |"


def cell(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|")


def code(text: str) -> str:
    return f"`{text}`" if "`" not in text else text


def block(text: str) -> str:
    """A fenced block that no backticks inside can close, cut to ``SHOWN_CHARS``."""
    shown = (
        text
        if len(text) <= SHOWN_CHARS
        else f"{text[:SHOWN_CHARS]}… (+{len(text) - SHOWN_CHARS} chars)"
    )
    fence = "`" * max(3, _longest_backtick_run(shown) + 1)
    return f"{fence}text\n{shown}\n{fence}"


def _longest_backtick_run(text: str) -> int:
    longest = run = 0
    for char in text:
        run = run + 1 if char == "`" else 0
        longest = max(longest, run)
    return longest


def fmt(value: float | None) -> str:
    return NONE if value is None else f"{value:.3f}"
