"""User content made into safe HTML: every piece is escaped before it becomes markup.

Templates autoescape everything they print; the few values that are markup on purpose come
from here and are built from escaped pieces only: the word diff (``<ins>``/``<del>`` around
escaped words) and run reports' markdown (markdown-it-py with raw HTML off, links and images
restricted to http, https and relative URLs).
"""

from __future__ import annotations

import difflib
import re
from typing import Any, Final
from urllib.parse import urlsplit

import orjson
from markdown_it import MarkdownIt
from markdown_it.token import Token
from markupsafe import Markup, escape

# A diff of longer answers is not computed (quadratic): both are shown side by side anyway.
MAX_DIFF_WORDS: Final = 4000
_WORDS = re.compile(r"\s+|[^\s]+")


def pretty(value: Any) -> str:
    """``value`` as indented JSON when it is JSON (or JSON text), else as it is (a string)."""
    if isinstance(value, str):
        text = value
        try:
            value = orjson.loads(text)
        except orjson.JSONDecodeError:
            return text
        if isinstance(value, str):
            return text
    try:
        return orjson.dumps(value, option=orjson.OPT_INDENT_2 | orjson.OPT_NON_STR_KEYS).decode()
    except TypeError:
        return str(value)


def word_diff(old: str, new: str) -> Markup | None:
    """``new`` against ``old`` word by word: removed words in ``<del>``, added in ``<ins>``;
    None when the texts are too long to diff."""
    a, b = _WORDS.findall(old), _WORDS.findall(new)
    if len(a) + len(b) > MAX_DIFF_WORDS:
        return None
    out: list[str] = []
    for op, i1, i2, j1, j2 in difflib.SequenceMatcher(None, a, b, autojunk=False).get_opcodes():
        if op == "equal":
            out.append(str(escape("".join(a[i1:i2]))))
            continue
        if op in ("delete", "replace"):
            out.append(f"<del>{escape(''.join(a[i1:i2]))}</del>")
        if op == "replace":
            out.append(" ")  # the removed and the added words read apart
        if op in ("insert", "replace"):
            out.append(f"<ins>{escape(''.join(b[j1:j2]))}</ins>")
    return Markup("".join(out))


def safe_url(url: str) -> bool:
    """Links a page may carry: http(s) and relative ones, nothing else (no javascript:)."""
    cleaned = re.sub(r"[\x00-\x20]", "", url)
    return urlsplit(cleaned).scheme.lower() in ("", "http", "https")


def _markdown() -> MarkdownIt:
    md = MarkdownIt("commonmark", {"html": False}).enable("table")
    md.validateLink = safe_url  # type: ignore[method-assign]
    return md


_MD: Final = _markdown()


def render_markdown(text: str, base: str) -> Markup:
    """A report's markdown as HTML; relative links and images resolve under ``base`` (a
    folder path ending in ``/``)."""
    tokens = _MD.parse(text)
    for token in tokens:
        for child in token.children or ():
            _rebase(child, base)
    return Markup(_MD.renderer.render(tokens, _MD.options, {}))


def _rebase(token: Token, base: str) -> None:
    attr = {"image": "src", "link_open": "href"}.get(token.type)
    if attr is None:
        return
    url = str(token.attrGet(attr) or "")
    parts = urlsplit(url)
    if not parts.scheme and not url.startswith(("/", "#")) and not parts.netloc:
        token.attrSet(attr, base + url)
