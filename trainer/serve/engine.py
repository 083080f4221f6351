"""The one thread that owns the model: it takes waiting requests in batches and generates them.

Requests (``Job``s) wait in a queue. The engine takes the oldest waiting job together with
the other waiting jobs for the same adapter (up to ``max_batch_size``), attaches that adapter
if it is not (``AdapterSlots``), and generates the batch in one left-padded ``generate`` call.
Every request of a batch keeps its own parameters and grammar (``trainer.serve.decoding``): one
hook chooses each row's token, another tells each row's client and ends the row when it is due,
so a short answer goes out as soon as it is complete, not when the batch ends. Streaming and
non-streaming requests are batched alike. A cancelled job (its client left, or the server is
shutting down) leaves the queue, or its row stops at the next step. Switching adapters and
generating happen on this thread only; the event loop only queues jobs and reads their events.
"""

from __future__ import annotations

import asyncio
import threading
from collections import deque
from collections.abc import Hashable, Sequence
from dataclasses import asdict, dataclass
from typing import Any, Protocol, TypeVar

import structlog
import torch
from transformers import (
    GenerationConfig,
    LogitsProcessor,
    LogitsProcessorList,
    StoppingCriteria,
    StoppingCriteriaList,
)

from trainer.serve.adapters import AdapterSlots, LocalAdapter
from trainer.serve.constrained import Constraint
from trainer.serve.decoding import RowState
from trainer.serve.errors import GenerationFailed, IncompleteGeneration, Overloaded, StudentError
from trainer.serve.protocol import GenerationSpec
from trainer.serve.results import Answer, Event, PrefillToken

log = structlog.get_logger("student")

Message = Event | StudentError


class Job:
    """One request on its way through the engine; its events arrive on the event loop."""

    def __init__(
        self,
        spec: GenerationSpec,
        adapter: LocalAdapter | None,
        loop: asyncio.AbstractEventLoop,
        constraint: Constraint | None = None,
    ) -> None:
        self.spec = spec
        self.adapter = adapter
        self.constraint = constraint  # the request's own grammar state (response_format)
        self.cancelled = False  # set by the event loop: nobody waits for the answer any more
        self._loop = loop
        self._messages: asyncio.Queue[Message] = asyncio.Queue()

    @property
    def adapter_key(self) -> str | None:
        return None if self.adapter is None else self.adapter.adapter_id

    def emit(self, message: Message) -> None:
        """Hand an event (or the error that ends the job) to the event loop; any thread."""
        try:
            self._loop.call_soon_threadsafe(self._messages.put_nowait, message)
        except RuntimeError:  # the loop is closed: nobody can listen any more
            self.cancelled = True

    def cancel(self) -> None:
        self.cancelled = True

    async def next(self, within: float | None = None) -> Event | None:
        """The next event; None when ``within`` seconds pass first. Raises the job's error."""
        try:
            message = await asyncio.wait_for(self._messages.get(), within)
        except TimeoutError:
            return None
        if isinstance(message, StudentError):
            raise message
        return message

    async def answer(self) -> Answer:
        """Wait for the complete answer (the job is cancelled if the caller stops waiting)."""
        try:
            while True:
                event = await self.next()
                if isinstance(event, Answer):
                    return event
        finally:
            self.cancel()


class _Keyed(Protocol):
    @property
    def adapter_key(self) -> Hashable: ...


K = TypeVar("K", bound=_Keyed)


def take_batch(waiting: deque[K], limit: int) -> list[K]:
    """The oldest waiting job and the next ones for its adapter, up to ``limit``, taken out."""
    key = waiting[0].adapter_key
    batch = [job for job in waiting if job.adapter_key == key][:limit]
    for job in batch:
        waiting.remove(job)
    return batch


@dataclass
class EngineStats:
    batches: int = 0  # generate calls started
    requests: int = 0  # requests generated
    batched_requests: int = 0  # requests that shared their generate call with others
    max_batch_size_seen: int = 0


class _Choose(LogitsProcessor):
    """Replaces the scores by each row's own choice, so greedy decoding picks exactly it."""

    def __init__(self, rows: Sequence[RowState], pad_id: int) -> None:
        self._rows = rows
        self._pad = pad_id

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        chosen = torch.full_like(scores, float("-inf"))
        for r, row in enumerate(self._rows):
            token = self._pad if row.done else row.choose(input_ids[r], scores[r])
            chosen[r, token] = 0.0
        return chosen  # type: ignore[return-value]


class _Accept(StoppingCriteria):
    """Hands each row its new token; a row is done when it has answered or was cancelled."""

    def __init__(self, rows: Sequence[RowState], jobs: Sequence[Job]) -> None:
        self._rows = rows
        self._jobs = jobs

    def __call__(
        self, input_ids: torch.LongTensor, scores: torch.FloatTensor, **kwargs: Any
    ) -> torch.BoolTensor:
        for r, (row, job) in enumerate(zip(self._rows, self._jobs, strict=True)):
            if not row.done:
                row.accept(int(input_ids[r, -1]))
            row.done = row.done or job.cancelled
        done = torch.tensor([row.done for row in self._rows], device=input_ids.device)
        return done  # type: ignore[return-value]


