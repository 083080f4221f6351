"""Where things live in the store: pure functions from records and segments to object keys.

    exchanges/task=<task>/date=YYYY-MM-DD/hour=HH/<segment-id>.parquet

A part's key derives from the spool segment it came from, so shipping the same segment twice
(after a crash between upload and delete) overwrites instead of duplicating.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Final, NamedTuple

EXCHANGES: Final = "exchanges"
_PART = re.compile(
    r"^exchanges/task=(?P<task>[^/]+)/date=(?P<date>\d{4}-\d{2}-\d{2})/hour=(?P<hour>\d{2})/"
    r"(?P<name>[^/]+)\.parquet$"
)


class Partition(NamedTuple):
    task: str
    date: str  # YYYY-MM-DD (UTC)
    hour: str  # HH (UTC)

    @property
    def prefix(self) -> str:
        return f"{EXCHANGES}/task={self.task}/date={self.date}/hour={self.hour}/"

    @property
    def start(self) -> datetime:
        """The first instant of this partition's hour."""
        return datetime.strptime(f"{self.date} {self.hour}", "%Y-%m-%d %H").replace(tzinfo=UTC)


def partition_of(task: str, ts_us: int) -> Partition:
    """The partition of a record of ``task`` stamped ``ts_us`` microseconds after the epoch."""
    moment = datetime.fromtimestamp(ts_us / 1_000_000, tz=UTC)
    return Partition(task, moment.strftime("%Y-%m-%d"), moment.strftime("%H"))


def part_key(partition: Partition, name: str) -> str:
    """The key of the part ``name`` (a segment id, or a compaction's name) in ``partition``."""
    return f"{partition.prefix}{name}.parquet"


def parse_part_key(key: str) -> tuple[Partition, str] | None:
    """``(partition, name)`` of a part key; None for any other key."""
    m = _PART.match(key)
    if m is None:
        return None
    return Partition(m["task"], m["date"], m["hour"]), m["name"]
