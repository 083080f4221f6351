"""Every key of the store, in one place: pure functions from names to object keys.

    exchanges/task=<task>/date=YYYY-MM-DD/hour=HH/<segment-id>.parquet   exchange parts
    feedback/task=<task>/date=YYYY-MM-DD/<segment-id>.parquet            feedback parts
    datasets/<task>/<snapshot>/<split>.parquet                            a dataset snapshot
    datasets/<task>/<snapshot>/card.json, card.md                         its card (written last)
    datasets/<task>/tests/<split>.parquet, manifest.json                  the frozen test sets
    adapters/<task>/<version>/adapter_config.json                         a published adapter
    adapters/<task>/<version>/adapter_model.safetensors
    adapters/<task>/<version>/protege.json                                its manifest (last)
    rollouts/routes.json                                                  runtime rollouts
    judgements/<task>/<criterion>/<version>/<ulid>.parquet                cached judge verdicts
    judges/<task>/<criterion>/calibration.json                            a criterion's calibration
    events/<task>/<event-id>.json                                         the task's timeline
    autopilot/control.json                                                tasks paused (admin API)
    autopilot/<task>/lease.json                                           who retrains the task
    autopilot/<task>/status.json                                          its latest decision
    autopilot/<task>/runs/<run-id>.json                                   a run's outcome
    monitors/<task>/<replica>.json                                        a gateway's live view
    reports/<task>/<run>/report.md, *.png, mistakes.json                  a training run's report

A part's key derives from the spool segment it came from, so shipping the same segment twice
(after a crash between upload and delete) overwrites instead of duplicating. Files written last
(a card, a manifest) mark the folder complete: readers list by them.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from datetime import UTC, datetime
from functools import lru_cache
from typing import Final, NamedTuple

EXCHANGES: Final = "exchanges"
FEEDBACK: Final = "feedback"
DATASETS: Final = "datasets"
ADAPTERS: Final = "adapters"
ROLLOUTS: Final = "rollouts/routes.json"

# A task, a snapshot or a version: one key component, never empty, never a path.
NAME: Final = r"[A-Za-z0-9][A-Za-z0-9_.-]*"
# An adapter is named ``<task>/<version>``.
ADAPTER_ID: Final = re.compile(rf"^({NAME})/({NAME})$")
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


# --- feedback ---


class FeedbackPartition(NamedTuple):
    task: str  # a task, or core.feedback.UNRESOLVED
    date: str  # YYYY-MM-DD (UTC) of the feedback's arrival

    @property
    def prefix(self) -> str:
        return f"{FEEDBACK}/task={self.task}/date={self.date}/"


def feedback_partition_of(task: str, ts_us: int) -> FeedbackPartition:
    """The partition of feedback on ``task`` that arrived ``ts_us`` microseconds after the epoch."""
    return FeedbackPartition(task, _date_hour(ts_us // _US_PER_HOUR)[0])


def feedback_part_key(partition: FeedbackPartition, name: str) -> str:
    """The key of the feedback part ``name`` (a segment id) in ``partition``."""
    return f"{partition.prefix}{name}.parquet"


# --- datasets ---

CARD: Final = "card.json"
CARD_MD: Final = "card.md"
TESTS_MANIFEST: Final = "manifest.json"


def dataset_prefix(task: str) -> str:
    """Everything the trainer keeps of ``task``'s datasets."""
    return f"{DATASETS}/{task}/"


def snapshot_prefix(task: str, snapshot: str) -> str:
    return f"{dataset_prefix(task)}{snapshot}/"


def frozen_prefix(task: str) -> str:
    """The folder of ``task``'s frozen test sets, shared by every snapshot."""
    return f"{dataset_prefix(task)}tests/"


def split_key(prefix: str, split: str) -> str:
    """The Parquet file of ``split`` in a snapshot or frozen-tests folder."""
    return f"{prefix}{split}.parquet"


def snapshot_names(task: str, keys: Iterable[str]) -> list[str]:
    """The complete snapshots of ``task`` (a card written) among listed ``keys``."""
    return _complete(keys, dataset_prefix(task), CARD, depth=1)


# --- adapters ---

MANIFEST: Final = "protege.json"
ADAPTER_FILES: Final = ("adapter_config.json", "adapter_model.safetensors")


def adapters_prefix(task: str) -> str:
    """Every published version of ``task``'s adapter."""
    return f"{ADAPTERS}/{task}/"


def adapter_prefix(task: str, version: str) -> str:
    return f"{adapters_prefix(task)}{version}/"


def manifest_key(adapter_id: str) -> str:
    """The manifest of the adapter ``<task>/<version>``."""
    return f"{ADAPTERS}/{adapter_id}/{MANIFEST}"


def adapter_ids(keys: Iterable[str]) -> list[str]:
    """The complete adapters (a manifest written) among listed ``keys``, as ``<task>/<version>``,
    sorted."""
    return sorted(_complete(keys, f"{ADAPTERS}/", MANIFEST, depth=2))


def _complete(keys: Iterable[str], prefix: str, marker: str, *, depth: int) -> list[str]:
    """The folders ``depth`` levels below ``prefix`` (relative to it) holding ``marker``."""
    out = []
    for key in keys:
        if not key.startswith(prefix):
            continue
        parts = key[len(prefix) :].split("/")
        if len(parts) == depth + 1 and parts[-1] == marker:
            out.append("/".join(parts[:-1]))
    return out


JUDGEMENTS: Final = "judgements"
JUDGES: Final = "judges"


def judgements_prefix(task: str, criterion: str, version: str) -> str:
    """The folder of one criterion version's cached verdicts (append-only parts)."""
    return f"{JUDGEMENTS}/{task}/{criterion}/{version}/"


def calibration_key(task: str, criterion: str) -> str:
    """A criterion's stored calibration against human labels."""
    return f"{JUDGES}/{task}/{criterion}/calibration.json"


# --- the closed loop: timeline, autopilot, live views ---

EVENTS: Final = "events"
AUTOPILOT: Final = "autopilot"
CONTROL: Final = "autopilot/control.json"
MONITORS: Final = "monitors"


def events_prefix(task: str) -> str:
    """The folder of ``task``'s timeline: one object per event, named by a time-ordered id."""
    return f"{EVENTS}/{task}/"


def event_key(task: str, event_id: str) -> str:
    return f"{events_prefix(task)}{event_id}.json"


def lease_key(task: str) -> str:
    """The lease an autopilot holds while it retrains ``task`` (``core.lease``)."""
    return f"{AUTOPILOT}/{task}/lease.json"


def status_key(task: str) -> str:
    """The autopilot's latest decision about ``task`` (rewritten on every pass)."""
    return f"{AUTOPILOT}/{task}/status.json"


def runs_prefix(task: str) -> str:
    return f"{AUTOPILOT}/{task}/runs/"


def run_key(task: str, run_id: str) -> str:
    """The outcome of one retraining run, written by the trainer when the run ends."""
    return f"{runs_prefix(task)}{run_id}.json"


def monitors_prefix(task: str) -> str:
    return f"{MONITORS}/{task}/"


def monitor_key(task: str, replica: str) -> str:
    """One gateway replica's live view of ``task`` (drift, challenge scores), rewritten often."""
    return f"{monitors_prefix(task)}{replica}.json"


# --- training runs' reports, for people (the console) ---

REPORTS: Final = "reports"


def reports_prefix(task: str) -> str:
    return f"{REPORTS}/{task}/"


def report_prefix(task: str, run: str) -> str:
    """The folder of one training run's report (``run``: its run id, else its directory's
    name); ``report.md`` is written last."""
    return f"{reports_prefix(task)}{run}/"
