"""Duplicate removal for curation: exact prompt keys, and SimHash near-duplicates.

Exact duplicates share a normalized prompt (every message's role and text, lowercased, runs of
whitespace collapsed) and the same request parameters. Near-duplicates have 64-bit SimHash
fingerprints within a Hamming distance: each fingerprint is the bitwise majority of the
``blake2b`` hashes of the text's word 3-shingles (case and punctuation ignored). It covers the
non-system turns only: a long shared system prompt would otherwise make a task's examples look
alike. SimHash suits long texts: in a text of about 100 words a one-word edit moves the
fingerprint by about 5 bits, in one of about 300 words by about 3.

The near search is not pairwise. A fingerprint is cut into ``distance + 1`` bands; two
fingerprints within ``distance`` bits agree on at least one whole band (pigeonhole), so only
the examples sharing a band bucket are compared.

Of a duplicate set the first in priority order stays: human corrections before teacher answers,
then the earliest ``ts`` (then ``request_id``, so the choice never depends on read order).
"""

from __future__ import annotations

import hashlib
import re
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from typing import Any, Final

import orjson

from core.text import content_text, messages_text, prompt_text
from trainer.examples import Example

DUPLICATE: Final = "duplicate"
NEAR_DUPLICATE: Final = "near_duplicate"
# A training candidate that repeats a frozen test example (exactly or nearly).
TEST_OVERLAP: Final = "test_overlap"

_BITS: Final = 64
_WORD: Final = re.compile(r"\w+")
_ONE_PER_WORD: Final = b"\x01" + b"\x00" * 7  # the lowest bit of a little-endian 64-bit word


def normalize(text: str) -> str:
    """Lowercase, with every run of whitespace made one space."""
    return " ".join(text.lower().split())


def prompt_key(example: Example) -> str:
    """What exact duplicates share: the normalized conversation and the request parameters."""
    turns = "\n".join(
        f"{m.get('role')}: {content_text(m.get('content'))}" for m in example.messages
    )
    params = orjson.dumps(example.params, option=orjson.OPT_SORT_KEYS).decode()
    return f"{normalize(turns)}\x00{params}"


def near_text(example: Example) -> str:
    """The text a near-duplicate fingerprint covers: the non-system turns (all if none)."""
    return prompt_text(example.messages) or messages_text(example.messages)


def simhash(text: str) -> int:
    """The 64-bit SimHash of the distinct 3-shingles of ``text``'s words (punctuation and case
    ignored); a text of fewer than three words is one shingle."""
    words = _WORD.findall(text.lower())
    shingles = {" ".join(words[i : i + 3]) for i in range(max(1, len(words) - 2))}
    digests = [hashlib.blake2b(s.encode(), digest_size=8).digest() for s in shingles]
    # All hashes as one integer, 64 bits each: bit j of every hash is (blob >> j) & ones.
    blob = int.from_bytes(b"".join(digests), "little")
    ones = int.from_bytes(_ONE_PER_WORD * len(digests), "little")
    fingerprint = 0
    for bit in range(_BITS):
        if ((blob >> bit) & ones).bit_count() * 2 > len(digests):
            fingerprint |= 1 << bit
    return fingerprint


def hamming(a: int, b: int) -> int:
    return (a ^ b).bit_count()


class NearIndex:
    """Fingerprints searchable for one within ``distance`` bits, by band buckets."""

    def __init__(self, distance: int) -> None:
        if not 0 <= distance < _BITS:
            raise ValueError(f"near-duplicate distance must be 0..{_BITS - 1}, got {distance}")
        self.distance = distance
        bands = distance + 1
        widths = [_BITS // bands + (1 if j < _BITS % bands else 0) for j in range(bands)]
        offsets = [sum(widths[:j]) for j in range(bands)]
        self._bands = [(off, (1 << w) - 1) for off, w in zip(offsets, widths, strict=True)]
        self._buckets: defaultdict[tuple[int, int], list[int]] = defaultdict(list)

    def _keys(self, fingerprint: int) -> list[tuple[int, int]]:
        return [(j, (fingerprint >> off) & mask) for j, (off, mask) in enumerate(self._bands)]

    def add(self, fingerprint: int) -> None:
        for key in self._keys(fingerprint):
            self._buckets[key].append(fingerprint)

    def near(self, fingerprint: int) -> bool:
        """Whether a fingerprint within ``distance`` bits was added."""
        for key in self._keys(fingerprint):
            for other in self._buckets.get(key, ()):
                if hamming(fingerprint, other) <= self.distance:
                    return True
        return False


def priority(example: Example) -> tuple[bool, Any, str]:
    """Sort key of who stays among duplicates: corrections, then the earliest."""
    return (example.source != "correction", example.ts, example.request_id)


def deduplicate(
    examples: Iterable[Example], distance: int, reserved: Sequence[Example] = ()
) -> tuple[list[Example], Counter[str]]:
    """``examples`` without exact and (``distance`` >= 0) near duplicates, and the drops by
    reason. An example repeating one of ``reserved`` (the frozen test sets) is dropped too."""
    held, kept = _Seen(distance), _Seen(distance)
    for example in reserved:
        held.add(*held.signature(example))
    drops: Counter[str] = Counter()
    out = []
    for example in sorted(examples, key=priority):
        key, fingerprint = kept.signature(example)
        if held.has(key, fingerprint):
            drops[TEST_OVERLAP] += 1
        elif key in kept.keys:
            drops[DUPLICATE] += 1
        elif kept.has(key, fingerprint):
            drops[NEAR_DUPLICATE] += 1
        else:
            kept.add(key, fingerprint)
            out.append(example)
    return out, drops


class _Seen:
    """Prompt keys and (when near search is on) fingerprints of the examples kept so far."""

    def __init__(self, distance: int) -> None:
        self.keys: set[str] = set()
        self.index = NearIndex(distance) if distance >= 0 else None

    def signature(self, example: Example) -> tuple[str, int | None]:
        fingerprint = simhash(near_text(example)) if self.index is not None else None
        return prompt_key(example), fingerprint

    def add(self, key: str, fingerprint: int | None) -> None:
        self.keys.add(key)
        if self.index is not None and fingerprint is not None:
            self.index.add(fingerprint)

    def has(self, key: str, fingerprint: int | None) -> bool:
        """An exact repeat of ``key``, or a fingerprint near ``fingerprint``."""
        if key in self.keys:
            return True
        return self.index is not None and fingerprint is not None and self.index.near(fingerprint)
