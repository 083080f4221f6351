"""One scenario of the reliability suite (``loadtests/reliability``), short, as CI runs it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
RUNNER = ROOT / "loadtests" / "reliability" / "run.py"


@pytest.mark.slow
@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="the suite pins to two CPUs")
def test_kill_gateway_under_load_loses_and_duplicates_nothing() -> None:
    """The gateway killed with SIGKILL twice under mixed load and restarted on its spool: the
    runner's verdict is PASS, so every answered exchange reached the store exactly once."""
    run = subprocess.run(
        [sys.executable, str(RUNNER), "kill-gateway", "--quick", "--rate", "100"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=90,
        check=False,
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert "kill-gateway: PASS" in run.stdout
    assert "[ok] no answered exchange lost" in run.stdout
    assert "[ok] no duplicate record" in run.stdout
