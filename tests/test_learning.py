"""Learning for real: SmolLM2 distilled on a synthetic task, judged against the teacher."""

from __future__ import annotations

import asyncio
import random
from datetime import timedelta
from pathlib import Path

import orjson
import pytest

from core.ids import new_id
from core.store import open_store
from tests.stored import at, put_part, record
from trainer import synthetic
from trainer.config import TrainConfig
from trainer.pipeline import RunOptions, run
from trainer.publish import list_versions, read_manifest
from trainer.settings import CurationConfig, LabelRule
from trainer.tiny import LLAMA_LINEAR

pytestmark = pytest.mark.slow  # minutes of real training of SmolLM2


def log_tickets(store_uri: str, n: int, tmp: Path) -> None:
    """n teacher exchanges of the synthetic ticket-routing task, from 60 users, in the store."""
    rng = random.Random(7)
    records = []
    for i in range(n):
        text, _ = synthetic.ticket(rng)
        rec = record(new_id(), at("2026-11-01 10:00") + timedelta(seconds=i), task="tickets")
        rec["request"] = orjson.dumps({"model": "tickets", "messages": synthetic.messages(text)})
        rec["response"] = orjson.dumps(
            {"choices": [{"index": 0, "finish_reason": "stop",
                          "message": {"role": "assistant",
                                      "content": synthetic.teacher_answer(text)}}]}
        )  # fmt: skip
        rec["request"], rec["response"] = rec["request"].decode(), rec["response"].decode()
        rec["user"] = f"user{i % 60}"
        records.append(rec)

    async def put() -> None:
        async with open_store(store_uri) as store:
            await put_part(store, "segment-1", records, tmp)

    asyncio.run(put())


@pytest.mark.timeout(900)  # a few minutes of real training on two CPU cores
def test_student_learns_the_task_and_is_published(tmp_path: Path) -> None:
    """On a deterministic teacher's task the student reaches >= 95 % on test-balanced, the
    zero-shot base stays far lower, and the adapter is published with its manifest."""
    store = f"file://{tmp_path / 'store'}"
    log_tickets(store, 200, tmp_path)
    curation = CurationConfig(
        label=LabelRule(json_path="$.category"),
        classes=tuple(sorted(synthetic.CATEGORIES)),
        test_fraction=0.25,
        test_balanced_per_class=8,
    )
    config = TrainConfig(
        epochs=3, learning_rate=1e-3, seq_len=256, max_tokens_per_batch=1024, eval_batch_size=32
    )
    lines: list[str] = []
    result = run(
        RunOptions(
            task="tickets", store=store, out_dir=tmp_path / "run", curation=curation,
            config=config, device="cpu", say=lines.append,
        )
    )  # fmt: skip
    headline = result.evaluation.headline
    assert headline["test-balanced"]["student"] >= 0.95, lines
    assert headline["test-balanced"]["base (zero-shot)"] <= 0.5
    assert result.training.final_loss < result.training.curve[0].loss / 10
    assert result.published is not None
    assert asyncio.run(list_versions(store, "tickets")) == [result.published.version]
    manifest = asyncio.run(read_manifest(store, "tickets", result.published.version))
    assert manifest["base_model"] == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert manifest["dataset_snapshot"] == result.snapshot
    assert manifest["input_profile"]["n"] == result.training.examples
    assert manifest["hyperparameters"]["target_modules"] == list(LLAMA_LINEAR)
    assert any("memory" in line for line in lines)
    assert (tmp_path / "run" / "report.md").read_text().count("test-balanced") >= 1
    assert (tmp_path / "run" / "loss.png").stat().st_size > 1000
