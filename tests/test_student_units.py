"""The student server's pure parts: validation, sampling rules, text, stops, batching, ids."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Any

import pytest
import torch

from trainer.serve.adapters import parse_adapter_id
from trainer.serve.decoding import Detokenizer, RowState, find_stop, held_back
from trainer.serve.engine import take_batch
from trainer.serve.errors import AdapterUnavailable, InvalidInput, StudentError
from trainer.serve.protocol import (
    GenerationSpec,
    Limits,
    Parameters,
    problems,
    sampling_of,
    spec_of,
)
from trainer.serve.results import Answer, Event, Step
from trainer.serve.sampling import RowSampler
from trainer.tiny import tiny_tokenizer

LIMITS = Limits(max_input_length=99, max_total_tokens=100, max_stop_sequences=2)
STORE = "s3://bucket/prefix"


@pytest.fixture(scope="module")
def tokenizer() -> Any:
    return tiny_tokenizer()


@pytest.mark.parametrize(
    ("fields", "stream", "message"),
    [
        ({}, False, None),
        ({"top_p": 1.0}, False, "`top_p` must be > 0.0 and < 1.0"),
        ({"temperature": -0.1}, False, "`temperature` must be non-negative"),
        ({"top_k": 0}, False, "`top_k` must be strictly positive"),
        ({"repetition_penalty": 0.0}, False, "`repetition_penalty` must be strictly positive"),
        ({"max_new_tokens": 0}, False, "`max_new_tokens` must be strictly positive"),
        ({"stop": ["a", "b", "c"]}, False, "`stop` supports up to 2 stop sequences. Given: 3"),
        ({"best_of": 2}, False, "`best_of` != 1 is not allowed for this endpoint"),
        ({"best_of": 2}, True, "`best_of` != 1 is not supported when `stream` == True"),
        (
            {"decoder_input_details": True},
            True,
            "`decoder_input_details` == true is not supported when streaming tokens",
        ),
        ({"merged_adapters": {"ids": ["a"]}}, False, "`merged_adapters` is not supported"),
    ],
)
def test_parameter_problems(fields: dict[str, Any], stream: bool, message: str | None) -> None:
    """Parameters earn LoRAX's validation messages; valid ones earn none."""
    found = problems(Parameters(**fields), LIMITS, stream=stream)
    if message is None:
        assert found == []
    else:
        assert found and found[0].startswith(message)


@pytest.mark.parametrize(
    ("fields", "samples"),
    [
        ({}, False),
        ({"do_sample": True}, True),
        ({"temperature": 0.7}, True),
        ({"temperature": 1.0}, False),
        ({"temperature": 0.0, "do_sample": True}, False),
        ({"top_k": 5}, True),
        ({"top_p": 0.9}, True),
        ({"typical_p": 0.5}, True),
        ({"repetition_penalty": 1.3}, False),
    ],
)
def test_sampling_follows_lorax(fields: dict[str, Any], samples: bool) -> None:
    """A request samples when do_sample or a warper is set, and never at temperature 0."""
    assert sampling_of(Parameters(**fields), seed=1).do_sample is samples


def test_spec_truncates_and_fills_max_new_tokens() -> None:
    """truncate keeps the last tokens; without max_new_tokens the answer may fill the context."""
    spec = spec_of(Parameters(truncate=3), [1, 2, 3, 4, 5], LIMITS, seed=0)
    assert spec.prompt_ids == (3, 4, 5) and spec.max_new_tokens == 97


@pytest.mark.parametrize(
    ("fields", "length", "message"),
    [
        ({"max_new_tokens": 60}, 50, "`inputs` tokens + `max_new_tokens` must be <= 100"),
        ({}, 100, "`inputs` must have less than 99 tokens. Given: 100"),
    ],
)
def test_spec_refuses_what_does_not_fit(fields: dict[str, Any], length: int, message: str) -> None:
    """An input that leaves no room for the answer is a validation error naming the limit."""
    with pytest.raises(InvalidInput, match=message.replace("`", ".").replace("+", r"\+")):
        spec_of(Parameters(**fields), list(range(length)), LIMITS, seed=0)


@pytest.mark.parametrize(
    ("text", "stops", "start", "found", "held"),
    [
        ("hello world", ["wor"], 0, 6, 0),
        ("hello world", ["xyz"], 0, None, 0),
        ("hello wo", ["world"], 0, None, 2),
        ("hello w", ["xw", "w!"], 0, None, 1),
        ("ab ab", ["ab"], 1, 3, 0),
        ("ab a", ["ab"], 1, None, 1),
        ("abc", [""], 0, None, 0),
    ],
)
def test_stop_search(text: str, stops: list[str], start: int, found: int | None, held: int) -> None:
    """Stops are found from a position on; a text end that may grow into one is held back."""
    assert find_stop(text, stops, start) == found
    assert held_back(text, stops) == held


def test_detokenizer_deltas_add_up(tokenizer: Any) -> None:
    """Token by token, the text deltas add up to the whole decode, split characters included."""
    text = "Bonjour, ça va? Très bien ✓ — merci"
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    detok = Detokenizer(tokenizer)
    deltas = [detok.push(i) for i in ids]
    assert "".join(deltas) + detok.flush() == tokenizer.decode(ids)
    assert "" in deltas  # some token ended inside a multi-byte character


