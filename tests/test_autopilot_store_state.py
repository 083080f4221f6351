"""What the closed loop keeps in the store — lease, controls, timeline, run outcomes — on a
local directory and on a real S3 server alike."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from core.control import read_holds, set_hold
from core.events import Event, record, render, timeline
from core.lease import Held, Lease, takeable
from core.runs import RunRecord, read_run, write_run
from core.store import Store, open_store
from tests.stored import s3_server, store_uri  # noqa: F401 - fixtures

KEY = "autopilot/t/lease.json"


@pytest.fixture
async def store(store_uri: str) -> AsyncIterator[Store]:  # noqa: F811
    async with open_store(store_uri) as opened:
        yield opened


class Clock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.mark.parametrize(
    ("held", "who", "now", "ok"),
    [
        (None, "a", 0.0, True),
        (Held("a", 0.0, 10.0), "a", 5.0, True),  # its own
        (Held("a", 0.0, 10.0), "b", 5.0, False),
        (Held("a", 0.0, 10.0), "b", 10.0, True),  # expired
    ],
)
def test_autopilot_lease_takeable(held: Held | None, who: str, now: float, ok: bool) -> None:
    assert takeable(held, who, now) is ok


async def test_autopilot_lease_one_holder_among_many(store: Store) -> None:
    """Ten autopilots reaching for a free lease at once: exactly one gets it."""
    clock = Clock()
    leases = [Lease(store, KEY, f"pilot-{i}", 30.0, clock) for i in range(10)]
    got = await asyncio.gather(*(lease.acquire() for lease in leases))
    winners = [lease for lease, held in zip(leases, got, strict=True) if held is not None]
    assert len(winners) == 1
    held, _ = await winners[0].peek()
    assert held is not None and held.holder == winners[0].holder


async def test_autopilot_lease_taken_over_after_its_holder_dies(store: Store) -> None:
    """A holder that stops renewing loses the lease once it expires; the next one finds the
    run it left, and the old holder learns it lost the lease when it tries to renew."""
    clock = Clock()
    first = Lease(store, KEY, "first", 30.0, clock)
    second = Lease(store, KEY, "second", 30.0, clock)
    assert await first.acquire() is not None
    assert await first.mark("RUN-1")
    clock.now += 20
    assert await first.renew()  # expires at 1050 now
    clock.now += 29
    assert await second.acquire() is None  # still held
    clock.now += 2
    left = await second.acquire()
    assert left is not None and left.holder == "first" and left.run_id == "RUN-1"
    assert not await first.renew()  # lost: someone else wrote it
    assert first.held is None
    await first.release()  # nothing of its own to release: the new holder keeps it
    held, _ = await second.peek()
    assert held is not None and held.holder == "second" and held.run_id == "RUN-1"
    await second.release()
    assert await Lease(store, KEY, "third", 30.0, clock).acquire() is not None


async def test_autopilot_pauses_of_two_tasks_at_once_both_count(store: Store) -> None:
    await asyncio.gather(
        *(set_hold(store, f"task-{i}", True, f"because {i}") for i in range(6))
    )
    holds = await read_holds(store)
    assert sorted(holds) == [f"task-{i}" for i in range(6)]
    assert all(hold.paused for hold in holds.values())
    await set_hold(store, "task-3", False, None)
    assert not (await read_holds(store))["task-3"].paused


async def test_autopilot_timeline_reads_back_in_order(store: Store) -> None:
    kinds = ["retrain_decided", "run_started", "trained", "published", "challenger_started"]
    for i, kind in enumerate(kinds):
        await record(store, Event("t", kind, f"step {i}", "autopilot", at=2_000_000_000.0 + i))
    await record(store, Event("other", "paused", "elsewhere", "admin"))
    events = await timeline(store, "t")
    assert [e.kind for e in events] == kinds
    assert [e.kind for e in await timeline(store, "t", limit=2)] == kinds[-2:]
    assert render(events[:1]) == ["2033-05-18 03:33:20  retrain_decided     autopilot  step 0"]
    with pytest.raises(ValueError, match="unknown event kind"):
        await record(store, Event("t", "exploded", "?", "autopilot"))


async def test_autopilot_run_record_round_trip(store: Store) -> None:
    assert await read_run(store, "t", "R1") is None
    rec = RunRecord("t", "R1", "rejected", 1.5, reason="lost", figures={"data": {"train": 3}})
    await write_run(store, rec)
    assert await read_run(store, "t", "R1") == rec