class Engine:
    """Owns the model on one worker thread; requests come in through ``submit``."""

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        slots: AdapterSlots,
        *,
        max_batch_size: int,
        max_jobs: int,
        eos_ids: frozenset[int],
    ) -> None:
        self._model = model
        self._tokenizer = tokenizer
        self._slots = slots
        self._max_batch = max_batch_size
        self._max_jobs = max_jobs
        self._eos = eos_ids
        self._special = frozenset(tokenizer.all_special_ids)
        self._device: torch.device = next(model.parameters()).device
        self._waiting: deque[Job] = deque()
        self._running: list[Job] = []
        self._closing = False
        self._cond = threading.Condition()
        self._thread = threading.Thread(target=self._work, name="student-engine", daemon=True)
        self.stats = EngineStats()

    def start(self) -> None:
        self._thread.start()

    @property
    def alive(self) -> bool:
        return self._thread.is_alive() and not self._closing

    def submit(self, job: Job) -> None:
        """Queue ``job``; ``Overloaded`` when ``max_jobs`` are already waiting or running."""
        with self._cond:
            if self._closing:
                raise Overloaded("the server is shutting down")
            if len(self._waiting) + len(self._running) >= self._max_jobs:
                raise Overloaded()
            self._waiting.append(job)
            self._cond.notify()

    def close(self, timeout: float = 30.0) -> None:
        """Stop taking jobs, end the running batch early (its jobs fail), wait for the thread."""
        with self._cond:
            self._closing = True
            stopped = [*self._waiting, *self._running]
            self._waiting.clear()
            self._cond.notify_all()
        for job in stopped:
            job.emit(IncompleteGeneration("the server is shutting down"))
            job.cancel()
        if self._thread.is_alive():
            self._thread.join(timeout)

    def snapshot(self) -> dict[str, int]:
        """Counters for ``/info``: jobs waiting (and still wanted), jobs in the running batch."""
        with self._cond:
            waiting = sum(not job.cancelled for job in self._waiting)
            return {**asdict(self.stats), "waiting": waiting, "running": len(self._running)}

    def _work(self) -> None:
        while (batch := self._next_batch()) is not None:
            try:
                self._generate(batch)
            finally:
                with self._cond:
                    self._running = []

    def _next_batch(self) -> list[Job] | None:
        with self._cond:
            while True:
                for job in [j for j in self._waiting if j.cancelled]:
                    self._waiting.remove(job)
                if self._closing:
                    return None
                if self._waiting:
                    break
                self._cond.wait()
            self._running = take_batch(self._waiting, self._max_batch)
            return self._running

    def _generate(self, jobs: list[Job]) -> None:
        """Generate one batch; every job gets its answer or an error, never nothing."""
        adapter = jobs[0].adapter
        rows: list[RowState] = []
        failure: StudentError = IncompleteGeneration()
        self._count(len(jobs))  # before any answer goes out, so /info never lags behind one
        try:
            rows = [self._row(job) for job in jobs]
            self._slots.activate(adapter)
            with self._slots.using(adapter), torch.inference_mode():
                for row in rows:
                    if row.spec.prefill_details:
                        row.prefill = self._prefill(row.spec.prompt_ids)
                self._decode(rows, jobs)
        except StudentError as exc:
            failure = exc
        except Exception as exc:
            log.exception("generation failed", adapter=adapter and adapter.adapter_id)
            failure = GenerationFailed(f"{type(exc).__name__}: {exc}")
        for r, job in enumerate(jobs):
            answered = r < len(rows) and rows[r].done
            if not answered and not job.cancelled:
                job.emit(failure)

    def _row(self, job: Job) -> RowState:
        return RowState(
            job.spec,
            job.emit,
            self._tokenizer,
            special_ids=self._special,
            eos_ids=self._eos,
            device=self._device,
            constraint=job.constraint,
        )

    def _decode(self, rows: list[RowState], jobs: list[Job]) -> None:
        """One left-padded ``generate`` call; the hooks do each row's choosing and ending."""
        pad = self._tokenizer.pad_token_id
        prompts = [row.spec.prompt_ids for row in rows]
        width = max(len(p) for p in prompts)
        input_ids = torch.full((len(rows), width), pad, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for r, prompt in enumerate(prompts):
            input_ids[r, width - len(prompt) :] = torch.tensor(prompt)
            mask[r, width - len(prompt) :] = 1
        config = GenerationConfig(  # type: ignore[no-untyped-call]
            max_new_tokens=max(row.spec.max_new_tokens for row in rows),
            do_sample=False,
            eos_token_id=[],  # the rows end themselves (see _Accept)
            pad_token_id=pad,
            temperature=1.0,
            top_p=1.0,
            repetition_penalty=1.0,
        )
        self._model.generate(
            input_ids=input_ids.to(self._device),
            attention_mask=mask.to(self._device),
            generation_config=config,
            logits_processor=LogitsProcessorList([_Choose(rows, pad)]),
            stopping_criteria=StoppingCriteriaList([_Accept(rows, jobs)]),
        )

    def _prefill(self, prompt: Sequence[int]) -> tuple[PrefillToken, ...]:
        """The prompt's tokens with the logprob the model gives each after the ones before."""
        ids = torch.tensor([list(prompt)], device=self._device)
        logits = self._model(input_ids=ids).logits[0, :-1].float()
        logprobs = torch.log_softmax(logits, dim=-1).gather(-1, ids[0, 1:, None])[:, 0].tolist()
        pieces = [self._tokenizer.decode([i], skip_special_tokens=False) for i in prompt]
        first = PrefillToken(prompt[0], pieces[0], None)
        rest = (
            PrefillToken(i, t, p) for i, t, p in zip(prompt[1:], pieces[1:], logprobs, strict=True)
        )
        return (first, *rest)

    def _count(self, size: int) -> None:
        with self._cond:
            self.stats.batches += 1
            self.stats.requests += size
            self.stats.batched_requests += size if size > 1 else 0
            self.stats.max_batch_size_seen = max(self.stats.max_batch_size_seen, size)
