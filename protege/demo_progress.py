"""The demo's progress lines: one as each stage starts, indented details, one as it ends, each
with the time elapsed since the demo began; and a record of every stage for the summary."""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from protege.demo_cli import STAGES
from protege.demo_summary import duration, span

_FIELD = re.compile(r"\b(loss|step|tokens_per_s)=([0-9.e+-]+)")


def trainer_line(line: str) -> str | None:
    """What a person sees of one line of ``protege train``'s output: its progress lines
    (``[data] …``, ``[eval] …``) and its loss curve points; None for the rest (in its log)."""
    if line.startswith("["):
        return line
    if "train.step" in line:
        fields = dict(_FIELD.findall(line))
        if {"loss", "step", "tokens_per_s"} <= fields.keys():
            loss, speed = float(fields["loss"]), float(fields["tokens_per_s"])
            return f"[train] step {fields['step']}: loss {loss:.3f}, {speed:,.0f} tokens/s"
    return None


class Progress:
    """One line per stage start and end, and indented details, with the elapsed time."""

    def __init__(
        self, fate: dict[str, str], say: Callable[[str], None], stages: Sequence[str] = STAGES
    ) -> None:
        self._fate, self._say, self._t0 = fate, say, time.monotonic()
        self._stages = tuple(stages)
        self.records: list[dict[str, Any]] = []

    @property
    def elapsed(self) -> float:
        return time.monotonic() - self._t0

    def detail(self, text: str) -> None:
        for line in text.splitlines():
            self._say(f"      {line}")

    def _head(self, name: str) -> str:
        index = self._stages.index(name) + 1
        return f"[{index}/{len(self._stages)} {name:<7} {duration(self.elapsed):>5}]"

    @contextmanager
    def stage(self, name: str, what: str) -> Iterator[None]:
        self._say(f"{self._head(name)} {what}")
        started = time.monotonic()
        entry: dict[str, Any] = {"name": name, "status": "failed", "seconds": 0.0}
        self.records.append(entry)
        try:
            yield
        except BaseException as exc:
            seconds = entry["seconds"] = round(time.monotonic() - started, 2)
            how = "interrupted" if isinstance(exc, KeyboardInterrupt) else "failed"
            self.detail(f"{name} {how} after {span(seconds)}")
            raise
        seconds = round(time.monotonic() - started, 2)
        entry.update(status="ran", seconds=seconds)
        self.detail(f"done in {span(seconds)}")

    def passed(self, name: str, why: str) -> None:
        self._say(f"{self._head(name)} {why}")
        self.records.append({"name": name, "status": self._fate[name], "seconds": 0.0})
