"""``protege train`` of logged tickets on the tiny base, in seconds: the store, the config and
the command line the tests of training runs share (the base: ``tests.test_demo.tiny_base``)."""

from __future__ import annotations

from pathlib import Path
from typing import Final

from tests.test_learning import log_tickets

TASK: Final = "tickets"
CONFIG: Final = (
    "trainer:\n  tasks:\n    tickets:\n      label: {json_path: '$.category'}\n"
    "      test_fraction: 0.25\n      test_balanced_per_class: 2\n"
)
# Two optimizer steps on short rows, short answers: a run of the tiny base in about a second.
FAST: Final = (
    "--set", "max_steps=2", "--set", "seq_len=256", "--set", "max_tokens_per_batch=1024",
    "--set", "eval_max_new_tokens=8",
)  # fmt: skip


def ticket_store(tmp_path: Path, n: int = 48) -> tuple[str, Path]:
    """A file store holding ``n`` logged tickets, and the config file of their task."""
    store = f"file://{tmp_path / 'store'}"
    log_tickets(store, n, tmp_path)
    config = tmp_path / "protege.yaml"
    config.write_text(CONFIG)
    return store, config


def train_argv(store: str, config: Path, out: Path, base: Path, *args: str) -> list[str]:
    """``protege train`` of the tickets on ``base``, on the CPU, fast; ``args`` appended."""
    return [
        "train", "--task", TASK, "--config", str(config), "--store", store, "--out", str(out),
        "--base-model", str(base), "--device", "cpu", *FAST, *args,
    ]  # fmt: skip
