"""The student server's settings: one frozen object, built once from the command line and env."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import Field

from core.settings import DEFAULT_STORE, Model, StoreUri, validate


class StudentSettings(Model):
    # The base model: "smollm2", a Hugging Face model directory or a .gguf file.
    base_model: str = Field(default="smollm2", min_length=1)
    # Where published adapters are: <store>/adapters/<task>/<version>/.
    store: StoreUri = DEFAULT_STORE
    host: str = "127.0.0.1"
    port: int = Field(default=8090, ge=0, le=65535)
    # Adapters kept attached to the model; the least recently used one is dropped beyond this.
    max_adapters: int = Field(default=8, ge=1)
    # cpu, cuda, cuda:1 ...; None: cuda if present.
    device: str | None = None
    # Requests for one adapter generated together in one batch.
    max_batch_size: int = Field(default=8, ge=1)
    # Requests waiting or running at once; more are refused with 429 (LoRAX's default).
    max_concurrent_requests: int = Field(default=128, ge=1)
    # Prompt plus answer tokens per request; None: the model's context length.
    max_total_tokens: int | None = Field(default=None, ge=2)
    # Stop sequences one request may give (LoRAX's default).
    max_stop_sequences: int = Field(default=4, ge=0)
    # Downloaded adapters; None: a temporary directory removed at shutdown.
    cache_dir: Path | None = None


def load_student_settings(
    env: Mapping[str, str] | None = None, **overrides: Any
) -> StudentSettings:
    """Settings from ``overrides`` (None values left out), the store from ``PROTEGE_STORE``.

    Fails with a ``ConfigError`` naming the key, e.g. ``config: max_adapters ...``.
    """
    environ = os.environ if env is None else env
    data: dict[str, Any] = {}
    if environ.get("PROTEGE_STORE"):
        data["store"] = environ["PROTEGE_STORE"]
    data.update({k: v for k, v in overrides.items() if v is not None})
    return validate(StudentSettings, data)
