"""A tiny Llama and a locally trained tokenizer, for tests and quick runs without any download.

The tokenizer is byte-level BPE (like SmolLM2's) trained on a small built-in corpus plus whatever
texts are passed, with the same ChatML framing (``<|im_start|>role\\n…<|im_end|>\\n``); the model is
a 2-layer Llama with grouped-query attention and tied embeddings, so every code path a real base
takes (chat template, GQA, LoRA targets, PEFT save/load) runs in milliseconds.
``save_tiny(dir)`` writes both as a Hugging Face model directory that ``load_base`` reads.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Final

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from trainer.examples import Example

SPECIAL_TOKENS: Final = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")
# The linear layers of a Llama block (the tiny model's and SmolLM2's): attention, then MLP.
LLAMA_LINEAR: Final = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
CHAT_TEMPLATE: Final = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
CORPUS: Final = (
    "You are a helpful assistant. Answer with one word.",
    "Classify the sentiment of the review as positive or negative.",
    "The product arrived on time and works perfectly. I love it!",
    "Terrible service, the package was broken and nobody answered.",
    "Extract the fields as JSON: name, email, city.",
    '{"name": "Ada", "email": "ada@example.com", "city": "London"}',
    "What is the capital of France? Paris. What is 2 + 2? 4.",
    "Translate to French: good morning -> bonjour, thank you -> merci.",
    "Summarize the ticket: the customer cannot log in after a password reset.",
    "billing bug other spam ham yes no true false 0 1 2 3 4 5 6 7 8 9",
)

REVIEWS: Final = (
    ("The product arrived on time and works perfectly.", "positive"),
    ("Terrible service, the package was broken.", "negative"),
    ("I love it, thank you!", "positive"),
    ("Nobody answered my ticket.", "negative"),
    ("Good morning, it works.", "positive"),
    ("The customer cannot log in.", "negative"),
)


def tiny_examples(
    n: int = 4, *, system: str = "Classify the sentiment of the review."
) -> list[Example]:
    """``n`` sentiment examples (cycling through ``REVIEWS``): small enough to memorize."""
    return [
        Example(
            request_id=f"tiny-{i}",
            messages=[
                {"role": "system", "content": system},
                {"role": "user", "content": REVIEWS[i % len(REVIEWS)][0]},
            ],
            completion=REVIEWS[i % len(REVIEWS)][1],
            group=f"user-{i}",
            label=REVIEWS[i % len(REVIEWS)][1],
        )
        for i in range(n)
    ]


def tiny_tokenizer(texts: Iterable[str] = (), vocab_size: int = 512) -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer trained here on ``CORPUS`` and ``texts``, with a chat template."""
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator([*CORPUS, *texts], trainer=trainer)
    tokenizer = PreTrainedTokenizerFast(  # type: ignore[no-untyped-call]
        tokenizer_object=bpe,
        bos_token="<|im_start|>",
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        unk_token="<|endoftext|>",
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def tiny_model(tokenizer: PreTrainedTokenizerFast, *, seed: int = 0) -> LlamaForCausalLM:
    """A randomly initialised (seeded) 2-layer Llama sized to ``tokenizer``'s vocabulary."""
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=2048,
        tie_word_embeddings=True,
        # Ten times Llama's 0.02: the tied output layer then gives logits of a useful scale, and
        # LoRA alone memorizes a handful of examples in tens of steps.
        initializer_range=0.2,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config)
    model.train(False)
    return model


def save_tiny(
    directory: str | Path, texts: Iterable[str] = (), *, seed: int = 0
) -> tuple[LlamaForCausalLM, PreTrainedTokenizerFast]:
    """Build a tiny tokenizer and model and save both as a model directory; return them."""
    tokenizer = tiny_tokenizer(texts)
    model = tiny_model(tokenizer, seed=seed)
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return model, tokenizer
