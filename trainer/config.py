"""Hyper-parameters of one LoRA distillation run, saved as JSON beside every adapter.

Every field has a default that trains a useful student of SmolLM2-135M on a few hundred to a few
thousand examples; the learning rate, epochs, tokens per step and LoRA rank were chosen from
sweeps on two tasks of different shapes (README, "Defaults"). A run overrides what it needs,
e.g. ``TrainConfig(epochs=1, data_fraction=0.25)``.
``from_dict`` fails fast naming the key, so a stale or hand-edited file cannot train silently
with a typo in it.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Any, Final

from core.errors import ConfigError

SCHEDULES: Final = ("cosine", "constant")
QUANTIZE: Final = ("none", "4bit")
SHARDING: Final = ("ddp", "fsdp")
OVERLONG: Final = ("drop", "truncate_prompt")


@dataclass(frozen=True)
class TrainConfig:
    # --- LoRA ---
    lora_r: int = 16  # rank of the update matrices
    lora_alpha: int = 32  # scale of the update is lora_alpha / lora_r
    lora_dropout: float = 0.05  # dropout on the LoRA input during training
    # Layer names LoRA wraps; empty: every linear layer of attention and MLP, found from the
    # model (trainer.targets). The adapter's saved config names the layers found.
    target_modules: tuple[str, ...] = ()

    # --- optimisation ---
    learning_rate: float = 1e-3  # peak learning rate, reached at the end of warm-up
    min_lr_ratio: float = 0.1  # the cosine decays to learning_rate * min_lr_ratio
    schedule: str = "cosine"  # "cosine" decay after warm-up, or "constant"
    warmup_ratio: float = 0.03  # share of the optimizer steps spent warming up linearly...
    warmup_steps: int = 0  # ...unless this is > 0, which wins
    weight_decay: float = 0.0  # AdamW decoupled weight decay on the LoRA matrices
    adam_beta1: float = 0.9  # AdamW momentum of the gradient...
    adam_beta2: float = 0.999  # ...and of its square
    max_grad_norm: float = 1.0  # clip the global gradient norm; 0 turns clipping off

    # --- length of the run ---
    epochs: float = 3.0  # passes over the training set (fractions allowed)...
    max_steps: int = 0  # ...unless this is > 0: optimizer steps, whatever the epochs

    # --- batches ---
    seq_len: int = 1024  # longest row (packed or not) in tokens
    # Micro-batch budget (rows x padded length <= this); with grad_accum_steps, the tokens of an
    # optimizer step. Small data learns from the number of steps: 1,024 a step gave 48 steps and
    # 100 % on the demo task where 4,096 gave 12 steps and 64 %, in the same time.
    max_tokens_per_batch: int = 1024
    grad_accum_steps: int = 1  # micro-batches per optimizer step
    packing: bool = True  # several examples per row, isolated by position ids and mask
    overlong: str = "drop"  # example longer than seq_len: "drop" it or "truncate_prompt"
    data_fraction: float = 1.0  # train on this seeded share of the examples (size ablation)
    # Memory: seq_len is an upper bound; rows are as long as the data needs (its longest example,
    # rounded up to 64), and micro-batch, accumulation and gradient checkpointing are chosen to
    # fit this budget (``trainer.memory``), keeping tokens per optimizer step as asked.
    memory_budget_gb: float = 0.0  # 0: 70 % of the memory available when training starts

    # --- runtime ---
    seed: int = 0  # LoRA init, data order, dropout
    # bfloat16 base weights and autocast; None: where the device computes bf16 natively (CUDA
    # GPUs that support it, CPUs with AMX or AVX-512 BF16), float32 elsewhere.
    bf16: bool | None = None
    compile: bool = False  # torch.compile the model (CUDA only; slow first steps)
    # "4bit": QLoRA, the frozen base in 4-bit NF4 (bitsandbytes, CUDA only), LoRA on top in
    # full precision; the adapter loads on the full-precision base like any other.
    quantize: str = "none"
    # Over several ranks (protege train --nproc N, torchrun): "ddp" keeps the whole base on
    # every rank; "fsdp" shards the decoder blocks over them, for bases one GPU cannot hold.
    sharding: str = "ddp"
    log_every: int = 10  # optimizer steps between loss-curve points

    # --- evaluation ---
    eval_max_new_tokens: int = 256  # generation budget per test answer
    eval_batch_size: int = 16  # prompts generated together

    def __post_init__(self) -> None:
        problems = _problems(self)
        if problems:
            raise ConfigError(f"config: {problems[0]}")

    def to_dict(self) -> dict[str, Any]:
        """The fields as JSON-ready values."""
        out = asdict(self)
        out["target_modules"] = list(self.target_modules)
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        """A config from ``to_dict`` output (or a hand-written subset of it)."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"config: {unknown[0]} is not a known training setting")
        values = dict(data)
        if isinstance(values.get("target_modules"), list):
            values["target_modules"] = tuple(values["target_modules"])
        defaults = cls()
        for key, value in values.items():
            _check_type(key, value, getattr(defaults, key))
        return cls(**values)


