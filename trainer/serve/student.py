"""The running student: base model, tokenizer, adapters and engine, as the routes see them."""

from __future__ import annotations

import asyncio
import secrets
import shutil
import tempfile
from collections.abc import Sequence
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import structlog
import torch

from core.errors import StoreError
from trainer.batches import end_of_turn_ids, prompt_ids
from trainer.model import load_base, resolve_base
from trainer.serve.adapters import AdapterFetcher, AdapterSlots, published, with_placeholder
from trainer.serve.constrained import Grammars
from trainer.serve.engine import Engine, Job
from trainer.serve.errors import InvalidInput
from trainer.serve.protocol import Limits, Parameters, check, spec_of
from trainer.serve.settings import StudentSettings

log = structlog.get_logger("student")

DEFAULT_CONTEXT = 2048  # tokens, for a model whose config does not say


def package_version() -> str:
    try:
        return version("protege")
    except PackageNotFoundError:
        return "0+unknown"


class Student:
    """Everything a request needs; ``load`` builds it, ``start`` and ``aclose`` run it."""

    def __init__(
        self, settings: StudentSettings, model: Any, tokenizer: Any, model_id: str
    ) -> None:
        self.settings = settings
        self.model_id = model_id
        self.tokenizer = tokenizer
        self._owned_cache = settings.cache_dir is None
        cache = settings.cache_dir or Path(tempfile.mkdtemp(prefix="protege-student-"))
        self.fetcher = AdapterFetcher(settings.store, cache)
        self.slots = AdapterSlots(model, settings.max_adapters)
        total = settings.max_total_tokens or _context_length(model)
        self.limits = Limits(
            max_input_length=total - 1,
            max_total_tokens=total,
            max_stop_sequences=settings.max_stop_sequences,
        )
        eos = {tokenizer.eos_token_id, end_of_turn_ids(tokenizer)[-1]}
        eos |= set(_ids(model.generation_config.eos_token_id))
        eos_ids = frozenset(i for i in eos if i is not None)
        self.engine = Engine(
            model,
            tokenizer,
            self.slots,
            max_batch_size=settings.max_batch_size,
            max_jobs=settings.max_concurrent_requests,
            eos_ids=eos_ids,
        )
        n_vocab = max(len(tokenizer), getattr(model.config, "vocab_size", 0) or 0)
        self.grammars = Grammars(tokenizer, n_vocab=n_vocab, end_ids=eos_ids)
        parameter = next(model.parameters())
        self.dtype = str(parameter.dtype)
        self.device_type = parameter.device.type

    @classmethod
    def load(cls, settings: StudentSettings) -> Student:
        """Load the base model (blocking: seconds to minutes) and wrap it for adapters."""
        ref = resolve_base(settings.base_model)
        device = settings.device or ("cuda" if torch.cuda.is_available() else "cpu")
        base, tokenizer = load_base(ref, device=device)
        log.info("base model loaded", model=ref.model_id, device=device)
        return cls(settings, with_placeholder(base), tokenizer, ref.model_id)

    def start(self) -> None:
        self.engine.start()

    async def stop(self) -> None:
        """End running and waiting requests (``IncompleteGeneration``) and refuse new ones."""
        await asyncio.to_thread(self.engine.close)

    async def aclose(self) -> None:
        await self.stop()
        await self.fetcher.aclose()
        if self._owned_cache:
            await asyncio.to_thread(shutil.rmtree, self.fetcher.cache_dir, True)

    def encode(self, text: str) -> list[int]:
        """``text``'s tokens as LoRAX's native routes take them (with special tokens added)."""
        if not text:
            raise InvalidInput("`inputs` cannot be empty")
        return list(self.tokenizer(text, add_special_tokens=True)["input_ids"])

    def encode_chat(self, messages: Sequence[dict[str, Any]]) -> list[int]:
        """The prompt tokens of a conversation: the base model's chat template, as in training."""
        try:
            return prompt_ids(self.tokenizer, messages)
        except Exception as exc:
            raise InvalidInput(f"chat template: {exc}") from exc

    async def submit(self, params: Parameters, ids: list[int], *, stream: bool) -> Job:
        """Check the request, compile its grammar off the loop, fetch its adapter, queue it."""
        check(params, self.limits, stream=stream)
        seed = params.seed if params.seed is not None else secrets.randbits(63)
        spec = spec_of(params, ids, self.limits, seed=seed)
        constraint = None
        if spec.schema is not None:
            constraint = await asyncio.to_thread(self.grammars.constraint, spec.schema)
        adapter = await self.fetcher.fetch(params.adapter_id) if params.adapter_id else None
        job = Job(spec, adapter, asyncio.get_running_loop(), constraint)
        self.engine.submit(job)
        return job

    async def adapters(self) -> list[str]:
        """Published adapters (what the store lists; the attached ones if it cannot)."""
        try:
            return await published(self.settings.store)
        except StoreError as exc:
            log.warning("cannot list published adapters", store=self.settings.store, error=str(exc))
            return self.slots.attached()

    def info(self) -> dict[str, Any]:
        """LoRAX's ``/info`` fields, and this server's own under ``student``."""
        s, limits = self.settings, self.limits
        return {
            "model_id": self.model_id,
            "model_sha": None,
            "model_dtype": self.dtype,
            "model_device_type": self.device_type,
            "model_pipeline_tag": "text-generation",
            "max_concurrent_requests": s.max_concurrent_requests,
            "max_best_of": limits.max_best_of,
            "max_stop_sequences": limits.max_stop_sequences,
            "max_input_length": limits.max_input_length,
            "max_total_tokens": limits.max_total_tokens,
            "waiting_served_ratio": 1.2,
            "max_batch_total_tokens": s.max_batch_size * limits.max_total_tokens,
            "max_waiting_tokens": 20,
            "validation_workers": 1,
            "eager_prefill": False,
            "version": package_version(),
            "sha": None,
            "docker_label": None,
            "request_logger_url": None,
            "student": {
                "store": s.store,
                "max_adapters": s.max_adapters,
                "max_batch_size": s.max_batch_size,
                "adapters": self.slots.attached(),
                "adapter_loads": self.slots.loads,
                "adapter_evictions": self.slots.evictions,
                "adapter_downloads": self.fetcher.downloads,
                "schemas_compiled": self.grammars.compilations,
                **self.engine.snapshot(),
            },
        }


def _context_length(model: Any) -> int:
    config = model.config
    length = getattr(config, "max_position_embeddings", None)
    return int(length) if length else DEFAULT_CONTEXT


def _ids(value: int | list[int] | None) -> list[int]:
    if value is None:
        return []
    return [value] if isinstance(value, int) else list(value)
