"""Protégé's own loop, ``trainer.loop.train``, timed from outside and by its own account.

A scenario is two calls of ``train`` on the same model. The first, short one (``max_steps`` =
the warm-up steps, a curve point every step) warms the allocator and kernels, compiles with
``compile=True``, and times a step; the second is sized from that to last about ``seconds``
(and is run once more, sized from its own steps, if it came out under half of that).

The window is the second run from its first curve point (after step 1) to its last, less any
interval between two points in which ``torch.compile`` compiled (a new shape): those seconds
are reported apart. Its real tokens are counted independently of the loop: the same
``epoch_plan`` the loop follows, over the encoded lengths, gives each step's tokens, and their
sum over the run must equal ``TrainResult.tokens``. The loop's own ``tokens_per_s`` (its whole
run: tokenization, first step and compilation included) is reported beside it.
"""

from __future__ import annotations

import itertools
import math
import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import torch
from trainer_report import Measured

from trainer.batches import epoch_plan
from trainer.config import TrainConfig
from trainer.examples import Example
from trainer.loop import LogPoint, TrainResult, train


class _Overrun(Exception):
    """A run went past its deadline; stopped at a curve point."""


class CompileClock:
    """Counts ``torch.compile`` episodes (a frame traced, a backward compiled) and their time."""

    def __init__(self) -> None:
        self.count = 0
        self.seconds = 0.0
        self._since = 0.0
        import torch._dynamo

        self._handler: Any = getattr(torch._dynamo, "callback_handler", None)

    def __enter__(self) -> CompileClock:
        if self._handler is not None:
            self._handler.register_start_callback(self._start)
            self._handler.register_end_callback(self._end)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._handler is not None:
            self._handler.remove_start_callback(self._start)
            self._handler.remove_end_callback(self._end)

    @property
    def available(self) -> bool:
        return self._handler is not None

    def _start(self, *_: object) -> None:
        self.count += 1
        self._since = time.perf_counter()

    def _end(self, *_: object) -> None:
        self.seconds += time.perf_counter() - self._since