def _check_type(key: str, value: Any, default: Any) -> None:
    """Fail naming ``key`` when ``value`` is not of the type its default has."""
    if default is None:  # bf16: a bool or None
        ok = value is None or isinstance(value, bool)
    elif isinstance(default, bool):
        ok = isinstance(value, bool)
    elif isinstance(default, int):
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif isinstance(default, float):
        ok = isinstance(value, int | float) and not isinstance(value, bool)
    elif isinstance(default, tuple):
        ok = isinstance(value, tuple) and all(isinstance(v, str) for v in value)
    else:
        ok = isinstance(value, type(default))
    if not ok:
        raise ConfigError(f"config: {key} must be like {default!r}, got {value!r}")


def _problems(cfg: TrainConfig) -> list[str]:
    """What is wrong with ``cfg``, one ``key must …, got …`` line each."""
    checks: list[tuple[str, bool, str]] = [
        ("lora_r", cfg.lora_r >= 1, "be >= 1"),
        ("lora_alpha", cfg.lora_alpha > 0, "be > 0"),
        ("lora_dropout", 0.0 <= cfg.lora_dropout < 1.0, "be in [0, 1)"),
        ("target_modules", all(cfg.target_modules), "hold no empty name"),
        ("learning_rate", cfg.learning_rate > 0, "be > 0"),
        ("min_lr_ratio", 0.0 <= cfg.min_lr_ratio <= 1.0, "be in [0, 1]"),
        ("schedule", cfg.schedule in SCHEDULES, f"be one of {SCHEDULES}"),
        ("warmup_ratio", 0.0 <= cfg.warmup_ratio < 1.0, "be in [0, 1)"),
        ("warmup_steps", cfg.warmup_steps >= 0, "be >= 0"),
        ("weight_decay", cfg.weight_decay >= 0, "be >= 0"),
        ("max_grad_norm", cfg.max_grad_norm >= 0, "be >= 0"),
        ("epochs", cfg.epochs > 0 and math.isfinite(cfg.epochs), "be > 0"),
        ("max_steps", cfg.max_steps >= 0, "be >= 0"),
        ("seq_len", cfg.seq_len >= 8, "be >= 8"),
        ("max_tokens_per_batch", cfg.max_tokens_per_batch >= cfg.seq_len, "be >= seq_len"),
        ("grad_accum_steps", cfg.grad_accum_steps >= 1, "be >= 1"),
        ("overlong", cfg.overlong in OVERLONG, f"be one of {OVERLONG}"),
        ("quantize", cfg.quantize in QUANTIZE, f"be one of {QUANTIZE}"),
        ("sharding", cfg.sharding in SHARDING, f"be one of {SHARDING}"),
        ("data_fraction", 0.0 < cfg.data_fraction <= 1.0, "be in (0, 1]"),
        ("memory_budget_gb", cfg.memory_budget_gb >= 0, "be >= 0"),
        ("log_every", cfg.log_every >= 1, "be >= 1"),
        ("eval_max_new_tokens", cfg.eval_max_new_tokens >= 1, "be >= 1"),
        ("eval_batch_size", cfg.eval_batch_size >= 1, "be >= 1"),
    ]
    return [f"{key} must {rule}, got {getattr(cfg, key)!r}" for key, ok, rule in checks if not ok]
