"""The student server over real sockets, with the real ``lorax`` and ``openai`` clients.

The base is the tiny model of ``trainer.tiny``; two adapters with different (seeded random)
LoRA weights are published to a ``file://`` store, so each answers differently. The last
tests leave long requests behind (closed connections, a shutdown, SIGTERM) and check that
the engine lets go of them at once.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import torch
from lorax import AsyncClient, Client
from lorax.errors import GenerationError
from openai import OpenAI

from tests.fake_teacher import wait_for
from trainer.config import TrainConfig
from trainer.model import attach_lora, load_base, resolve_base, save_adapter
from trainer.publish import publish
from trainer.serve import create_app, load_student_settings
from trainer.serve.adapters import AdapterFetcher
from trainer.serve.app import StudentServer
from trainer.serve.errors import AdapterUnavailable
from trainer.tiny import save_tiny

# lorax-client 0.6.3 serializes its requests with pydantic's deprecated ``.dict()``.
pytestmark = [
    pytest.mark.filterwarnings(
        "ignore:The `dict` method is deprecated:pydantic.warnings.PydanticDeprecatedSince20"
    ),
    pytest.mark.usefixtures("one_torch_thread"),
]

PROMPT = "Classify the sentiment of the review: I love it!"


@dataclass(frozen=True)
class World:
    root: Path
    base: Path
    store: str
    a: str  # adapter ids
    b: str

    def publish_copy(self, source: str, *, broken: bool = False) -> str:
        """A new version of ``source``'s adapter (its weights garbled if ``broken``)."""
        folder = self.root / f"copy-{time.monotonic_ns()}"
        shutil.copytree(self.root / "adapters" / source, folder)
        if broken:
            (folder / "adapter_model.safetensors").write_bytes(b"not safetensors")
        published = asyncio.run(publish(self.store, "sentiment", folder, {}))
        (self.root / "adapters" / published.adapter_id).mkdir(parents=True)
        shutil.copytree(folder, self.root / "adapters" / published.adapter_id, dirs_exist_ok=True)
        return published.adapter_id


def _adapter(base: Path, out: Path, seed: int) -> Path:
    model, _ = load_base(resolve_base(str(base)))
    peft = attach_lora(model, TrainConfig(lora_r=4, lora_alpha=8, lora_dropout=0.0, seed=seed))
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in peft.named_parameters():
            if "lora_B" in name:  # B starts at zero: give the adapter an effect of its own
                param.copy_(torch.randn(param.shape, generator=generator) * 0.5)
    return save_adapter(peft, out)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> World:
    root = tmp_path_factory.mktemp("student")
    save_tiny(root / "base")
    store = f"file://{root / 'store'}"
    ids = []
    for seed in (1, 2):
        folder = _adapter(root / "base", root / f"trained-{seed}", seed)
        adapter_id = asyncio.run(publish(store, "sentiment", folder, {})).adapter_id
        shutil.copytree(folder, root / "adapters" / adapter_id)
        ids.append(adapter_id)
    return World(root, root / "base", store, ids[0], ids[1])


class RunningStudent:
    """The student app served by uvicorn in a background thread."""

    def __init__(self, world: World, **settings: Any) -> None:
        config = load_student_settings(env={}, base_model=str(world.base), store=world.store)
        app = create_app(config.model_copy(update=settings))
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{sock.getsockname()[1]}"
        self.server = StudentServer(app, http="httptools", log_level="warning", access_log=False)
        self._thread = threading.Thread(target=self.server.run, kwargs={"sockets": [sock]})
        self._thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if time.monotonic() > deadline or not self._thread.is_alive():
                raise RuntimeError("student server did not start")
            time.sleep(0.01)
        self.client = Client(self.url)

    def info(self) -> dict[str, Any]:
        student: dict[str, Any] = httpx.get(self.url + "/info").json()["student"]
        return student

    def text(self, adapter: str | None, prompt: str = PROMPT, **kw: Any) -> str:
        kw.setdefault("max_new_tokens", 8)
        text: str = self.client.generate(prompt, adapter_id=adapter, **kw).generated_text
        return text

    @property
    def running(self) -> bool:
        return self._thread.is_alive()

    def stop(self) -> None:
        self.server.should_exit = True
        self._thread.join(30)


@pytest.fixture
def start(world: World) -> Iterator[Callable[..., RunningStudent]]:
    started: list[RunningStudent] = []

    def make(**settings: Any) -> RunningStudent:
        started.append(RunningStudent(world, **settings))
        return started[-1]

    yield make
    for server in started:
        server.stop()


