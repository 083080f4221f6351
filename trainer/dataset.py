"""Dataset snapshots: a task's exchanges, curated into train and test sets in the store.

``build_snapshot`` reads the task's exchanges in streaming batches (only the curated examples
are kept, never the raw records), applies the human corrections, curates (``trainer.curate``)
and writes a new snapshot (layout in ``trainer.examples``). The card is written last: a
snapshot without ``card.json`` is unfinished, and ``load_snapshot`` never picks it.

Test sets are made once. The first build whose test pool is not empty writes them to
``datasets/<task>/tests/`` with a ``manifest.json`` naming their groups; every later build copies
those files unchanged into its snapshot, and none of their groups (nor a repeat of one of their
prompts) ever trains, so scores stay comparable across snapshots. To make new test sets, delete
that folder. Builds of one task are not run concurrently.

Corrections (``CurationConfig.corrections``): a Parquet file of ``request_id`` and
``completion`` (the gold output). An ``s3://`` or ``file://`` URI names a file in any store, an
existing local path a local file; anything else is a key in the task's own store.

Feedback (``trainer.feedback``): the task's feedback in the store (``feedback/``, its own and
the unresolved rows) drops what the application called bad (``negative_feedback``) and adds
its corrections to those of the file (the file wins on conflict). The card counts both
(``feedback``; ``feedback_corrections``: per split, examples whose gold came from feedback).
Frozen test sets stay as they were made: feedback on one of their examples changes nothing
there; the card counts it (``on_frozen_tests``) and the build logs it.

Criteria (``trainer.screening``): when the config's ``judges`` section gives the task criteria
(``build_snapshot(judges=...)``), the teacher's answers that any of them fails are dropped
after the cheap filters; the card (``trainer.card``) counts the verdicts per criterion.
"""

from __future__ import annotations

import asyncio
import tempfile
from collections import Counter
from collections.abc import Iterable, Mapping
from collections.abc import Set as AbstractSet
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

import orjson
import pyarrow as pa
import pyarrow.parquet as pq

from core.errors import StoreNotFound
from core.judging import JudgeSettings
from core.keys import (
    CARD,
    CARD_MD,
    TESTS_MANIFEST,
    dataset_prefix,
    frozen_prefix,
    snapshot_names,
    snapshot_prefix,
    split_key,
)
from core.read import iter_exchanges
from core.store import Store, open_store
from trainer.card import DatasetCard, split_facts
from trainer.curate import FrozenTests, Rules, Screen, curate_splits
from trainer.examples import (
    SPLITS,
    TEST_SPLITS,
    Example,
    examples_from_table,
    examples_to_table,
    snapshot_id,
)
from trainer.feedback import feedback_counts, load_feedback, merge_corrections
from trainer.screening import Screening, screen_of
from trainer.settings import CurationConfig

_COLUMNS: Final = (
    "request_id", "ts", "endpoint", "backend", "complete", "status", "request", "response",
    "client", "user",
)  # fmt: skip
_BATCH_ROWS: Final = 4096  # records decoded at a time
_COMPRESSION: Final = "zstd"


@dataclass(frozen=True)
class _Build:
    """The facts of one build, known before any data is read."""

    task: str
    snapshot: str
    moment: datetime
    since: datetime | None
    until: datetime | None
    seed: int
    config: CurationConfig

    def card(
        self,
        records_in: int,
        splits: Mapping[str, list[Example]],
        drops: Counter[str],
        tests_from: str | None,
        reused: bool,
        feedback: Mapping[str, int],
        feedback_ids: AbstractSet[str],
        screening: Screening,
    ) -> DatasetCard:
        return DatasetCard(
            task=self.task,
            snapshot=self.snapshot,
            created=self.moment.astimezone(UTC).isoformat(),
            since=self.since.isoformat() if self.since else None,
            until=self.until.isoformat() if self.until else None,
            seed=self.seed,
            records_in=records_in,
            **split_facts(splits),
            drops=dict(drops.most_common()),
            tests_from=tests_from,
            tests_reused=reused,
            config=self.config.model_dump(mode="json"),
            feedback=dict(feedback),
            feedback_corrections={
                s: sum(e.source == "correction" and e.request_id in feedback_ids for e in splits[s])
                for s in SPLITS
            },
            dropped_by_criterion=screening.dropped_by_criterion,
            criteria=screening.criteria,
            criteria_not_applied=screening.not_applied,
            judge_usage=screening.usage,
            criteria_flagged=screening.flagged,
        )


