"""LoRA targets found per architecture: tiny Llama, Mistral, Qwen2, Qwen3, Phi-3 and Gemma bases
built here from configs, trained a few steps, saved, reloaded with PEFT and by the student server.
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest
import torch
import transformers
from peft import PeftModel
from torch import nn

from trainer.config import TrainConfig
from trainer.loop import train
from trainer.model import attach_lora, load_base, load_train_config, resolve_base, save_adapter
from trainer.serve.adapters import AdapterSlots, LocalAdapter, peft_quirks, with_placeholder
from trainer.targets import find_targets, leaf_names, wrapped_targets
from trainer.tiny import tiny_examples, tiny_tokenizer

LAYERS = 2
LLAMA_LIKE = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
FUSED = ("o_proj", "qkv_proj", "gate_up_proj", "down_proj")  # Phi-3, in registration order
CFG = TrainConfig(
    seq_len=128,
    max_tokens_per_batch=256,
    max_steps=3,
    learning_rate=1e-2,
    warmup_steps=1,
    lora_r=4,
    lora_dropout=0.0,
    log_every=1,
)


@dataclass(frozen=True)
class Arch:
    name: str  # the transformers prefix: <name>Config, <name>ForCausalLM
    targets: tuple[str, ...]  # what discovery must find, in order
    extra: tuple[tuple[str, Any], ...] = ()  # config fields beyond the shared tiny ones


ARCHS = [
    Arch("Llama", LLAMA_LIKE),
    Arch("Mistral", LLAMA_LIKE),
    Arch("Qwen2", LLAMA_LIKE),
    Arch("Qwen3", LLAMA_LIKE, (("head_dim", 16),)),
    Arch("Phi3", FUSED),
    Arch("Gemma", LLAMA_LIKE, (("head_dim", 16),)),
]
PARAMS = [
    pytest.param(
        a,
        id=a.name,
        marks=pytest.mark.skipif(
            not hasattr(transformers, f"{a.name}Config"), reason=f"no {a.name} in transformers"
        ),
    )
    for a in ARCHS
]
SERVED = [p for p in PARAMS if p.id in ("Llama", "Phi3")]

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def tokenizer() -> Any:
    return tiny_tokenizer()


def build(arch: Arch, tokenizer: Any, *, seed: int = 0) -> Any:
    """A seeded 2-layer ``arch`` base sized to ``tokenizer``, in eval mode."""
    config = getattr(transformers, f"{arch.name}Config")(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=LAYERS,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        **dict(arch.extra),
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = getattr(transformers, f"{arch.name}ForCausalLM")(config)
    return model.eval()


def logits(model: Any, tokenizer: Any) -> torch.Tensor:
    """``model``'s logits on a fixed prompt, in eval mode."""
    ids = tokenizer("Classify the sentiment: I love it!", return_tensors="pt")["input_ids"]
    model.eval()
    with torch.no_grad():
        return model(input_ids=ids).logits  # type: ignore[no-any-return]


@pytest.mark.parametrize(
    ("names", "leaves"),
    [
        ([], ()),
        (["0.self_attn.q_proj", "0.mlp.up_proj", "1.self_attn.q_proj"], ("q_proj", "up_proj")),
        (["fc"], ("fc",)),
        (["1.b", "0.a", "0.b"], ("b", "a")),
    ],
)
def test_leaf_names_are_distinct_and_in_first_seen_order(
    names: list[str], leaves: tuple[str, ...]
) -> None:
    """leaf_names keeps each last segment once, where it first appears."""
    assert leaf_names(names) == leaves


@pytest.mark.parametrize("arch", PARAMS)
def test_discovery_finds_every_block_linear_and_nothing_else(arch: Arch, tokenizer: Any) -> None:
    """Discovery names exactly the attention and MLP linears; the head is the only other one."""
    model = build(arch, tokenizer)
    assert find_targets(model) == arch.targets
    linears = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    outside = [n for n in linears if ".layers." not in n]
    assert outside == ["lm_head"]
    assert len(linears) - 1 == LAYERS * len(arch.targets)


