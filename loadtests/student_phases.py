"""The student benchmark's measurements: one phase's requests, timed, and what they add up to."""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from lorax import AsyncClient
from student_world import World, adapter_for, stop_ids

from trainer.model import load_adapter, load_base, resolve_base


@dataclass
class Phase:
    name: str
    requests: int = 0
    tokens: int = 0  # generated tokens, all requests together
    wall_s: float = 0.0
    latencies_s: list[float] = field(default_factory=list)
    largest_batch: int | None = None  # the server's, during this phase
    batches: int | None = None

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.wall_s if self.wall_s else 0.0

    def percentile_ms(self, q: float) -> float:
        """Nearest-rank percentile ``q`` (0..100) of the request latencies, in milliseconds."""
        ordered = sorted(self.latencies_s)
        if not ordered:
            return math.nan
        rank = max(1, math.ceil(q / 100 * len(ordered)))
        return ordered[rank - 1] * 1000

    def to_json(self) -> dict[str, Any]:
        summary = {"tokens_per_s": self.tokens_per_s, "p50_ms": self.percentile_ms(50)}
        return {**asdict(self), **summary, "p99_ms": self.percentile_ms(99)}


# ---- baseline: transformers generate in this process -------------------------------------


def baseline(world: World, texts: Sequence[str], max_new_tokens: int) -> Phase:
    """Greedy ``model.generate``, one prompt at a time, adapters alternating like the load."""
    model, tokenizer = load_base(resolve_base(world.base))
    eos = stop_ids(model, tokenizer)
    peft = load_adapter(model, world.adapter_dirs[0])
    names = ["default"]
    for i, directory in enumerate(world.adapter_dirs[1:], start=1):
        peft.load_adapter(str(directory), adapter_name=f"a{i}", is_trainable=False)
        names.append(f"a{i}")
    encoded = [tokenizer(t, return_tensors="pt", add_special_tokens=True) for t in texts]

    def one(index: int) -> int:
        peft.set_adapter(names[adapter_for(index, world)])
        inputs = encoded[index]
        with torch.inference_mode():
            out = peft.generate(  # type: ignore[no-untyped-call]
                **inputs,
                max_new_tokens=max_new_tokens,
                do_sample=False,
                eos_token_id=eos,
                pad_token_id=tokenizer.pad_token_id,
            )
        return int(out.shape[1] - inputs["input_ids"].shape[1])

    for index in range(min(2, len(texts))):  # warm-up: each adapter once
        one(index)
    phase = Phase("transformers generate")
    start = time.perf_counter()
    for index in range(len(texts)):
        began = time.perf_counter()
        phase.tokens += one(index)
        phase.latencies_s.append(time.perf_counter() - began)
    phase.wall_s = time.perf_counter() - start
    phase.requests = len(texts)
    return phase


# ---- the local server, loaded with the lorax client --------------------------------------


async def server_phase(
    url: str, world: World, texts: Sequence[str], max_new_tokens: int, concurrency: int
) -> Phase:
    """``texts`` sent by ``concurrency`` workers, each next request as the last one answers."""
    client = AsyncClient(url, timeout=300)
    phase = Phase(f"student server c={concurrency}")
    pending = iter(range(len(texts)))

    async def worker() -> None:
        for index in pending:  # shared iterator: each index is taken once
            adapter = world.adapter_ids[adapter_for(index, world)]
            began = time.perf_counter()
            out = await client.generate(
                texts[index], adapter_id=adapter, max_new_tokens=max_new_tokens
            )
            phase.latencies_s.append(time.perf_counter() - began)
            phase.tokens += out.details.generated_tokens if out.details else 0

    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    phase.wall_s = time.perf_counter() - start
    phase.requests = len(phase.latencies_s)
    return phase