@dataclass(frozen=True)
class _Frozen:
    """The frozen test sets as read back: examples, their downloaded files, who made them."""

    tests: FrozenTests
    files: dict[str, Path]
    made_by: str | None


async def build_snapshot(
    store_uri: str,
    task: str,
    config: CurationConfig,
    *,
    since: datetime | None = None,
    until: datetime | None = None,
    seed: int = 0,
    now: datetime | None = None,
    judges: JudgeSettings | None = None,
) -> DatasetCard:
    """Curate ``task``'s exchanges with ``since <= ts < until`` into a new snapshot; its card.

    ``now`` (timezone-aware) names and dates the snapshot; default: the current time.
    ``judges``: the config file's judging settings; the task's criteria there, if any, screen
    the teacher's answers (``trainer.screening``).
    """
    moment = now or datetime.now(UTC)
    build = _Build(task, snapshot_id(moment), moment, since, until, seed, config)
    rules = Rules.from_config(config)
    screen = screen_of(judges, task)
    async with open_store(store_uri) as store:
        with tempfile.TemporaryDirectory(prefix="protege-dataset-") as tmp:
            workdir = Path(tmp)
            from_file = await load_corrections(store, config.corrections, workdir)
            told = await asyncio.to_thread(load_feedback, store_uri, task, config)
            corrections, overridden = merge_corrections(from_file, told.corrections)
            frozen = await _load_frozen(store, task, workdir)
            tests = frozen.tests if frozen else None
            records_in, splits, drops = await asyncio.to_thread(
                _curate, store_uri, build, rules, corrections, told.negative, tests, screen
            )
            if frozen is not None:
                test_files, tests_from = frozen.files, frozen.made_by
            else:
                test_files = await write_splits(workdir, splits, TEST_SPLITS)
                tests_from = await _freeze(store, build, splits, test_files)
            files = {**test_files, **await write_splits(workdir, splits, ("train",))}
            counts = feedback_counts(task, told, overridden, tests)
            card = build.card(
                records_in, splits, drops, tests_from, frozen is not None,
                counts, told.corrections.keys() - from_file.keys(),
                screen.outcome if screen else Screening(),
            )  # fmt: skip
            await put_snapshot(store, task, build.snapshot, files, card)
    return card


def build_snapshot_sync(
    store_uri: str, task: str, config: CurationConfig, **kwargs: Any
) -> DatasetCard:
    """``build_snapshot`` for callers without an event loop."""
    return asyncio.run(build_snapshot(store_uri, task, config, **kwargs))


def _curate(
    store_uri: str,
    build: _Build,
    rules: Rules,
    corrections: Mapping[str, str],
    negative: AbstractSet[str],
    frozen: FrozenTests | None,
    screen: Screen | None = None,
) -> tuple[int, dict[str, list[Example]], Counter[str]]:
    """Read and examine every record, then split: ``(records read, splits, drops)``.

    Blocking (store reads, decoding, hashing): runs on a worker thread.
    """
    examples: list[Example] = []
    drops: Counter[str] = Counter()
    records_in = 0
    batches = iter_exchanges(
        store_uri,
        task=build.task,
        since=build.since,
        until=build.until,
        columns=_COLUMNS,
        batch_rows=_BATCH_ROWS,
    )
    for batch in batches:
        for record in batch.to_pylist():
            records_in += 1
            outcome = rules.examine(record, corrections, negative)
            if outcome.example is None:
                drops[outcome.reason or "unknown"] += 1
            else:
                examples.append(outcome.example)
    splits, later = curate_splits(
        examples, build.task, build.config, seed=build.seed, frozen=frozen, screen=screen
    )
    return records_in, splits, drops + later


async def load_corrections(store: Store, source: str | None, workdir: Path) -> dict[str, str]:
    """``request_id -> gold completion`` from the corrections file (see the module doc)."""
    if source is None:
        return {}
    path = workdir / "corrections.parquet"
    if "://" in source:
        parent, _, name = source.rstrip("/").rpartition("/")
        async with open_store(parent) as other:
            await other.get_file(name, path)
    elif await asyncio.to_thread(Path(source).is_file):
        path = Path(source)
    else:
        await store.get_file(source, path)
    try:
        table = await asyncio.to_thread(pq.read_table, path, columns=["request_id", "completion"])
    except (pa.ArrowInvalid, KeyError) as exc:
        raise ValueError(
            f"corrections {source!r} must be Parquet with request_id and completion: {exc}"
        ) from exc
    ids, gold = table.column("request_id").to_pylist(), table.column("completion").to_pylist()
    return {str(i): g for i, g in zip(ids, gold, strict=True) if i and isinstance(g, str) and g}


