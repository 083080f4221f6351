"""Examples to batches: assistant-only labels, lengths, packing and its isolation, batching."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from trainer.batches import (
    IGNORE,
    Encoded,
    block_causal_mask,
    collate,
    encode,
    encode_all,
    end_of_turn_ids,
    epoch_plan,
    fit,
    pack,
    plan_batches,
    prompt_ids,
    subsample,
)
from trainer.config import TrainConfig
from trainer.examples import Example
from trainer.step import TokenLoss
from trainer.tiny import tiny_examples, tiny_model, tiny_tokenizer

COMPLETIONS = [
    "positive",
    " leading space",
    '{"name": "Ada", "city": "London"}',
    "line one\nline two\n",
    "ünïcödé — 東京 🙂",
    "trailing spaces  ",
]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def tokenizer():  # type: ignore[no-untyped-def]
    return tiny_tokenizer()


def _example(completion: str, user: str = "Extract the fields.") -> Example:
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": user}]
    return Example(request_id="r", messages=messages, completion=completion, group="g")


def _template_ids(tokenizer, example: Example) -> list[int]:  # type: ignore[no-untyped-def]
    turn = [*example.messages, {"role": "assistant", "content": example.completion}]
    text = tokenizer.apply_chat_template(turn, tokenize=False)
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


@pytest.mark.parametrize("completion", COMPLETIONS)
def test_tokens_equal_the_template_for_the_whole_conversation(tokenizer, completion) -> None:  # type: ignore[no-untyped-def]
    """Prompt and answer tokenized apart equal the template's tokens through <|im_end|>."""
    example = _example(completion)
    encoded = encode(tokenizer, example, end_of_turn_ids(tokenizer))
    full = _template_ids(tokenizer, example)
    assert list(encoded.input_ids) == full[: len(encoded)]
    assert tokenizer.decode(full[len(encoded) :]) == "\n"  # ChatML's newline, left out


@pytest.mark.parametrize("completion", COMPLETIONS)
def test_labels_cover_exactly_the_answer_and_end_of_turn(tokenizer, completion) -> None:  # type: ignore[no-untyped-def]
    """Labels are -100 on every prompt token and equal the tokens of answer + <|im_end|>."""
    example = _example(completion)
    encoded = encode(tokenizer, example, end_of_turn_ids(tokenizer))
    prompt = prompt_ids(tokenizer, example.messages)
    labels = encoded.labels
    assert labels[: len(prompt)] == [IGNORE] * len(prompt)
    assert list(encoded.input_ids[: len(prompt)]) == prompt
    answer = labels[len(prompt) :]
    assert IGNORE not in answer
    assert answer[-1] == tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert tokenizer.decode(answer) == completion + "<|im_end|>"


def test_an_answer_starting_with_a_newline_keeps_the_prompt_tokens(tokenizer) -> None:  # type: ignore[no-untyped-def]
    """The prompt stays the generation prompt even where the template would merge newlines."""
    example = _example("\n\nindented answer")
    encoded = encode(tokenizer, example, end_of_turn_ids(tokenizer))
    prompt = prompt_ids(tokenizer, example.messages)
    assert list(encoded.input_ids[: encoded.prompt_len]) == prompt
    assert (
        tokenizer.decode(encoded.input_ids[encoded.prompt_len :]) == "\n\nindented answer<|im_end|>"
    )


def test_end_of_turn_is_the_first_special_token_after_the_answer(tokenizer) -> None:  # type: ignore[no-untyped-def]
    """For ChatML the end of turn is <|im_end|> alone, not the newline after it."""
    assert end_of_turn_ids(tokenizer) == [tokenizer.convert_tokens_to_ids("<|im_end|>")]


