"""The gateway process's garbage-collector settings (``gateway.heap``), in a process of its own:
a frozen heap is for the life of the process, not for the test runner's."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import orjson

_PROBE = textwrap.dedent(
    """
    import gc, sys, orjson
    from gateway.heap import YOUNG_THRESHOLD, settle

    before = gc.get_threshold()
    built = [{"start-up": i} for i in range(1000)]
    settle()
    frozen = gc.get_freeze_count()

    class Node:
        pass

    collected = []
    for _ in range(3):  # cycles made after start-up are garbage the collector still finds
        a, b = Node(), Node()
        a.other, b.other = b, a
        del a, b
        collected.append(gc.collect())
    sys.stdout.write(orjson.dumps({
        "before": before, "after": gc.get_threshold(), "young": YOUNG_THRESHOLD,
        "frozen": frozen, "built": len(built), "collected": collected,
    }).decode())
    """
)


def test_settle_freezes_start_up_and_still_collects_later_cycles() -> None:
    """settle() freezes what exists, raises only the young threshold, and later reference
    cycles are still collected."""
    out = subprocess.run(
        [sys.executable, "-c", _PROBE], capture_output=True, check=True, timeout=60
    ).stdout
    probe = orjson.loads(out)
    assert probe["after"] == [probe["young"], *probe["before"][1:]]
    assert probe["young"] > probe["before"][0]
    assert probe["frozen"] >= probe["built"]
    assert all(found >= 2 for found in probe["collected"])
