"""``protege train --sweep KEY=V1,V2,...``: one training run per value of one setting.

The decisions of a sweep, kept pure so that they are checked without a model:

- ``parse_sweep`` reads the argument into one ``TrainConfig`` per value, the rest of the config
  fixed. Every value is checked here, before any data or model is loaded, and a bad key or value
  fails naming the key (``config: --sweep lr: not a known training setting``).
- ``sweep_row`` is what the sweep records of one run; ``kept_run`` picks the run whose student
  is kept and published: the best mean headline over the test sets, ties to the later run (for
  data fractions, given ascending, the largest share wins a tie).
- ``sweep_table`` is the plain-text table printed after the sweep.

The kept run is chosen on the same test sets that then score it, so its scores are an
optimistic estimate; the report says so. The pipeline (``trainer.pipeline``) trains, evaluates
and writes ``<out>/sweep/<KEY>=<value>/adapter`` and ``<out>/sweep.json``::

    {"key": "learning_rate", "kept": 1, "rows": [{"value": 0.0001, "train_examples": 240,
     "scores": {"test-indist": 0.81, "test-balanced": 0.77}, "train_s": 52.1,
     "tokens_per_s": 4210.0, "peak_memory_gb": 1.9, "steps": 90, "final_loss": 0.21,
     "adapter": "sweep/learning_rate=0.0001/adapter"}, ...]}
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, Any, Final

import yaml

from core.errors import ConfigError
from trainer.config import TrainConfig

if TYPE_CHECKING:
    from trainer.loop import TrainResult

SWEEP_DIR: Final = "sweep"  # <out>/sweep/<KEY>=<value>/adapter, one per run
SWEEP_FILE: Final = "sweep.json"
GIB: Final = 2**30
_UNSAFE: Final = re.compile(r"[^A-Za-z0-9._+-]")


@dataclass(frozen=True)
class Sweep:
    """One setting, its values in the order given, and the config each run trains with."""

    key: str
    values: tuple[Any, ...]  # as the configs hold them (a float setting's 1 is 1.0)
    configs: tuple[TrainConfig, ...]

    def name(self, index: int) -> str:
        """Run ``index``'s folder under ``sweep/``: ``KEY=value``, safe on any filesystem."""
        return f"{self.key}={_UNSAFE.sub('_', shown(self.values[index]))}"


def as_setting(key: str, value: Any) -> Any:
    """A YAML-read ``value`` as setting ``key`` takes it (``--set``, ``--sweep`` and config
    files alike): YAML reads ``2e-4`` (no dot) as a string, and a float setting takes it, or an
    integer, as the number it is. Anything else is left for ``TrainConfig`` to judge."""
    default = getattr(TrainConfig(), key, None)
    if isinstance(default, float) and isinstance(value, str | int) and not isinstance(value, bool):
        try:
            return float(value)
        except ValueError as exc:
            raise ConfigError(f"config: {key} must be a number, got {value!r}") from exc
    return value


def parse_sweep(text: str, base: TrainConfig) -> Sweep:
    """``KEY=V1,V2,...`` over ``base``: values read as YAML scalars, like ``--set``'s."""
    key, sep, listed = text.partition("=")
    key = key.strip()
    if not sep or not key:
        raise ConfigError(f"config: --sweep {text!r} must be KEY=V1,V2,...")
    items = [item.strip() for item in listed.split(",")]
    if not any(items):
        raise ConfigError(f"config: --sweep {key}: give at least one value")
    values = []
    for item in items:
        if not item:
            raise ConfigError(f"config: --sweep {key}: an empty value in {listed!r}")
        try:
            values.append(yaml.safe_load(item))
        except yaml.YAMLError as exc:
            raise ConfigError(f"config: --sweep {key}: cannot read {item!r}") from exc
    return sweep_of(key, values, base)


def sweep_of(key: str, values: Sequence[Any], base: TrainConfig) -> Sweep:
    """The sweep of ``key`` over ``values`` (already read), each config checked now."""
    if key not in {f.name for f in fields(TrainConfig)}:
        raise ConfigError(f"config: --sweep {key}: not a known training setting")
    if not values:
        raise ConfigError(f"config: --sweep {key}: give at least one value")
    configs = []
    for value in values:
        try:
            configs.append(TrainConfig.from_dict({**base.to_dict(), key: as_setting(key, value)}))
        except ConfigError as exc:
            reason = str(exc).removeprefix("config: ")
            raise ConfigError(f"config: --sweep {key}={shown(value)}: {reason}") from exc
    sweep = Sweep(key, tuple(getattr(c, key) for c in configs), tuple(configs))
    names = [sweep.name(i) for i in range(len(configs))]
    for i, name in enumerate(names):
        if name in names[:i]:
            raise ConfigError(f"config: --sweep {key}: {shown(sweep.values[i])} given twice")
    return sweep


def shown(value: Any) -> str:
    """A setting's value as a person writes it: ``true``, ``null``, ``0.0002``, ``q,v``."""
    if isinstance(value, bool) or value is None:
        return {True: "true", False: "false", None: "null"}[value]
    if isinstance(value, tuple | list):
        return ",".join(shown(v) for v in value)
    return repr(value) if isinstance(value, float) else str(value)


def sweep_row(
    value: Any, training: TrainResult, scores: Mapping[str, float], adapter: str
) -> dict[str, Any]:
    """What the sweep records of one run: ``scores`` is the student's headline by test set,
    ``adapter`` the run's adapter folder relative to the run directory."""
    return {
        "value": list(value) if isinstance(value, tuple) else value,
        "train_examples": training.examples,
        "scores": dict(scores),
        "train_s": training.wall_s,
        "tokens_per_s": training.tokens_per_s,
        "peak_memory_gb": training.peak_memory_bytes / GIB,
        "steps": training.steps,
        "final_loss": training.final_loss,
        "adapter": adapter,
    }


def mean_score(row: Mapping[str, Any]) -> float:
    """The mean of a row's headline scores over the test sets; -inf with none (or a NaN)."""
    scores = list(row["scores"].values())
    mean = sum(scores) / len(scores) if scores else -math.inf
    return -math.inf if math.isnan(mean) else mean


def kept_run(rows: Sequence[Mapping[str, Any]]) -> int:
    """Index of the run kept: the best mean headline; a tie goes to the later run."""
    if not rows:
        raise ValueError("a sweep without runs keeps nothing")
    return max(range(len(rows)), key=lambda i: (mean_score(rows[i]), i))


def sweep_table(sweep: Mapping[str, Any]) -> str:
    """``sweep.json``'s content as a plain-text table, the kept run marked."""
    key, rows = sweep["key"], sweep["rows"]
    sets = list(dict.fromkeys(name for row in rows for name in row["scores"]))
    width = max([len(key), *(len(shown(row["value"])) for row in rows)])
    heads = ["examples", *sets, "train_s", "tokens/s", "peak_GiB", "kept"]
    lines = [f"{key:>{width}}  " + "  ".join(f"{h:>{max(8, len(h))}}" for h in heads)]
    for i, row in enumerate(rows):
        cells = [
            f"{row['train_examples']:>8}",
            *(f"{row['scores'].get(s, math.nan):>{max(8, len(s))}.3f}" for s in sets),
            f"{row['train_s']:>8.1f}",
            f"{row['tokens_per_s']:>8,.0f}",
            f"{row['peak_memory_gb']:>8.2f}",
            f"{'*' if i == sweep['kept'] else '':>8}",
        ]
        lines.append(f"{shown(row['value']):>{width}}  " + "  ".join(cells))
    return "\n".join(lines)
