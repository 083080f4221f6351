"""Live rollouts shared through the store: changes, replicas converging, restarts, outages."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest
from structlog.testing import capture_logs

from core.errors import StoreError
from core.store import FileStore
from gateway.metrics import Metrics
from gateway.policy import RolloutPolicy
from gateway.rollouts import KEY, Active, Doc, Rollouts
from tests.stored import FlakyStore

CANARY = RolloutPolicy(mode="canary", percent=10, adapter="tickets/v3")
SHADOW = RolloutPolicy(mode="shadow", adapter="tickets/v3")




def replica(store: FileStore, config: dict[str, RolloutPolicy] | None = None) -> Rollouts:
    return Rollouts(config or {}, store, Metrics(), str)


async def test_change_is_applied_stored_and_exported(tmp_path: Path) -> None:
    """A change is in the store's document, in force here, and in the rollout gauges."""
    store = FileStore(tmp_path)
    metrics = Metrics()
    rollouts = Rollouts({}, store, metrics, str)
    await rollouts.load()
    await rollouts.change("tickets", CANARY, "admin", "ramp up")
    assert rollouts.policy("tickets") == CANARY
    doc = orjson.loads((tmp_path / KEY).read_bytes())
    assert doc["revision"] == 1 and doc["tasks"]["tickets"]["policy"]["percent"] == 10
    get = metrics.registry.get_sample_value
    assert get("protege_rollout_percent", {"task": "tickets"}) == 10
    assert get("protege_rollout_mode", {"task": "tickets", "mode": "canary"}) == 1
    assert get("protege_rollout_mode", {"task": "tickets", "mode": "teacher"}) == 0
    assert get("protege_rollout_changes_total", {"task": "tickets", "source": "admin"}) == 1


async def test_replicas_converge_on_sync(tmp_path: Path) -> None:
    """A change made through one replica is in force on another after its next sync."""
    store = FileStore(tmp_path)
    a, b = replica(store), replica(store)
    await a.load()
    await b.load()
    await a.change("tickets", CANARY, "admin")
    assert b.policy("tickets") is None
    await b.sync()
    assert b.policy("tickets") == CANARY and b.revision == a.revision == 1
    await b.change("tickets", None, "admin")  # back to the config's
    await a.sync()
    assert a.policy("tickets") is None and a.revision == 2


async def test_a_restart_keeps_runtime_changes_over_the_config(tmp_path: Path) -> None:
    """A new gateway loads the stored changes over its config; tasks not changed keep theirs."""
    store = FileStore(tmp_path)
    config = {"tickets": RolloutPolicy(), "drafts": SHADOW}
    first = replica(store, config)
    await first.load()
    await first.change("tickets", CANARY, "admin")
    restarted = replica(store, config)
    await restarted.load()
    assert restarted.policy("tickets") == CANARY
    assert restarted.policy("drafts") == SHADOW
    assert restarted.get("drafts") == Active(SHADOW, "config", 0.0)


async def test_listeners_hear_every_change(tmp_path: Path) -> None:
    """Subscribers hear the tasks in force when they subscribe, then every change."""
    rollouts = replica(FileStore(tmp_path), {"drafts": SHADOW})
    heard: list[tuple[str, str | None]] = []
    rollouts.subscribe(lambda task, old, new: heard.append((task, new and new.policy.mode)))
    await rollouts.change("tickets", CANARY, "admin")
    await rollouts.change("tickets", None, "admin")
    assert heard == [("drafts", "shadow"), ("tickets", "canary"), ("tickets", None)]


async def test_an_admin_change_is_refused_while_the_store_is_down(tmp_path: Path) -> None:
    """A change the store cannot take raises, and nothing changes anywhere."""
    store = FlakyStore(tmp_path)
    rollouts = replica(store)
    store.down = True
    with pytest.raises(StoreError):
        await rollouts.change("tickets", CANARY, "admin")
    assert rollouts.policy("tickets") is None


async def test_a_forced_step_back_applies_at_once_and_is_written_later(tmp_path: Path) -> None:
    """A guardrail step-back applies here while the store is down, and reaches it (and the
    other replicas) once the store answers again."""
    store = FlakyStore(tmp_path)
    here, there = replica(store), replica(store)
    await here.change("tickets", CANARY, "admin")
    await there.sync()
    store.down = True
    with capture_logs() as logs:
        await here.force("tickets", SHADOW, "guardrail", "error_rate")
    assert here.policy("tickets") == SHADOW
    assert any(e["event"] == "rollout change not yet shared; applied here" for e in logs)
    store.down = False
    await here.sync()
    await there.sync()
    assert there.policy("tickets") == SHADOW
    assert there.get("tickets") is not None and there.get("tickets").source == "guardrail"  # type: ignore[union-attr]


async def test_an_unreadable_store_leaves_the_config_in_force(tmp_path: Path) -> None:
    """At start-up with the store down, the config's rollouts apply and it is logged."""
    store = FlakyStore(tmp_path)
    store.down = True
    rollouts = replica(store, {"drafts": SHADOW})
    with capture_logs() as logs:
        await rollouts.load()
    assert rollouts.policy("drafts") == SHADOW
    assert any(e["log_level"] == "error" for e in logs)


@pytest.mark.parametrize(
    "data",
    [b"not json", b"[]", b'{"version": 9, "revision": 1, "tasks": {}}', b'{"version": 1}'],
)
def test_a_foreign_document_is_refused(data: bytes) -> None:
    """A document that is not a version 1 rollout document is refused with a ValueError."""
    with pytest.raises(ValueError, match=r"rollouts/routes\.json"):
        Doc.decode(data)


def test_a_bad_entry_is_left_out_and_logged() -> None:
    """One invalid task entry does not hide the valid ones."""
    good = Active(CANARY, "admin", 1.0).to_json()
    bad = {**good, "policy": {"mode": "canary", "percent": 400, "adapter": "t/v1"}}
    data = orjson.dumps({"version": 1, "revision": 3, "tasks": {"a": good, "b": bad}})
    with capture_logs() as logs:
        doc = Doc.decode(data)
    assert set(doc.tasks) == {"a"} and doc.revision == 3
    assert [e["task"] for e in logs if e["log_level"] == "error"] == ["b"]