class _Marks:
    """The wall time and compile count at each curve point of one ``train`` call."""

    def __init__(self, clock: CompileClock, deadline_s: float) -> None:
        self.clock = clock
        self.began = time.perf_counter()
        self.deadline = self.began + deadline_s
        self.steps: list[int] = []
        self.times: list[float] = []
        self.compiles: list[int] = []

    def __call__(self, point: LogPoint) -> None:
        self.steps.append(point.step)
        self.times.append(time.perf_counter())  # the loop synchronised CUDA for the point
        self.compiles.append(self.clock.count)
        if self.times[-1] > self.deadline:
            raise _Overrun

    def clean_intervals(self) -> list[tuple[int, int, float]]:
        """(first step, last step, seconds) between points, without compilation in them."""
        return [
            (self.steps[j - 1] + 1, self.steps[j], self.times[j] - self.times[j - 1])
            for j in range(1, len(self.steps))
            if self.compiles[j] == self.compiles[j - 1]
        ]

    def step_seconds(self) -> float | None:
        """Typical seconds per step: the median over the later half of the clean intervals."""
        clean = self.clean_intervals()
        per_step = [s / (last - first + 1) for first, last, s in clean[len(clean) // 2 :]]
        return statistics.median(per_step) if per_step else None


@dataclass(frozen=True)
class ProtegeRun:
    measured: Measured
    result: TrainResult | None  # None when the timed run was stopped at its deadline
    steps_planned: int


def run_protege(
    model: Any, tokenizer: Any, examples: Sequence[Example], lengths: Sequence[int],
    cfg: TrainConfig, *, device: torch.device, seconds: float, warmup: int,
    warmup_budget_s: float,
) -> ProtegeRun:  # fmt: skip
    """Warm up, then time ``train`` for about ``seconds`` (see module doc)."""
    began = time.perf_counter()
    notes: list[str] = []
    with CompileClock() as clock:
        warm = _Marks(clock, warmup_budget_s)
        _train(
            model, tokenizer, examples, replace(cfg, max_steps=warmup, log_every=1), device, warm
        )
        step_s = warm.step_seconds() or seconds / 10
        for attempt in range(2):  # once more when the estimate was far off
            opened = time.perf_counter()
            steps = max(3, math.ceil(seconds / step_s) + 1)
            budget_s = 2 * max(seconds, steps * step_s) + 60
            marks, result = _timed(model, tokenizer, examples, cfg, device, clock, steps, budget_s)
            window_s = sum(s for _, _, s in marks.clean_intervals())
            if attempt or result is None or window_s >= seconds / 2:
                break
            notes.append(f"timed run repeated: the first, {steps} steps, lasted {window_s:.1f} s")
            step_s = marks.step_seconds() or step_s / 4
    per_step = step_tokens(lengths, cfg, steps)
    if result is not None and sum(per_step) != result.tokens:
        raise RuntimeError(f"token count {sum(per_step)} != the loop's {result.tokens}")
    measured = _window(marks, per_step, result, clock, cfg.compile, opened - began)
    return ProtegeRun(replace(measured, notes=(*measured.notes, *notes)), result, steps)


def _timed(
    model: Any, tokenizer: Any, examples: Sequence[Example], cfg: TrainConfig,
    device: torch.device, clock: CompileClock, steps: int, budget_s: float,
) -> tuple[_Marks, TrainResult | None]:  # fmt: skip
    """The timed run: ``steps`` steps, about 25 curve points, stopped after ``budget_s``."""
    marks = _Marks(clock, budget_s)
    timed = replace(cfg, max_steps=steps, log_every=max(1, steps // 25))
    return marks, _train(model, tokenizer, examples, timed, device, marks)


def step_tokens(lengths: Sequence[int], cfg: TrainConfig, steps: int) -> list[int]:
    """Real tokens of each of the first ``steps`` optimizer steps, as the loop batches them."""
    micro = (
        sum(lengths[i] for row in batch for i in row)
        for epoch in itertools.count()
        for batch in epoch_plan(lengths, cfg, epoch)
    )
    return [sum(itertools.islice(micro, cfg.grad_accum_steps)) for _ in range(steps)]


def warmup_steps(lengths: Sequence[int], cfg: TrainConfig, warmup: int) -> int:
    """Warm-up steps: ``warmup``; with compile, the whole first epoch (every shape it has)."""
    if not cfg.compile:
        return max(3, warmup)
    per_epoch = math.ceil(len(epoch_plan(lengths, cfg, 0)) / cfg.grad_accum_steps)
    return max(3, warmup, min(per_epoch, 60))


def _train(
    model: Any, tokenizer: Any, examples: Sequence[Example], cfg: TrainConfig,
    device: torch.device, marks: _Marks,
) -> TrainResult | None:  # fmt: skip
    try:
        return train(model, tokenizer, examples, cfg, device=device, on_log=marks)
    except _Overrun:
        return None


def _last_span(marks: _Marks) -> str:
    first = marks.steps[-2] + 1 if len(marks.steps) > 1 else 1
    last = marks.steps[-1]
    return f"step {last}" if first == last else f"mean of steps {first}-{last}"


def _window(
    marks: _Marks, per_step: Sequence[int], result: TrainResult | None, clock: CompileClock,
    compiled: bool, warmup_s: float,
) -> Measured:  # fmt: skip
    clean = marks.clean_intervals()
    tokens = sum(sum(per_step[first - 1 : last]) for first, last, _ in clean)
    seconds = sum(s for _, _, s in clean)
    notes = [] if result is None else [f"loss: the loop's last curve point ({_last_span(marks)})"]
    if result is None:
        notes.append(f"timed run stopped at its deadline after step {marks.steps[-1]}")
    left_out = len(marks.steps) - 1 - len(clean)
    if left_out:
        notes.append(f"{left_out} curve intervals with compilation left out of the window")
    if compiled and clock.available:
        notes.append(f"compilation: {clock.count} episodes, {clock.seconds:.0f} s in all")
    if compiled and not clock.available:
        notes.append("compile events not observable in this torch: no interval left out")
    return Measured(
        tokens=tokens,
        seconds=seconds,
        steps=sum(last - first + 1 for first, last, _ in clean),
        final_loss=result.final_loss if result is not None else None,
        warmup_s=warmup_s + (marks.times[0] - marks.began if marks.times else 0.0),
        loop_tokens_per_s=result.tokens_per_s if result is not None else None,
        compile_s=clock.seconds if compiled else None,
        notes=tuple(notes),
    )
