"""Input profiles: what the prompts of a task look like, for drift detection.

The trainer publishes the profile of its training prompts beside every adapter; the gateway
keeps windowed live profiles and compares them with PSI and Jensen-Shannon divergence per
feature. Features, each a distribution over fixed bins:

    length    prompt length in characters, log2 bins (<16, <32, ... , >=32768)
    charset   share of characters per class (letters, digits, space, punctuation, Latin
              extended, Cyrillic, Greek, Arabic, Hebrew, CJK, Hangul, other)
    tokens    hashed word unigrams and bigrams, digits folded (crc32 mod 256)

Pure Python and cheap: one pass over the text. Stable across processes (no salted hashes).
"""

from __future__ import annotations

import itertools
import math
import re
import zlib
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

LENGTH_BINS: Final = 12
TOKEN_BINS: Final = 256
CHARSETS: Final = (
    "letters", "digits", "space", "punct", "latin_ext", "cyrillic", "greek", "arabic",
    "hebrew", "cjk", "hangul", "other",
)  # fmt: skip
FEATURES: Final = ("length", "charset", "tokens")
_WORD = re.compile(r"\w+")
_DIGITS = re.compile(r"\d+")  # numbers are content, not shape: every one hashes alike
_EPS = 1e-4  # floor for empty bins, so PSI stays finite


_RANGES: Final = (
    (0x00C0, 0x024F),  # Latin extended
    (0x0400, 0x04FF),  # Cyrillic
    (0x0370, 0x03FF),  # Greek
    (0x0600, 0x06FF),  # Arabic
    (0x0590, 0x05FF),  # Hebrew
    (0x4E00, 0x9FFF),  # CJK unified ideographs
    (0xAC00, 0xD7AF),  # Hangul syllables
)
_CLASS_CHARS: Final = "abcdefghijk"  # one marker per class but "other"


def _class_table() -> dict[int, str]:
    """Code point -> class marker, for str.translate: classifying runs in C, not Python."""
    table: dict[int, str] = {}
    for o in range(128):
        ch = chr(o)
        table[o] = "a" if ch.isalpha() else "b" if ch.isdigit() else "c" if ch.isspace() else "d"
    for marker, (lo, hi) in zip(_CLASS_CHARS[4:], _RANGES, strict=True):
        table.update(dict.fromkeys(range(lo, hi + 1), marker))
    return table


_TABLE: Final = _class_table()


@dataclass
class Profile:
    """Bin counts per feature over the texts added so far."""

    counts: dict[str, list[float]] = field(
        default_factory=lambda: {
            "length": [0.0] * LENGTH_BINS,
            "charset": [0.0] * len(CHARSETS),
            "tokens": [0.0] * TOKEN_BINS,
        }
    )
    n: int = 0

    @classmethod
    def of(cls, texts: Iterable[str]) -> Profile:
        profile = cls()
        for text in texts:
            profile.add(text)
        return profile

    def add(self, text: str) -> None:
        c = self.counts
        c["length"][min(LENGTH_BINS - 1, max(0, len(text).bit_length() - 4))] += 1
        classes = c["charset"]
        if text:  # each text weighs the same, whatever its length
            marked = text.translate(_TABLE)
            counts = [marked.count(m) for m in _CLASS_CHARS]
            counts.append(len(text) - sum(counts))
            for i, n in enumerate(counts):
                classes[i] += n / len(text)
        words = [_DIGITS.sub("0", w.lower()).encode() for w in _WORD.findall(text)]
        tokens = c["tokens"]
        grams = Counter(words)
        grams.update(a + b" " + b for a, b in itertools.pairwise(words))
        total = max(1, 2 * len(words) - 1)
        for gram, k in grams.items():
            tokens[zlib.crc32(gram) % TOKEN_BINS] += k / total
        self.n += 1

    def distribution(self, feature: str) -> list[float]:
        """The feature's bins as probabilities (uniform when nothing was added)."""
        bins = self.counts[feature]
        total = sum(bins)
        return [b / total for b in bins] if total else [1 / len(bins)] * len(bins)

    def to_dict(self) -> dict[str, Any]:
        return {"version": 1, "n": self.n, "counts": self.counts}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Profile:
        if data.get("version") != 1:
            raise ValueError(f"unknown profile version {data.get('version')!r}")
        counts = {f: [float(x) for x in data["counts"][f]] for f in FEATURES}
        return cls(counts=counts, n=int(data["n"]))


def psi(expected: Sequence[float], actual: Sequence[float]) -> float:
    """Population stability index of ``actual`` against ``expected`` (probabilities)."""
    total = 0.0
    for e, a in zip(expected, actual, strict=True):
        e, a = max(e, _EPS), max(a, _EPS)
        total += (a - e) * math.log(a / e)
    return total


def js_divergence(p: Sequence[float], q: Sequence[float]) -> float:
    """Jensen-Shannon divergence (base 2, in [0, 1]) between two distributions."""
    total = 0.0
    for a, b in zip(p, q, strict=True):
        m = (a + b) / 2
        if a > 0:
            total += a / 2 * math.log2(a / m)
        if b > 0:
            total += b / 2 * math.log2(b / m)
    return total


def drift(reference: Profile, live: Profile) -> dict[str, dict[str, float]]:
    """PSI and JS per feature of ``live`` against ``reference``."""
    out = {}
    for feature in FEATURES:
        ref, cur = reference.distribution(feature), live.distribution(feature)
        out[feature] = {"psi": psi(ref, cur), "js": js_divergence(ref, cur)}
    return out
