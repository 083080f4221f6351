"""A replica's live views of its tasks in the store: written, refreshed, removed, never raising."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from core.keys import monitor_key
from core.live import LiveView, Scores, read_views
from core.store import FileStore, Store, open_store
from gateway.live import LiveReporter, view_of
from tests.s3_server import S3Server, aws_env
from tests.stored import FlakyStore

CHAMPION = Scores("tickets/v3", 40, 0.9)
CHALLENGER = Scores("tickets/v4", 38, 0.95)




class HangingStore(FileStore):
    """A file store whose deletes never finish."""

    async def delete(self, keys: Sequence[str]) -> None:
        await asyncio.Event().wait()


class Replica:
    """What a gateway replica tells the reporter: rollouts, drift, duel; all changeable."""

    def __init__(self) -> None:
        self.rollouts: dict[str, tuple[str, str | None]] = {
            "tickets": ("canary", "tickets/v3"),
            "drafts": ("teacher", None),
        }
        self.drift: dict[str, float] = {"tickets": 0.12}
        self.now = 1000.0

    def duel(self, task: str) -> tuple[Scores | None, Scores | None]:
        return (CHAMPION, CHALLENGER) if task == "tickets" else (None, None)

    def reporter(self, store: Store, replica: str = "pod-a", **kw: float) -> LiveReporter:
        return LiveReporter(
            store,
            lambda: self.rollouts,
            self.drift.get,
            self.duel,
            replica,
            interval_s=kw.pop("interval_s", 5.0),
            clock=lambda: self.now,
            **kw,
        )


@pytest.fixture
def store(tmp_path: Path) -> FlakyStore:
    return FlakyStore(tmp_path / "store")


async def views(store: Store, task: str, now: float = 1000.0) -> list[LiveView]:
    return await read_views(store, task, max_age_s=60, now=now)


def no_scores(task: str) -> tuple[Scores | None, Scores | None]:
    return None, None


@pytest.mark.parametrize(
    ("mode", "adapter", "drift", "duel", "expected"),
    [
        ("teacher", None, 0.3, (CHAMPION, None), None),
        ("teacher", "tickets/v3", 0.3, (CHAMPION, None), None),
        ("shadow", "tickets/v3", None, (None, None),
         LiveView("t", "r", 5.0, "tickets/v3", "shadow", None)),
        ("canary", "tickets/v3", 0.2, (CHAMPION, CHALLENGER),
         LiveView("t", "r", 5.0, "tickets/v3", "canary", 0.2, CHAMPION, CHALLENGER)),
        ("student", None, 0.0, (CHAMPION, None),
         LiveView("t", "r", 5.0, None, "student", 0.0, CHAMPION, None)),
    ],
)  # fmt: skip
def test_autopilot_view_of(
    mode: str,
    adapter: str | None,
    drift: float | None,
    duel: tuple[Scores | None, Scores | None],
    expected: LiveView | None,
) -> None:
    """A task served by a student gets a view of its drift and duel; a teacher task none."""
    assert view_of("t", mode, adapter, "r", 5.0, lambda _: drift, lambda _: duel) == expected


async def test_autopilot_views_written_with_drift_and_duel(store: FlakyStore) -> None:
    """One pass writes a view per student task, with drift and scores; none for teacher tasks."""
    replica = Replica()
    await replica.reporter(store).report_once()
    assert await views(store, "tickets") == [
        LiveView("tickets", "pod-a", 1000.0, "tickets/v3", "canary", 0.12, CHAMPION, CHALLENGER)
    ]
    assert await store.list_objects("monitors/drafts/") == []


async def test_autopilot_views_refreshed(store: FlakyStore) -> None:
    """Each pass rewrites the view with the time and figures of that moment."""
    replica = Replica()
    reporter = replica.reporter(store)
    await reporter.report_once()
    replica.now, replica.drift["tickets"] = 1005.0, 0.4
    await reporter.report_once()
    [view] = await views(store, "tickets", now=1005.0)
    assert (view.at, view.drift) == (1005.0, 0.4)


async def test_autopilot_view_removed_when_task_back_to_teacher(store: FlakyStore) -> None:
    """A task whose rollout goes back to the teacher has its view removed on the next pass."""
    replica = Replica()
    reporter = replica.reporter(store)
    await reporter.report_once()
    replica.rollouts["tickets"] = ("teacher", None)
    await reporter.report_once()
    assert await store.list_objects("monitors/") == []


async def test_autopilot_views_removed_on_close(store: FlakyStore) -> None:
    """Closing removes this replica's views (not another's) and stops further writes."""
    replica = Replica()
    other = replica.reporter(store, replica="pod-b")
    await other.report_once()
    reporter = replica.reporter(store)
    await reporter.report_once()
    await reporter.aclose()
    await reporter.report_once()
    assert [o.key for o in await store.list_objects("monitors/")] == [
        monitor_key("tickets", "pod-b")
    ]


async def test_autopilot_failing_store_does_not_raise(store: FlakyStore) -> None:
    """Store failures are logged as warnings and retried: the next pass writes and removes."""
    replica = Replica()
    reporter = replica.reporter(store)
    await reporter.report_once()
    store.down = True
    replica.rollouts["tickets"] = ("teacher", None)
    replica.rollouts["drafts"] = ("shadow", "drafts/v1")
    with capture_logs() as logs:
        await reporter.report_once()
    failed = {(e["log_level"], e["op"]) for e in logs}
    assert failed == {("warning", "write"), ("warning", "remove")}
    store.down = False
    await reporter.report_once()
    assert [o.key for o in await store.list_objects("monitors/")] == [
        monitor_key("drafts", "pod-a")
    ]


async def test_autopilot_close_with_store_down_does_not_raise(store: FlakyStore) -> None:
    """A close that cannot remove its views warns and returns."""
    reporter = Replica().reporter(store)
    await reporter.report_once()
    store.down = True
    with capture_logs() as logs:
        await reporter.aclose()
    assert "live views left in the store; they age out" in [e["event"] for e in logs]


async def test_autopilot_close_is_bounded(tmp_path: Path) -> None:
    """A store that never answers holds the close no longer than its timeout."""
    store = HangingStore(tmp_path / "store")
    reporter = Replica().reporter(store, close_timeout_s=0.1)
    await reporter.report_once()
    with capture_logs() as logs:
        await asyncio.wait_for(reporter.aclose(), 5)
    assert "live views not removed in time" in [e["event"] for e in logs]


async def test_autopilot_run_forever_reports_each_interval(store: FlakyStore) -> None:
    """The loop writes a fresh view every interval; closing ends it with the views removed."""
    replica = Replica()
    passes = asyncio.Event()
    calls = 0

    def drift(task: str) -> float:
        nonlocal calls
        calls += 1
        replica.now += 1
        if calls == 3:
            passes.set()
        return 0.1

    reporter = LiveReporter(
        store, lambda: replica.rollouts, drift, no_scores, "pod-a", 0.01, lambda: replica.now
    )
    loop = asyncio.create_task(reporter.run_forever())
    await asyncio.wait_for(passes.wait(), 5)  # the third pass began: two were written
    [view] = await views(store, "tickets", now=replica.now)
    assert view.at >= 1001.0
    await reporter.aclose()
    await asyncio.wait_for(loop, 5)
    assert await store.list_objects("monitors/") == []


def test_autopilot_replica_must_be_a_key_component(tmp_path: Path) -> None:
    """A replica id that is not one key component is refused at construction."""
    with pytest.raises(ValueError, match="replica id"):
        Replica().reporter(FileStore(tmp_path), replica="a/b")


@pytest.fixture(scope="module")
def s3() -> Iterator[S3Server]:
    server = S3Server().start()
    server.client().create_bucket(Bucket="autopilot-live-tests")
    with aws_env(server):
        yield server
    server.stop()


async def test_autopilot_views_on_s3(s3: S3Server, tmp_path: Path) -> None:
    """On a real S3 server: written, refreshed, removed when back to teacher and on close."""
    replica = Replica()
    replica.rollouts["drafts"] = ("shadow", "drafts/v1")
    async with open_store(f"s3://autopilot-live-tests/{tmp_path.name}") as store:
        reporter = replica.reporter(store)
        await reporter.report_once()
        replica.now = 1002.0
        replica.rollouts["drafts"] = ("teacher", None)
        await reporter.report_once()
        [view] = await views(store, "tickets", now=1002.0)
        assert (view.at, view.champion, view.challenger) == (1002.0, CHAMPION, CHALLENGER)
        assert await store.list_objects("monitors/drafts/") == []
        await reporter.aclose()
        assert await store.list_objects("monitors/") == []