@dataclass
class Feed:
    """Drives a ``RowState`` with forced tokens and records what it emits."""

    row: RowState
    events: list[Event | StudentError]

    def push(self, token_id: int, vocab: int) -> None:
        scores = torch.full((vocab,), -10.0)
        scores[token_id] = 10.0
        ids = torch.tensor(self.row.spec.prompt_ids)
        assert self.row.choose(ids, scores) == token_id
        self.row.accept(token_id)

    def streamed(self) -> str:
        """The texts of the emitted non-special tokens, concatenated."""
        tokens = [e.token for e in self.events if not isinstance(e, StudentError)]
        return "".join(t.text for t in tokens if not t.special)


def feed(tokenizer: Any, **spec: Any) -> Feed:
    events: list[Event | StudentError] = []
    fields = {"prompt_ids": (5, 6), "max_new_tokens": 50, **spec}
    fields["sampling"] = sampling_of(Parameters(), seed=0)
    row = RowState(
        GenerationSpec(**fields),
        events.append,
        tokenizer,
        special_ids=set(tokenizer.all_special_ids),
        eos_ids={tokenizer.eos_token_id},
        device=torch.device("cpu"),
    )
    return Feed(row, events)


def run(tokenizer: Any, text: str, end: list[int], **spec: Any) -> Feed:
    f = feed(tokenizer, **spec)
    for token_id in [*tokenizer(text, add_special_tokens=False)["input_ids"], *end]:
        if f.row.done:
            break
        f.push(token_id, len(tokenizer))
    return f


def test_stop_sequence_is_cut_and_never_streamed(tokenizer: Any) -> None:
    """The answer ends before the stop sequence, and no token text ever contained any of it."""
    f = run(tokenizer, "The product arrived on time", [], stop=("on time",))
    answer = f.events[-1]
    assert isinstance(answer, Answer) and answer.finish_reason == "stop_sequence"
    assert answer.text == "The product arrived "
    assert f.streamed() == answer.text


def test_eos_ends_the_answer(tokenizer: Any) -> None:
    """An end-of-sequence token ends the answer; its own text is not part of the answer."""
    f = run(tokenizer, "positive", [tokenizer.eos_token_id])
    answer = f.events[-1]
    assert isinstance(answer, Answer) and answer.finish_reason == "eos_token"
    assert answer.text == "positive" and answer.token.special
    assert all(isinstance(e, Step) for e in f.events[:-1])


def test_length_ends_the_answer(tokenizer: Any) -> None:
    """After max_new_tokens tokens the answer ends with finish reason length."""
    f = run(tokenizer, "The product arrived on time and works perfectly", [], max_new_tokens=3)
    answer = f.events[-1]
    assert isinstance(answer, Answer) and answer.finish_reason == "length"
    assert answer.generated_tokens == 3 == len(f.events) == len(answer.tokens)


def test_held_back_text_goes_out_with_the_last_token(tokenizer: Any) -> None:
    """Text held back as a possible stop sequence is sent with the last token when none comes."""
    f = run(tokenizer, "hello wor", [tokenizer.eos_token_id], stop=("world",))
    answer = f.events[-1]
    assert isinstance(answer, Answer) and answer.text == "hello wor"
    assert f.streamed() == "hello wor"


def test_seeded_sampling_repeats() -> None:
    """A sampler draws the same tokens for the same seed, and others for another seed."""
    scores = torch.zeros(512)
    context = torch.tensor([1, 2, 3])

    def draws(seed: int) -> list[int]:
        sampler = RowSampler(sampling_of(Parameters(do_sample=True), seed), 0, torch.device("cpu"))
        return [sampler.choose(context, scores).token_id for _ in range(8)]

    assert draws(7) == draws(7)
    assert draws(7) != draws(8)


@dataclass(frozen=True)
class Waiting:
    name: str
    adapter_key: str | None


def test_batches_take_the_oldest_adapter_first() -> None:
    """A batch is the oldest job's adapter, its jobs in order, up to the limit; the rest wait."""
    waiting = deque(
        Waiting(n, a) for n, a in [("1", "a"), ("2", None), ("3", "a"), ("4", "a"), ("5", "a")]
    )
    assert [j.name for j in take_batch(waiting, 3)] == ["1", "3", "4"]
    assert [j.name for j in waiting] == ["2", "5"]
    assert [j.name for j in take_batch(waiting, 3)] == ["2"]


@pytest.mark.parametrize(
    ("raw", "parsed"),
    [
        ("tickets/v1", ("tickets", "v1")),
        (f"{STORE}/adapters/tickets/v2/", ("tickets", "v2")),
        ("tickets", None),
        ("a/b/c", None),
        ("../etc/passwd", None),
        ("tickets/..", None),
    ],
)
def test_adapter_ids(raw: str, parsed: tuple[str, str] | None) -> None:
    """Adapters are <task>/<version> or their store URI; anything else is refused by name."""
    if parsed is None:
        with pytest.raises(AdapterUnavailable, match=raw.replace(".", r"\.")):
            parse_adapter_id(raw, STORE)
    else:
        assert parse_adapter_id(raw, STORE) == parsed