def test_an_explicit_list_wins(tokenizer: Any, tmp_path: Path) -> None:
    """Named target_modules are the only layers wrapped, and saved as given."""
    cfg = replace(CFG, target_modules=("v_proj", "q_proj"))
    peft = attach_lora(build(ARCHS[0], tokenizer), cfg)
    assert wrapped_targets(peft) == ("q_proj", "v_proj")
    assert load_train_config(save_adapter(peft, tmp_path, config=cfg)) == cfg


def test_a_model_without_decoder_blocks_fails_naming_it() -> None:
    """A model with no list of num_hidden_layers blocks is refused, not left untrained."""
    model = nn.Sequential(nn.Linear(4, 4))
    model.config = transformers.LlamaConfig(num_hidden_layers=2)  # type: ignore[assignment]
    with pytest.raises(ValueError, match="Sequential: no list of 2 decoder blocks"):
        find_targets(model)


def train_and_save(arch: Arch, tokenizer: Any, out: Path) -> tuple[Any, Any]:
    """(the trained PEFT model, an untouched copy of its base); the adapter saved in ``out``."""
    model = build(arch, tokenizer)
    base = copy.deepcopy(model)
    peft = attach_lora(model, CFG)
    lora_before = {n: p.detach().clone() for n, p in peft.named_parameters() if "lora_" in n}
    train(peft, tokenizer, tiny_examples(4), CFG, device="cpu")

    after = dict(peft.named_parameters())
    assert len(lora_before) == 2 * LAYERS * len(arch.targets)
    assert all(not torch.equal(after[n], p) for n, p in lora_before.items())
    original = dict(base.named_parameters())
    kept = {
        n.replace(".base_layer", ""): p
        for n, p in peft.get_base_model().named_parameters()
        if "lora_" not in n
    }
    assert kept.keys() == original.keys()
    assert all(torch.equal(p, original[n]) for n, p in kept.items())
    save_adapter(peft, out, config=CFG)
    return peft, base


@pytest.mark.parametrize("arch", PARAMS)
def test_trains_saves_and_reloads_with_the_found_targets(
    arch: Arch, tokenizer: Any, tmp_path: Path
) -> None:
    """Only LoRA moves; the saved configs name the found layers; PEFT reloads the same outputs."""
    peft, base = train_and_save(arch, tokenizer, tmp_path)

    adapter_config = json.loads((tmp_path / "adapter_config.json").read_text())
    assert sorted(adapter_config["target_modules"]) == sorted(arch.targets)
    assert load_train_config(tmp_path) == replace(CFG, target_modules=arch.targets)
    trained, untrained = logits(peft, tokenizer), logits(base, tokenizer)
    assert (trained - untrained).abs().max() > 1e-3  # the adapter has an effect to reload
    with peft_quirks():
        reloaded = PeftModel.from_pretrained(base, str(tmp_path))
    torch.testing.assert_close(logits(reloaded, tokenizer), trained, atol=1e-6, rtol=0)


@pytest.mark.parametrize("arch", SERVED)
def test_the_student_server_loads_the_adapter(arch: Arch, tokenizer: Any, tmp_path: Path) -> None:
    """The server's loading path (base directory, placeholder, slots) answers like training."""
    base_dir, adapter_dir = tmp_path / "base", tmp_path / "adapter"
    build(arch, tokenizer).save_pretrained(base_dir)
    tokenizer.save_pretrained(base_dir)
    peft, _ = train_and_save(arch, tokenizer, adapter_dir)

    base, served_tokenizer = load_base(resolve_base(str(base_dir)), dtype=torch.float32)
    model = with_placeholder(base)
    slots, adapter = AdapterSlots(model, 2), LocalAdapter("tiny/v1", adapter_dir)
    slots.activate(adapter)
    with slots.using(adapter):
        served = logits(model, served_tokenizer)
    with slots.using(None):
        bare = logits(model, served_tokenizer)
    torch.testing.assert_close(served, logits(peft, tokenizer), atol=1e-5, rtol=0)
    assert (served - bare).abs().max() > 1e-3  # the answer is the adapter's, not the base's