@pytest.fixture(scope="module")
def student(world: World) -> Iterator[RunningStudent]:
    server = RunningStudent(world, max_adapters=4)
    yield server
    server.stop()


def test_generate_with_the_lorax_client(student: RunningStudent, world: World) -> None:
    """generate answers with LoRAX's details: reason, token counts, one entry per token."""
    out = student.client.generate(PROMPT, adapter_id=world.a, max_new_tokens=6)
    assert out.details is not None and out.details.finish_reason == "length"
    assert out.details.generated_tokens == 6 == len(out.details.tokens)
    assert out.details.seed is None  # greedy
    assert out.generated_text == "".join(t.text for t in out.details.tokens if not t.special)


def test_stream_tokens_add_up_to_the_answer(student: RunningStudent, world: World) -> None:
    """generate_stream's token texts concatenate to its generated_text and to generate's."""
    events = list(student.client.generate_stream(PROMPT, adapter_id=world.a, max_new_tokens=10))
    final = events[-1]
    assert final.generated_text is not None and final.details is not None
    assert all(e.generated_text is None for e in events[:-1])
    assert "".join(e.token.text for e in events if not e.token.special) == final.generated_text
    assert final.generated_text == student.text(world.a, max_new_tokens=10)


async def test_async_client_answers_like_the_sync_one(
    student: RunningStudent, world: World
) -> None:
    """The async client's generate and generate_stream give the sync client's greedy answer."""
    client = AsyncClient(student.url)
    out = await client.generate(PROMPT, adapter_id=world.b, max_new_tokens=8)
    events = [e async for e in client.generate_stream(PROMPT, adapter_id=world.b, max_new_tokens=8)]
    expected = await asyncio.to_thread(student.text, world.b)
    assert out.generated_text == expected == events[-1].generated_text
    assert "".join(e.token.text for e in events if not e.token.special) == expected


def test_adapters_answer_with_their_own_weights(student: RunningStudent, world: World) -> None:
    """Alternating adapters each keep their own answer, and both differ from the base."""
    answers = [student.text(a) for a in (world.a, world.b, None, world.a, world.b, None)]
    assert answers[:3] == answers[3:]
    assert len(set(answers[:3])) == 3


def test_openai_route_applies_the_chat_template(student: RunningStudent, world: World) -> None:
    """model picks the adapter; the answer is the native answer to the templated prompt."""
    messages: Any = [{"role": "user", "content": "I love it!"}]
    client = OpenAI(base_url=student.url + "/v1", api_key="unused")
    out = client.chat.completions.create(
        model=world.a, messages=messages, max_tokens=8, temperature=0
    )
    tokenizer = load_base(resolve_base(str(world.base)))[1]
    templated = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert out.choices[0].message.content == student.text(world.a, templated)
    assert out.choices[0].finish_reason == "length"
    assert out.usage is not None and out.usage.completion_tokens == 8
    assert out.usage.prompt_tokens == len(tokenizer(templated)["input_ids"])


def test_openai_base_model_is_the_base(student: RunningStudent, world: World) -> None:
    """model "" or the base model's id answers with the base model, no adapter."""
    client = OpenAI(base_url=student.url + "/v1", api_key="unused")
    messages: Any = [{"role": "user", "content": "hi"}]
    answers = {
        client.chat.completions.create(model=model, messages=messages, max_tokens=6, temperature=0)
        .choices[0]
        .message.content
        for model in ("", str(world.base))
    }
    adapted = client.chat.completions.create(
        model=world.a, messages=messages, max_tokens=6, temperature=0
    )
    assert len(answers) == 1 and adapted.choices[0].message.content not in answers


def test_openai_unknown_model_fails_like_lorax(student: RunningStudent) -> None:
    """An unknown model is a 424 answer, or an error event in a stream the client raises."""
    client = OpenAI(base_url=student.url + "/v1", api_key="unused", max_retries=0)
    kw: Any = {"model": "sentiment/v-gone", "messages": [{"role": "user", "content": "hi"}]}
    with pytest.raises(openai.APIStatusError) as raised:
        client.chat.completions.create(**kw)
    assert raised.value.status_code == 424 and "sentiment/v-gone" in str(raised.value.body)
    with pytest.raises(openai.APIError):
        list(client.chat.completions.create(stream=True, **kw))