async def _load_frozen(store: Store, task: str, workdir: Path) -> _Frozen | None:
    """The task's frozen test sets, downloaded; None before any were made."""
    prefix = frozen_prefix(task)
    try:
        manifest = orjson.loads(await store.get(prefix + TESTS_MANIFEST))
    except StoreNotFound:
        return None
    files: dict[str, Path] = {}
    splits: dict[str, list[Example]] = {}
    for split in TEST_SPLITS:
        files[split] = workdir / f"frozen-{split}.parquet"
        await store.get_file(split_key(prefix, split), files[split])
        table = await asyncio.to_thread(pq.read_table, files[split])
        splits[split] = examples_from_table(table)
    tests = FrozenTests(splits, frozenset(manifest["groups"]))
    return _Frozen(tests, files, manifest.get("snapshot"))


async def _freeze(
    store: Store, build: _Build, splits: Mapping[str, list[Example]], files: Mapping[str, Path]
) -> str | None:
    """Make this build's test sets the frozen ones; None (nothing frozen) if they are empty."""
    if not splits["test-indist"]:
        return None
    prefix = frozen_prefix(build.task)
    for split in TEST_SPLITS:
        await store.put_file(split_key(prefix, split), files[split])
    manifest = {
        "task": build.task,
        "snapshot": build.snapshot,
        "created": build.moment.astimezone(UTC).isoformat(),
        "examples": {split: len(splits[split]) for split in TEST_SPLITS},
        "groups": sorted({e.group for split in TEST_SPLITS for e in splits[split]}),
    }
    await store.put(prefix + TESTS_MANIFEST, orjson.dumps(manifest, option=orjson.OPT_INDENT_2))
    return build.snapshot


async def write_splits(
    workdir: Path, splits: Mapping[str, list[Example]], names: Iterable[str]
) -> dict[str, Path]:
    """The named splits as Parquet files in ``workdir``."""
    files = {}
    for name in names:
        files[name] = workdir / f"{name}.parquet"
        table = examples_to_table(splits[name])
        await asyncio.to_thread(pq.write_table, table, files[name], compression=_COMPRESSION)
    return files


async def put_snapshot(
    store: Store, task: str, snapshot: str, files: Mapping[str, Path], card: DatasetCard
) -> None:
    """Upload the split files, then the card (its presence marks the snapshot complete)."""
    prefix = snapshot_prefix(task, snapshot)
    for split in SPLITS:
        await store.put_file(split_key(prefix, split), files[split])
    await store.put(prefix + CARD_MD, card.to_markdown().encode())
    await store.put(prefix + CARD, card.to_json())


async def load_snapshot(
    store_uri: str, task: str, snapshot: str | None = None
) -> tuple[str, dict[str, list[Example]], DatasetCard]:
    """``(snapshot id, split -> examples, card)`` of ``snapshot``, by default the newest."""
    async with open_store(store_uri) as store:
        if snapshot is None:
            snapshot = await latest_snapshot(store, task)
        prefix = snapshot_prefix(task, snapshot)
        card = DatasetCard.from_json(await store.get(prefix + CARD))
        splits: dict[str, list[Example]] = {}
        with tempfile.TemporaryDirectory(prefix="protege-dataset-") as tmp:
            for split in SPLITS:
                path = Path(tmp) / f"{split}.parquet"
                await store.get_file(split_key(prefix, split), path)
                splits[split] = examples_from_table(await asyncio.to_thread(pq.read_table, path))
    return snapshot, splits, card


async def latest_snapshot(store: Store, task: str) -> str:
    """The newest complete snapshot of ``task`` (ids sort by time)."""
    objects = await store.list_objects(dataset_prefix(task))
    names = snapshot_names(task, (o.key for o in objects))
    if not names:
        raise StoreNotFound(f"{store.uri}: no dataset snapshot of task {task!r}")
    return max(names)