def test_text_content_parts_are_joined(tokenizer) -> None:  # type: ignore[no-untyped-def]
    """OpenAI content parts ([{type: text, text}]) tokenize like their text joined by a newline."""
    parts = [
        {"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]}
    ]
    assert prompt_ids(tokenizer, parts) == prompt_ids(
        tokenizer, [{"role": "user", "content": "a\nb"}]
    )


@pytest.mark.parametrize(
    ("overlong", "length", "prompt_len", "expected"),
    [
        ("drop", 10, 6, (10, 6)),  # fits: unchanged
        ("drop", 11, 6, None),
        ("truncate_prompt", 11, 6, (10, 5)),  # one prompt token cut, from the left
        ("truncate_prompt", 20, 9, None),  # the answer alone (11) is over seq_len
        ("truncate_prompt", 20, 10, None),  # the answer alone (10) fills seq_len
    ],
)
def test_fit_drops_or_cuts_the_prompt_from_the_left(overlong, length, prompt_len, expected) -> None:  # type: ignore[no-untyped-def]
    """Over-long examples are dropped, or lose their oldest prompt tokens, never answer ones."""
    encoded = Encoded(tuple(range(length)), prompt_len)
    fitted = fit(encoded, 10, overlong)
    if expected is None:
        assert fitted is None
        return
    assert fitted is not None
    assert (len(fitted), fitted.prompt_len) == expected
    assert fitted.input_ids == encoded.input_ids[length - len(fitted) :]


def test_encode_all_counts_the_dropped(tokenizer) -> None:  # type: ignore[no-untyped-def]
    """Examples longer than seq_len are left out and counted."""
    examples = [_example("short"), _example("long " * 200)]
    kept, dropped = encode_all(
        tokenizer, examples, TrainConfig(seq_len=64, max_tokens_per_batch=64)
    )
    assert (len(kept), dropped) == (1, 1)


def test_subsample_is_seeded_nested_and_ordered() -> None:
    """A smaller data fraction is a subset of a larger one, and order is kept."""
    items = list(range(100))
    quarter, half = subsample(items, 0.25, seed=3), subsample(items, 0.5, seed=3)
    assert len(quarter) == 25 and len(half) == 50
    assert set(quarter) <= set(half)
    assert quarter == sorted(quarter)
    assert subsample(items, 0.25, seed=3) == quarter
    assert subsample(items, 0.25, seed=4) != quarter


def test_pack_fills_rows_within_capacity() -> None:
    """Every index lands in exactly one row, and no row exceeds the capacity."""
    lengths = [70, 50, 40, 30, 30, 20, 10, 100, 5]
    rows = pack(lengths, 100)
    assert sorted(i for row in rows for i in row) == list(range(len(lengths)))
    assert all(sum(lengths[i] for i in row) <= 100 for row in rows)
    assert len(rows) == 4  # 355 tokens: the fewest rows of 100 possible


def test_plan_batches_respects_the_token_budget() -> None:
    """Rows x longest row stays within the budget; long rows go together."""
    lengths = [10, 100, 20, 90, 30, 80, 40]
    batches = plan_batches(lengths, 200)
    assert sorted(i for b in batches for i in b) == list(range(len(lengths)))
    assert all(len(b) * max(lengths[i] for i in b) <= 200 for b in batches)
    assert batches[0] == [1, 3]


def test_epoch_plan_is_seeded_per_epoch() -> None:
    """The same seed and epoch give the same plan; another epoch reshuffles."""
    lengths = [i % 37 + 5 for i in range(200)]
    cfg = TrainConfig(seq_len=64, max_tokens_per_batch=256)
    assert epoch_plan(lengths, cfg, 0) == epoch_plan(lengths, cfg, 0)
    assert epoch_plan(lengths, cfg, 0) != epoch_plan(lengths, cfg, 1)
    rows = [row for batch in epoch_plan(lengths, cfg, 0) for row in batch]
    assert sorted(i for row in rows for i in row) == list(range(200))
    assert all(sum(lengths[i] for i in row) <= 64 for row in rows)


def test_block_causal_mask_is_block_diagonal() -> None:
    """Tokens attend causally within their own example only; padding only to padding."""
    mask = block_causal_mask(torch.tensor([[0, 0, 1, 1, 1, -1]]))
    expected = torch.tensor(
        [
            [1, 0, 0, 0, 0, 0],
            [1, 1, 0, 0, 0, 0],
            [0, 0, 1, 0, 0, 0],
            [0, 0, 1, 1, 0, 0],
            [0, 0, 1, 1, 1, 0],
            [0, 0, 0, 0, 0, 1],
        ],
        dtype=torch.bool,
    )
    assert mask.shape == (1, 1, 6, 6)
    assert torch.equal(mask[0, 0], expected)


def test_collate_restarts_positions_per_example() -> None:
    """Position ids restart at 0 at each example; padding is unlabelled and not counted."""
    a, b, c = Encoded((5, 6, 7), 1), Encoded((8, 9), 1), Encoded((4,), 0)
    batch = collate([[a, b], [c]], pad_id=0)
    assert batch.position_ids.tolist() == [[0, 1, 2, 0, 1], [0, 0, 0, 0, 0]]
    assert batch.input_ids.tolist() == [[5, 6, 7, 8, 9], [4, 0, 0, 0, 0]]
    assert batch.labels.tolist() == [[IGNORE, 6, 7, IGNORE, 9], [4] + [IGNORE] * 4]
    assert batch.tokens == 6
    assert batch.attention_mask is not None and batch.attention_mask.shape == (2, 1, 5, 5)


def test_varlen_collate_is_one_flat_row_without_mask() -> None:
    """For flash attention a batch is one row, positions restarting, no mask, no padding."""
    batch = collate([[Encoded((5, 6, 7), 1)], [Encoded((8, 9), 1)]], pad_id=0, varlen=True)
    assert batch.attention_mask is None
    assert batch.position_ids.tolist() == [[0, 1, 2, 0, 1]]
    assert batch.tokens == 5


@pytest.mark.parametrize("attention", ["sdpa", "eager"])
@pytest.mark.parametrize("full_logits", [False, True])
def test_packed_loss_equals_unpacked_loss(tokenizer, attention, full_logits, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """Each example's per-token loss is the same packed with others as alone (float32)."""
    if full_logits:
        monkeypatch.setattr(TokenLoss, "_HEAD_ONLY_WHERE_LABELLED", frozenset())
    model = tiny_model(tokenizer)
    model.config._attn_implementation = attention
    examples = [
        dataclasses.replace(e, completion=e.completion * (i + 1))
        for i, e in enumerate(tiny_examples(5))
    ]
    encoded, _ = encode_all(tokenizer, examples, TrainConfig(seq_len=256, max_tokens_per_batch=256))
    loss = TokenLoss(model)
    rows = [encoded[:3], encoded[3:]]  # two rows of different length: one is padded
    with torch.no_grad():
        packed = loss(collate(rows, tokenizer.pad_token_id), "cpu")
        alone = [loss(collate([[e]], tokenizer.pad_token_id), "cpu")[0] for e in encoded]
    k = 0
    for r, row in enumerate(rows):
        start = 0
        for e in row:
            # the prediction of an example's last token is of the next example: not its own
            got = packed[r, start : start + len(e) - 1]
            torch.testing.assert_close(got, alone[k], atol=1e-5, rtol=0)
            assert alone[k].sum() > 0
            start += len(e)
            k += 1
