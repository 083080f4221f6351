"""The whole student path: an adapter trained here, published, served, answered via the gateway."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest

from tests.spooled import spooled_records
from tests.test_student_server import PROMPT, RunningStudent, World
from trainer.config import TrainConfig
from trainer.loop import train
from trainer.model import attach_lora, load_base, resolve_base, save_adapter
from trainer.publish import publish
from trainer.tiny import save_tiny, tiny_examples

pytestmark = pytest.mark.filterwarnings(
    "ignore:The `dict` method is deprecated:pydantic.warnings.PydanticDeprecatedSince20"
)


@pytest.fixture
def served(tmp_path: Path, one_torch_thread: None) -> Iterator[tuple[RunningStudent, str]]:
    """A tiny base with an adapter trained on the sentiment examples, published and served."""
    save_tiny(tmp_path / "base")
    model, tokenizer = load_base(resolve_base(str(tmp_path / "base")))
    cfg = TrainConfig(seq_len=128, max_tokens_per_batch=256, max_steps=30,
                      learning_rate=1e-2, warmup_steps=2, lora_dropout=0.0)  # fmt: skip
    student = attach_lora(model, cfg)
    train(student, tokenizer, tiny_examples(4), cfg, device="cpu")
    folder = save_adapter(student, tmp_path / "adapter")
    store = f"file://{tmp_path / 'store'}"
    adapter = asyncio.run(publish(store, "sentiment", folder, {})).adapter_id
    server = RunningStudent(World(tmp_path, tmp_path / "base", store, adapter, adapter))
    yield server, adapter
    server.stop()


def test_trained_adapter_answers_through_the_gateway(
    served: tuple[RunningStudent, str], make_gateway: Any
) -> None:
    """A request for the task reaches the published adapter on the local student server; the
    client gets an OpenAI answer under its alias, and the record names student and adapter."""
    server, adapter = served
    gw = make_gateway(
        routes=[
            {
                "alias": "sentiment",
                "task": "sentiment",
                "rollout": {"mode": "student", "adapter": adapter},
            }
        ],
        student={"base_url": server.url + "/v1"},
    )
    messages: Any = tiny_examples(1)[0].messages
    client = openai.OpenAI(base_url=gw.url + "/v1", api_key="k", max_retries=0, timeout=30)
    answer = client.chat.completions.create(model="sentiment", messages=messages, temperature=0)
    assert answer.model == "sentiment" and answer.id.startswith("chatcmpl-")
    assert answer.choices[0].message.content == "positive"  # what the adapter was taught
    assert answer.usage is not None and answer.usage.completion_tokens > 0
    assert server.text(adapter, PROMPT)  # the server itself still answers natively
    gw.stop()
    (record,) = spooled_records(gw.settings.spool.dir)
    assert (record["backend"], record["adapter"], record["route"]) == (
        "student",
        adapter,
        "student",
    )
    assert record["complete"] is True
