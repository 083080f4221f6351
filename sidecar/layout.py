"""Where things live in the store: pure functions from records and segments to object keys.

    exchanges/task=<task>/date=YYYY-MM-DD/hour=HH/<segment-id>.parquet

A part's key derives from the spool segment it came from, so shipping the same segment twice
(after a crash between upload and delete) overwrites instead of duplicating.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from functools import lru_cache
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
    return Partition(task, *_date_hour(ts_us // _US_PER_HOUR))


_US_PER_HOUR: Final = 3_600_000_000


@lru_cache(maxsize=4096)
def _date_hour(hours: int) -> tuple[str, str]:
    """("YYYY-MM-DD", "HH") of an hour counted from the epoch (cached: called per record)."""
    moment = datetime.fromtimestamp(hours * 3600, tz=UTC)
    return moment.strftime("%Y-%m-%d"), moment.strftime("%H")


def part_key(partition: Partition, name: str) -> str:
    """The key of the part ``name`` (a segment id, or a compaction's name) in ``partition``."""
    return f"{partition.prefix}{name}.parquet"


def parse_part_key(key: str) -> tuple[Partition, str] | None:
    """``(partition, name)`` of a part key; None for any other key."""
    m = _PART.match(key)
    if m is None:
        return None
    return Partition(m["task"], m["date"], m["hour"]), m["name"]
