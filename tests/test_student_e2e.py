"""The whole student path: an adapter trained here, published, served, answered via the gateway."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import orjson
import pytest
from jsonschema import Draft202012Validator

from tests.fake_teacher import wait_for
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


LABEL_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {"label": {"type": "string", "enum": ["negative", "positive"]}},
    "required": ["label"],
    "additionalProperties": False,
}


def test_the_published_policy_and_schema_hold_through_the_gateway(
    served: tuple[RunningStudent, str], make_gateway: Any, tmp_path: Path
) -> None:
    """An adapter published with a decoding policy and an output schema, asked through the
    gateway by a client that sets neither temperature, max_tokens nor response_format: the
    real student server is asked greedily, with the length bound and the schema, and every
    answer is JSON the schema accepts — though the adapter was taught plain words."""
    server, _ = served
    manifest = {
        "decoding": {"temperature": 0.0, "top_p": None, "max_tokens": 40, "max_temperature": None},
        "output_schema": LABEL_SCHEMA,
    }
    store = f"file://{tmp_path / 'store'}"  # the served store, the gateway's too
    adapter = asyncio.run(publish(store, "sentiment", tmp_path / "adapter", manifest)).adapter_id
    route = {"alias": "sentiment", "task": "sentiment",
             "rollout": {"mode": "student", "adapter": adapter}}  # fmt: skip
    gw = make_gateway(routes=[route], student={"base_url": server.url + "/v1"})
    client = openai.OpenAI(base_url=gw.url + "/v1", api_key="k", max_retries=0, timeout=30)
    examples = tiny_examples(6)

    def answer(example: Any) -> tuple[str, Any]:
        raw = client.chat.completions.with_raw_response.create(
            model="sentiment", messages=example.messages
        )
        return raw.parse().choices[0].message.content or "", raw.headers

    # The gateway reads the manifest in the background: the first answers may precede it.
    assert wait_for(lambda: answer(examples[0])[0].startswith("{"), 10)
    validator = Draft202012Validator(LABEL_SCHEMA)
    for example in examples:
        content, headers = answer(example)
        assert validator.is_valid(orjson.loads(content)), content
        assert headers["x-protege-backend"] == "student"
        assert headers["x-protege-adapter"] == adapter
    gw.stop()
    details = [r["detail"] for r in spooled_records(gw.settings.spool.dir, details=True)]
    assert {"temperature": 0.0, "max_tokens": 40, "response_format": "output_schema"} in [
        d.get("decoding") for d in details if d
    ]
