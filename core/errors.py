"""Errors every part of Protégé shares. Each part adds its own below ``ProtegeError``.

    ProtegeError
    ├── ConfigError             bad settings; start-up fails naming the key
    ├── SpoolError              the spool directory holds something it should not
    │   ├── CorruptSegment      a sealed segment fails its checks (.path, .offset, .reason)
    │   └── SpoolWriteFailed    a record a strict writer was given could not be written
    ├── StoreError              a store operation failed; the message names the store and the key
    │   ├── StoreNotFound       the object asked for does not exist
    │   └── StoreConflict       a conditional write lost: the object changed (or exists)
    ├── JudgeError              a judge could not be asked, or a labels file not read
    │                           (``core.judging``; a failed call is one item's error)
    ├── ApiError                the gateway's OpenAI-shaped errors (``gateway.errors``)
    └── StudentError            the student server's LoRAX-shaped errors (``trainer.serve.errors``)

Botocore, aiohttp, pyarrow and OS errors become ``StoreError`` in ``core.store`` and
``core.read`` (and a judgement part's pyarrow errors in ``core.judging.cache``), nowhere else;
httpx errors of a judge call become ``JudgeError`` in ``core.judging.client``.
"""

from __future__ import annotations

import os
from pathlib import Path


class ProtegeError(Exception):
    """Base of every error Protégé raises on purpose."""


class ConfigError(ProtegeError):
    """Settings that cannot be used; the message names the key."""


class SpoolError(ProtegeError):
    """Something in the spool directory cannot be used as it is."""


class CorruptSegment(SpoolError):
    """A segment that should be whole is not: bad magic, a bad record or trailing bytes."""

    def __init__(self, path: str | os.PathLike[str], offset: int, reason: str):
        super().__init__(f"{os.fspath(path)}: {reason} at byte {offset}")
        self.path = Path(path)
        self.offset = offset
        self.reason = reason


class SpoolWriteFailed(SpoolError):
    """A record could not be encoded or written to the spool (the disk failed, or full)."""


class StoreError(ProtegeError):
    """A store operation failed; shipping retries it with backoff, nothing is dropped."""


class StoreNotFound(StoreError):
    """The object does not exist."""


class StoreConflict(StoreError):
    """A conditional write was refused: the object is not the version the writer read."""


class JudgeError(ProtegeError):
    """A judge call failed for good, or a labels file cannot be used; ``raw`` keeps what the
    judge sent, if anything."""

    def __init__(self, message: str, raw: str = "") -> None:
        super().__init__(message)
        self.raw = raw
