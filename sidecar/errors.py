"""Errors of the sidecar and the store.

    ProtegeError (gateway.errors)
    └── StoreError          a store operation failed; the message names the store and the key
        └── StoreNotFound   the object asked for does not exist

Botocore, aiohttp and OS errors become ``StoreError`` in one place, ``sidecar.store``.
"""

from __future__ import annotations

from gateway.errors import ProtegeError


class StoreError(ProtegeError):
    """A store operation failed; shipping retries it with backoff, nothing is dropped."""


class StoreNotFound(StoreError):
    """The object does not exist."""
