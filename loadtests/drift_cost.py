"""Input drift cost: what drift monitoring adds per request, on the event loop and off it.

    python loadtests/drift_cost.py [--round-ms 20] [--rounds 7]

For prompts of about 200 B, 1 KB and 8 KB it times, in one process:

    parse            orjson.loads of the chat request body: the baseline every request pays
    observe          DriftMonitor.observe, queue open (what the event loop pays per request)
    observe, full    the same with the queue full (drop and count)
    score            DriftMonitor.score (what hybrid routing reads per request)
    out_of_bounds    the per-request routing check, on English and on Cyrillic text
    worker           prompt_text + WindowedProfile.add: the worker's cost per prompt
    sustained        prompts/s through a started monitor (observe, then flush), best of 3

Times are in µs per call, the best of several rounds, with the ratio to ``parse`` beside them.
The rounds of all figures are interleaved, so a burst of other work on the machine slows one
round of each figure rather than every round of one. Calls are made through a Python closure,
so each figure includes about 0.05 µs of call overhead.

The worker runs in the gateway's process, so its CPU time is taken under the same GIL as the
event loop: the footer turns the worker's cost into the share of a core it needs at a given
request rate. Takes about 10 s. A report: it always exits 0.
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import orjson
from procs import cpu_model

from core.profile import Profile
from core.text import prompt_text
from gateway.drift import DriftMonitor, WindowedProfile, out_of_bounds
from gateway.metrics import Metrics

SIZES = (("200 B", 200), ("1 KB", 1024), ("8 KB", 8192))
RATES = (1_000, 3_000)  # requests/s the footer sizes the worker for
_ENGLISH = (
    "Hi! My keyboard arrived yesterday but two of the keycaps (the left shift and the enter key) "
    "seem to be slightly loose and rattle when I type. The cable works fine. Can I get "
    "replacement keycaps sent to me, or do I need to return the whole keyboard? Order #A-20931. "
)
_CYRILLIC = (
    "Здравствуйте! Клавиатура пришла вчера, но две клавиши (левый шифт и ввод) немного "
    "шатаются и дребезжат при наборе. Можно ли прислать мне новые колпачки, или нужно вернуть "
    "всю клавиатуру? Заказ № A-20931. "
)
_SYSTEM = "You are a support assistant for an online hardware store. Answer concisely."


def text_of(base: str, size: int) -> str:
    """``base`` repeated and cut to ``size`` UTF-8 bytes (whole characters)."""
    encoded = (base * (size // len(base) + 2)).encode()[:size]
    return encoded.decode(errors="ignore")


def messages_of(text: str) -> list[dict[str, Any]]:
    return [{"role": "system", "content": _SYSTEM}, {"role": "user", "content": text}]


Call = Callable[[], object]


@dataclass
class Bench:
    """One timed figure: ``fresh()`` gives the call to time, set up anew for every round."""

    row: str
    size: str
    fresh: Callable[[], Call]
    calls: int = 0  # per round, from calibration
    best_us: float = float("inf")


def calibrate(bench: Bench, round_s: float) -> None:
    """Sets ``bench.calls`` so that a round lasts about ``round_s``."""
    call, calls, t0 = bench.fresh(), 0, time.perf_counter()
    while (elapsed := time.perf_counter() - t0) < round_s / 4:
        call()
        calls += 1
    bench.calls = max(1, int(calls * round_s / elapsed))


def run_round(bench: Bench) -> None:
    call, calls = bench.fresh(), bench.calls
    t0 = time.perf_counter()
    for _ in range(calls):
        call()
    bench.best_us = min(bench.best_us, (time.perf_counter() - t0) / calls * 1e6)


def reference() -> Profile:
    """A reference over English prompts of every size measured here."""
    return Profile.of(text_of(_ENGLISH[i:], size) for i in range(50) for _, size in SIZES)


def observer(messages: list[dict[str, Any]], ref: Profile, full: bool) -> Call:
    """observe on a fresh monitor whose worker is not running: its queue open, or full."""
    monitor = DriftMonitor(Metrics(), queue_max=1 if full else 10_000_000)
    monitor.set_reference("t", "t", ref, window_s=60)
    if full:
        monitor.observe("t", messages)
    return lambda: monitor.observe("t", messages)


def scorer(ref: Profile) -> Call:
    monitor = DriftMonitor(Metrics(), queue_max=10)
    monitor.set_reference("t", "t", ref, window_s=60)
    return lambda: monitor.score("t")


def worker_step(messages: list[dict[str, Any]]) -> Call:
    """The worker's own step per prompt: text extraction and the windowed profile."""
    window = WindowedProfile(60.0)
    return lambda: window.add(prompt_text(messages), time.monotonic())


