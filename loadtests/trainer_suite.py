"""The scenarios, run one after another in this process on the same examples.

Every scenario builds its own model from the same seed (base weights in the dtype Protégé
loads them in: bfloat16 on CUDA, float32 on CPU; LoRA r=16 on every linear layer), trains,
and drops it; memory is freed and the CUDA peak reset between scenarios.
"""

from __future__ import annotations

import gc
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

import torch
import trainer_baselines as baselines
import trainer_data as data
import trainer_models as models
import trainer_protege as protege
from trainer_report import Measured, ScenarioResult

from trainer.batches import Encoded
from trainer.config import TrainConfig
from trainer.examples import Example
from trainer.model import attach_lora, default_dtype

SCENARIOS: Final = (
    "hf-trainer-defaults",
    "naive-padded",
    "protege",
    "protege-bigbatch",
    "protege-compile",
)
# Seconds a scenario takes beyond its window: model built, warm-up, tokenization, clean-up.
OVERHEAD_S: Final = {"hf-trainer-defaults": 15, "naive-padded": 10}
PROTEGE_OVERHEAD_S: Final = 25
COMPILE_S: Final = 180  # torch.compile warm-up on a GPU: 1-2 min a shape, a few shapes


@dataclass(frozen=True)
class Options:
    model: str  # "smollm2-config" or "tiny"
    device: torch.device
    examples: int
    seconds: float  # length of each scenario's timed window
    scenarios: tuple[str, ...]
    seq_len: int  # Protégé: longest packed row
    tokens_per_batch: int  # Protégé: micro-batch budget (rows x longest row)
    big_tokens_per_batch: int  # protege-bigbatch: the same, larger
    min_len: int  # example lengths are drawn from [min_len, max_len] tokens
    max_len: int
    warmup_steps: int  # steps before each window opens
    compile_budget_s: float  # most seconds the compile warm-up may take
    threads: int  # torch's CPU threads


@dataclass(frozen=True)
class Bench:
    """What every scenario shares: the tokenizer and the examples, raw and encoded."""

    tokenizer: Any
    examples: list[Example]
    encoded: list[Encoded]
    stats: data.DataStats


def prepare(opts: Options) -> Bench:
    tokenizer = data.make_tokenizer()
    examples = data.make_examples(tokenizer, opts.examples, opts.min_len, opts.max_len)
    encoded = data.encode(tokenizer, examples, opts.seq_len)
    return Bench(tokenizer, examples, encoded, data.stats(encoded))


def expected_seconds(name: str, opts: Options) -> float:
    """A rough wall time for one scenario, for the progress lines."""
    if name == "protege-compile":
        return opts.seconds + PROTEGE_OVERHEAD_S + (COMPILE_S if opts.device.type == "cuda" else 0)
    return opts.seconds + OVERHEAD_S.get(name, PROTEGE_OVERHEAD_S)


def run_scenario(name: str, opts: Options, bench: Bench) -> ScenarioResult:
    """Run one scenario and free what it used."""
    if name == "protege-compile" and opts.device.type != "cuda":
        return ScenarioResult(name, None, 0.0, skipped="torch.compile is used on CUDA only")
    cuda = opts.device.type == "cuda"
    if cuda:
        torch.cuda.reset_peak_memory_stats(opts.device)
    started = time.perf_counter()
    try:
        measured, extra = _RUNNERS[name](opts, bench)
    except Exception as exc:  # one failed scenario must not cost the others their figures
        traceback.print_exc()
        failed = f"failed: {type(exc).__name__}: {str(exc)[:200]}"
        return ScenarioResult(name, None, time.perf_counter() - started, skipped=failed)
    finally:
        _free(compiled=name == "protege-compile")
    peak = torch.cuda.max_memory_allocated(opts.device) / 2**30 if cuda else None
    return ScenarioResult(name, measured, time.perf_counter() - started, peak, extra=extra)


def _base(opts: Options, bench: Bench) -> Any:
    dtype = default_dtype(opts.device)
    return models.build_model(opts.model, bench.tokenizer, opts.device, dtype)


def _hf(opts: Options, bench: Bench) -> tuple[Measured, dict[str, Any]]:
    model = models.plain_lora(_base(opts, bench))
    measured = baselines.hf_trainer_defaults(
        model, bench.tokenizer, bench.encoded, device=opts.device,
        seconds=opts.seconds, warmup=opts.warmup_steps,
    )  # fmt: skip
    return measured, {"batch_size": baselines.BATCH_SIZE}


def _naive(opts: Options, bench: Bench) -> tuple[Measured, dict[str, Any]]:
    model = models.plain_lora(_base(opts, bench))
    measured = baselines.naive_padded(
        model, bench.encoded, bench.tokenizer.pad_token_id, device=opts.device,
        seconds=opts.seconds, warmup=opts.warmup_steps,
    )  # fmt: skip
    return measured, {"batch_size": baselines.BATCH_SIZE}


def _protege(
    opts: Options, bench: Bench, tokens_per_batch: int, *, compile: bool
) -> tuple[Measured, dict[str, Any]]:
    cfg = TrainConfig(
        seq_len=opts.seq_len, max_tokens_per_batch=tokens_per_batch,
        packing=True, compile=compile, max_steps=1,
    )  # fmt: skip
    lengths = [len(e) for e in bench.encoded]
    model = attach_lora(_base(opts, bench), cfg)
    run = protege.run_protege(
        model, bench.tokenizer, bench.examples, lengths, cfg, device=opts.device,
        seconds=opts.seconds, warmup=protege.warmup_steps(lengths, cfg, opts.warmup_steps),
        warmup_budget_s=opts.compile_budget_s if compile else 3 * opts.seconds + 60,
    )  # fmt: skip
    extra = {"seq_len": cfg.seq_len, "max_tokens_per_batch": tokens_per_batch,
             "compile": compile, "steps_planned": run.steps_planned}  # fmt: skip
    return run.measured, extra


def _bigbatch(opts: Options, bench: Bench) -> tuple[Measured, dict[str, Any]]:
    """Protégé with the big budget; halved after running out of GPU memory, down to the usual."""
    budget = opts.big_tokens_per_batch
    while True:
        try:
            return _protege(opts, bench, budget, compile=False)
        except torch.cuda.OutOfMemoryError:
            if budget // 2 < max(opts.tokens_per_batch, opts.seq_len):
                raise
        _free(compiled=False)
        torch.cuda.reset_peak_memory_stats(opts.device)
        print(f"  {budget} tokens per micro-batch ran out of GPU memory; trying {budget // 2}")
        budget //= 2


Runner = Callable[[Options, Bench], tuple[Measured, dict[str, Any]]]
_RUNNERS: Final[dict[str, Runner]] = {
    "hf-trainer-defaults": _hf,
    "naive-padded": _naive,
    "protege": lambda o, b: _protege(o, b, o.tokens_per_batch, compile=False),
    "protege-bigbatch": lambda o, b: _bigbatch(o, b),
    "protege-compile": lambda o, b: _protege(o, b, o.tokens_per_batch, compile=True),
}


def _free(*, compiled: bool) -> None:
    if compiled:
        torch._dynamo.reset()
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