def test_openai_stream_matches_json(student: RunningStudent, world: World) -> None:
    """Streamed chunks add up to the JSON answer; the last chunk has the reason and usage."""
    client = OpenAI(base_url=student.url + "/v1", api_key="unused")
    kw: Any = {"model": world.b, "messages": [{"role": "user", "content": "hi"}], "temperature": 0}
    whole = client.chat.completions.create(max_tokens=6, **kw)
    chunks = list(client.chat.completions.create(max_tokens=6, stream=True, **kw))
    assert (
        "".join(c.choices[0].delta.content or "" for c in chunks)
        == whole.choices[0].message.content
    )
    assert chunks[-1].choices[0].finish_reason == "length"
    usage, expected = chunks[-1].usage, whole.usage
    assert usage is not None and expected is not None
    assert usage.total_tokens == expected.total_tokens
    assert {m.id for m in client.models.list()} >= {world.a, world.b}


def test_unknown_adapter_is_named_and_harmless(student: RunningStudent, world: World) -> None:
    """An unknown adapter is LoRAX's generation error naming it; the server goes on serving."""
    for bad in ("sentiment/v-missing", "not-an-adapter"):
        with pytest.raises(GenerationError, match=bad):
            student.client.generate(PROMPT, adapter_id=bad)
        with pytest.raises(GenerationError, match=bad):
            list(student.client.generate_stream(PROMPT, adapter_id=bad))
    response = httpx.post(
        student.url + "/generate", json={"inputs": "x", "parameters": {"adapter_id": "t/v"}}
    )
    assert response.status_code == 424 and response.json()["error_type"] == "generation"
    assert student.text(world.a) == student.text(world.a)


def test_broken_adapter_fails_alone(student: RunningStudent, world: World) -> None:
    """An adapter whose weights do not load is a named error; other adapters are untouched."""
    before = student.text(world.a)
    broken = world.publish_copy(world.a, broken=True)
    with pytest.raises(GenerationError, match="does not load"):
        student.client.generate(PROMPT, adapter_id=broken)
    assert student.text(world.a) == before
    assert broken not in student.info()["adapters"]


def test_details_on_request(student: RunningStudent, world: World) -> None:
    """decoder_input_details returns the prompt's tokens; return_k_alternatives the top ones."""
    out = student.client.generate(
        PROMPT,
        adapter_id=world.a,
        max_new_tokens=3,
        decoder_input_details=True,
        return_k_alternatives=2,
    )
    details = out.details
    assert details is not None and len(details.prefill) == details.prompt_tokens
    assert details.prefill[0].logprob is None
    assert all(p.logprob is not None and p.logprob <= 0 for p in details.prefill[1:])
    for token in details.tokens:
        assert token.alternative_tokens is not None and len(token.alternative_tokens) == 2
        assert token.alternative_tokens[0].id == token.id  # greedy takes the likeliest


def test_invalid_parameters_are_422(student: RunningStudent) -> None:
    """Out-of-range parameters are LoRAX validation errors, JSON or in the stream."""
    body = {"inputs": PROMPT, "parameters": {"top_p": 1.5}}
    response = httpx.post(student.url + "/generate", json=body)
    assert response.status_code == 422
    assert response.json() == {
        "error": "Input validation error: `top_p` must be > 0.0 and < 1.0",
        "error_type": "validation",
    }
    streamed = httpx.post(student.url + "/generate_stream", json=body)
    assert streamed.status_code == 200 and '"error_type":"validation"' in streamed.text
    assert httpx.post(student.url + "/generate", json={"parameters": {}}).status_code == 422


def test_stop_sequence_cuts_the_answer(student: RunningStudent, world: World) -> None:
    """A stop sequence ends the answer before it, in generate and generate_stream alike."""
    full = student.text(world.a, max_new_tokens=12)
    stop = full[3:6]
    out = student.client.generate(
        PROMPT, adapter_id=world.a, max_new_tokens=12, stop_sequences=[stop]
    )
    assert out.generated_text == full[: full.index(stop)]
    assert out.details is not None and out.details.finish_reason == "stop_sequence"
    events = list(
        student.client.generate_stream(
            PROMPT, adapter_id=world.a, max_new_tokens=12, stop_sequences=[stop]
        )
    )
    assert "".join(e.token.text for e in events if not e.token.special) == out.generated_text


