"""Gateway API keys: who may call, and the hashed client id recorded for each exchange."""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable

from gateway.errors import Unauthorized


def bearer(header: str | None) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header."""
    if not header:
        return None
    scheme, _, token = header.partition(" ")
    return token.strip() or None if scheme.lower() == "bearer" else None


class KeyCheck:
    """Accepts the configured keys (any key when none is configured), in constant time.

    Keys are held only as SHA-256 digests; each presented key is hashed and compared against
    every digest with ``hmac.compare_digest``, so timing says nothing about which key or which
    prefix matched.
    """

    def __init__(self, keys: Iterable[str]) -> None:
        self._digests = [hashlib.sha256(k.encode()).digest() for k in keys]

    @property
    def open(self) -> bool:
        return not self._digests

    def check(self, token: str | None) -> None:
        if self.open:
            return
        if token is None:
            raise Unauthorized("missing API key: send Authorization: Bearer <key>")
        digest = hashlib.sha256(token.encode()).digest()
        ok = False
        for known in self._digests:
            ok |= hmac.compare_digest(digest, known)
        if not ok:
            raise Unauthorized("incorrect API key provided")