def benches(name: str, size: int, ref: Profile) -> list[Bench]:
    """Every timed figure for prompts of ``size`` bytes."""
    english, cyrillic = text_of(_ENGLISH, size), text_of(_CYRILLIC, size)
    messages = messages_of(english)
    body = orjson.dumps({"model": "gpt-4o-mini", "messages": messages})
    rows: dict[str, Callable[[], Call]] = {
        "parse (baseline)": lambda: lambda: orjson.loads(body),
        "observe": lambda: observer(messages, ref, False),
        "observe, queue full": lambda: observer(messages, ref, True),
        "score": lambda: scorer(ref),
        "out_of_bounds, English": lambda: lambda: out_of_bounds(english, ref, None),
        "out_of_bounds, Cyrillic": lambda: lambda: out_of_bounds(cyrillic, ref, None),
        "worker per prompt": lambda: worker_step(messages),
    }
    return [Bench(row, name, fresh) for row, fresh in rows.items()]


def sustained(messages: list[dict[str, Any]], ref: Profile, prompts: int) -> float:
    """Prompts/s a started monitor profiles: ``prompts`` observed, then flushed."""
    monitor = DriftMonitor(Metrics(), queue_max=prompts + 1)
    monitor.set_reference("t", "t", ref, window_s=60)
    monitor.start()
    try:
        t0 = time.perf_counter()
        for _ in range(prompts):
            monitor.observe("t", messages)
        monitor.flush(timeout=120)
        return prompts / (time.perf_counter() - t0)
    finally:
        monitor.stop()


def measure(round_s: float, rounds: int) -> dict[str, list[float]]:
    """Every row of the table: name -> one figure per size."""
    ref = reference()
    timed = [b for name, size in SIZES for b in benches(name, size, ref)]
    for bench in timed:
        calibrate(bench, round_s)
    for _ in range(rounds):
        for bench in timed:
            run_round(bench)
    table: dict[str, list[float]] = {}
    for bench in timed:
        table.setdefault(bench.row, []).append(bench.best_us)
    for (_, size), worker_us in zip(SIZES, table["worker per prompt"], strict=True):
        messages = messages_of(text_of(_ENGLISH, size))
        prompts = max(100, int(0.4e6 / worker_us))  # about 0.4 s a try
        best = max(sustained(messages, ref, prompts) for _ in range(3))
        table.setdefault("sustained prompts/s", []).append(best)
    return table


def report(rows: dict[str, list[float]]) -> str:
    names = [name for name, _ in SIZES]
    lines = [f"{'µs per call (x parse)':<26}" + "".join(f"{n:>18}" for n in names)]
    parse = rows["parse (baseline)"]
    for row, values in rows.items():
        if row == "sustained prompts/s":
            cells = [f"{v:>18,.0f}" for v in values]
        else:
            cells = [f"{v:>10.2f} ({v / p:>5.2f}x)" for v, p in zip(values, parse, strict=True)]
        lines.append(f"{row:<26}" + "".join(cells))
    worker = dict(zip(names, rows["worker per prompt"], strict=True))
    lines.append("")
    for rate in RATES:
        shares = ", ".join(f"{n} {rate * us / 1e4:.0f}%" for n, us in worker.items())
        lines.append(f"worker CPU at {rate:,} req/s (share of one core, under the GIL): {shares}")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--round-ms", type=float, default=20, help="length of one timed round")
    parser.add_argument("--rounds", type=int, default=7, help="timed rounds per figure")
    args = parser.parse_args()
    print(
        f"Input drift cost: {os.cpu_count()} CPUs ({cpu_model()}), "
        f"Python {platform.python_version()}"
    )
    print(report(measure(args.round_ms / 1000, args.rounds)))


if __name__ == "__main__":
    main()