def test_seed_makes_sampling_repeatable(student: RunningStudent, world: World) -> None:
    """Sampling with a seed repeats its answer; another seed gives another one."""
    kw: dict[str, Any] = {"temperature": 1.5, "top_k": 200, "top_p": 0.99, "max_new_tokens": 12}
    kw["repetition_penalty"] = 1.2
    first = student.client.generate(PROMPT, adapter_id=world.b, seed=3, **kw)
    assert first.details is not None and first.details.seed == 3
    assert student.text(world.b, seed=3, **kw) == first.generated_text
    assert student.text(world.b, seed=4, **kw) != first.generated_text


def test_compat_route_and_info(student: RunningStudent, world: World) -> None:
    """POST / answers a one-element list (or a stream); /info and /health describe the server."""
    body = {"inputs": PROMPT, "parameters": {"adapter_id": world.a, "max_new_tokens": 4}}
    listed = httpx.post(student.url + "/", json=body).json()
    assert isinstance(listed, list) and listed[0]["generated_text"] == student.text(
        world.a, max_new_tokens=4
    )
    streamed = httpx.post(student.url + "/", json={**body, "stream": True})
    assert streamed.headers["content-type"].startswith("text/event-stream")
    info = httpx.get(student.url + "/info").json()
    assert info["model_id"] == str(world.base) and info["model_device_type"] == "cpu"
    assert info["max_total_tokens"] == info["max_input_length"] + 1
    assert httpx.get(student.url + "/health").status_code == 200


def test_lru_evicts_and_reloads(start: Callable[..., RunningStudent], world: World) -> None:
    """With one slot, alternating adapters evict each other and reload from the local cache."""
    server = start(max_adapters=1)
    first = [server.text(a) for a in (world.a, world.b)]
    again = [server.text(a) for a in (world.a, world.b)]
    info = server.info()
    assert first == again
    assert (info["adapter_loads"], info["adapter_evictions"]) == (4, 3)
    assert info["adapter_downloads"] == 2 and info["adapters"] == [world.b]


async def test_concurrent_requests_are_batched(
    start: Callable[..., RunningStudent], world: World
) -> None:
    """Eight requests at once all get their own answer, generated in shared batches."""
    server = start()
    prompts = [f"Review {i}: the package was broken." for i in range(8)]
    alone = [await asyncio.to_thread(server.text, world.a, p) for p in prompts]
    client = AsyncClient(server.url)
    busy = client.generate_stream(PROMPT, max_new_tokens=400)  # holds the engine meanwhile
    await busy.__anext__()
    async with httpx.AsyncClient() as http:  # the event loop answers while the engine works
        assert (await http.get(server.url + "/health")).status_code == 200
    together = await asyncio.gather(
        *(client.generate(p, adapter_id=world.a, max_new_tokens=8) for p in prompts)
    )
    _ = [e async for e in busy]
    assert [o.generated_text for o in together] == alone
    info = server.info()
    assert info["batched_requests"] >= 2 and info["max_batch_size_seen"] >= 2


async def test_first_requests_share_one_load(
    start: Callable[..., RunningStudent], world: World
) -> None:
    """Concurrent first requests for an adapter download and attach it once."""
    server = start()
    fresh = await asyncio.to_thread(world.publish_copy, world.b)
    client = AsyncClient(server.url)
    outs = await asyncio.gather(
        *(client.generate(PROMPT, adapter_id=fresh, max_new_tokens=4) for _ in range(6))
    )
    info = server.info()
    assert len({o.generated_text for o in outs}) == 1
    assert (info["adapter_downloads"], info["adapter_loads"]) == (1, 1)


async def test_fetches_share_one_download(world: World, tmp_path: Path) -> None:
    """Concurrent fetches of one adapter share a single download into the cache."""
    fetcher = AdapterFetcher(world.store, tmp_path)
    got = await asyncio.gather(*(fetcher.fetch(world.a) for _ in range(6)))
    assert fetcher.downloads == 1 and len({g.path for g in got}) == 1
    assert (got[0].path / "adapter_model.safetensors").is_file()


async def test_failed_fetch_is_not_remembered(world: World, tmp_path: Path) -> None:
    """An adapter missing at first is fetched once it has been published."""
    fetcher = AdapterFetcher(world.store, tmp_path)
    with pytest.raises(AdapterUnavailable, match="sentiment/vlater"):
        await fetcher.fetch("sentiment/vlater")
    published = Path(world.store.removeprefix("file://")) / "adapters" / world.a
    target = published.parent / "vlater"
    await asyncio.to_thread(shutil.copytree, published, target)
    assert (await fetcher.fetch("sentiment/vlater")).path.is_dir()


# --- clients that leave, and shutdown -------------------------------------------------------

# Answers far longer than the tests wait: unless they are cut short, the engine stays busy.
LONG_NATIVE: dict[str, Any] = {
    "inputs": PROMPT, "parameters": {"max_new_tokens": 2000, "ignore_eos_token": True}
}  # fmt: skip
LONG_CHAT: dict[str, Any] = {
    "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2000, "ignore_eos_token": True
}  # fmt: skip
LONG_REQUESTS: list[tuple[str, dict[str, Any]]] = [
    ("/generate", LONG_NATIVE),
    ("/", LONG_NATIVE),
    ("/v1/chat/completions", LONG_CHAT),
    ("/generate_stream", LONG_NATIVE),
    ("/", {**LONG_NATIVE, "stream": True}),
    ("/v1/chat/completions", {**LONG_CHAT, "stream": True}),
]


def send_raw(url: str, path: str, body: dict[str, Any]) -> socket.socket:
    """POST ``body`` on a connection of its own, leaving the answer unread."""
    host, port = url.removeprefix("http://").split(":")
    payload = json.dumps(body).encode()
    head = (
        f"POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(payload)}\r\n\r\n"
    )
    sock = socket.create_connection((host, int(port)), timeout=10)
    sock.sendall(head.encode() + payload)
    return sock


def in_engine(url: str) -> int:
    """Requests the student's engine is generating or has waiting."""
    student = httpx.get(url + "/info", timeout=5).json()["student"]
    return int(student["running"]) + int(student["waiting"])


def test_clients_that_leave_cancel_their_generation(
    start: Callable[..., RunningStudent],
) -> None:
    """Closed connections, whole answers and streams, on every route, leave the engine idle."""
    server = start()
    connections = [send_raw(server.url, path, body) for path, body in LONG_REQUESTS]
    try:
        assert wait_for(lambda: in_engine(server.url) == len(LONG_REQUESTS), 10)
    finally:
        for connection in connections:
            connection.close()
    assert wait_for(lambda: in_engine(server.url) == 0, 2)


def test_stop_ends_running_generations(start: Callable[..., RunningStudent]) -> None:
    """Shutting down answers running requests with LoRAX's error at once; streams end too."""
    server = start()
    clients, answers = ask_long(server.url)
    assert wait_for(lambda: in_engine(server.url) == len(LONG_REQUESTS), 10)
    began = time.monotonic()
    server.stop()
    for client in clients:
        client.join(10)
    assert time.monotonic() - began < 3 and not server.running
    assert_shut_down(answers)


def ask_long(url: str) -> tuple[list[threading.Thread], list[httpx.Response]]:
    """Every long request, each from a thread of its own; the answers as they come."""
    answers: list[httpx.Response] = []

    def ask(path: str, body: dict[str, Any]) -> None:
        answers.append(httpx.post(url + path, json=body, timeout=30))

    clients = [threading.Thread(target=ask, args=request) for request in LONG_REQUESTS]
    for client in clients:
        client.start()
    return clients, answers


def assert_shut_down(answers: list[httpx.Response]) -> None:
    """Every answer is LoRAX's "shutting down" error: a 500, or a stream's last event."""
    assert len(answers) == len(LONG_REQUESTS)
    shutting_down = {"error": "the server is shutting down", "error_type": "incomplete_generation"}
    for answer in answers:
        if answer.headers["content-type"].startswith("text/event-stream"):
            last = json.loads(answer.text.strip().split("\n\n")[-1].removeprefix("data: "))
        else:
            assert answer.status_code == 500
            last = answer.json()
        assert last == shutting_down


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.mark.slow
def test_sigterm_exits_within_seconds(world: World) -> None:
    """``protege student`` on SIGTERM answers its running requests and exits in seconds."""
    url = f"http://127.0.0.1:{free_port()}"
    command = [sys.executable, "-m", "protege.cli", "student", "--base-model", str(world.base),
               "--store", world.store, "--port", url.rsplit(":", 1)[1]]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        assert wait_for(lambda: _healthy(url), 60), "the student server did not come up"
        clients, answers = ask_long(url)
        assert wait_for(lambda: in_engine(url) == len(LONG_REQUESTS), 10)
        began = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(10) in (0, -signal.SIGTERM)  # uvicorn re-raises the signal on exit
        assert time.monotonic() - began < 5
        for client in clients:
            client.join(10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    assert_shut_down(answers)


def _healthy(url: str) -> bool:
    try:
        return httpx.get(url + "/health", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False
