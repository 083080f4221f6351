"""Make the ``trainer`` modules importable on a machine with only the training stack installed.

The modules the training loop needs import little beyond PyTorch and transformers: ``core``
(errors, ids and message text: the standard library only), pyarrow (``trainer.examples``
builds a schema at import), and

    trainer.loop     -> structlog
    trainer.examples, trainer.synthetic -> orjson

A GPU machine with PyTorch, transformers and peft may lack structlog and orjson. ``prepare()``
then gives them small stand-ins over the standard ``logging`` and ``json``. Neither is on the
training path: the loop logs at curve points only, and orjson serves example files.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import sys
import types
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent


def prepare() -> list[str]:
    """Put the repository on ``sys.path`` and stand in for what is missing; say what was."""
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    if not _installed("pyarrow"):
        raise SystemExit("trainer_throughput: pyarrow is needed (trainer.examples imports it)")
    notes = []
    if not _installed("structlog"):
        sys.modules["structlog"] = _structlog_stand_in()
        notes.append("structlog stands in as standard logging")
    if not _installed("orjson"):
        sys.modules["orjson"] = _orjson_stand_in()
        notes.append("orjson stands in as json")
    return notes


def quiet_training_logs() -> None:
    """Keep the loop's per-point info lines out of the report; warnings still show."""
    logging.getLogger("trainer").setLevel(logging.WARNING)
    structlog = sys.modules.get("structlog") or importlib.import_module("structlog")
    if hasattr(structlog, "make_filtering_bound_logger"):
        structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))


def _installed(name: str) -> bool:
    return name in sys.modules or importlib.util.find_spec(name) is not None


class _Logger:
    """``log.info("event", key=value)`` onto a standard logger."""

    def __init__(self, name: str) -> None:
        self._log = logging.getLogger(name)

    def _emit(self, level: int, event: str, fields: dict[str, Any]) -> None:
        if self._log.isEnabledFor(level):
            text = " ".join(f"{k}={v!r}" for k, v in fields.items())
            self._log.log(level, "%s %s", event, text)

    def debug(self, event: str, **fields: Any) -> None:
        self._emit(logging.DEBUG, event, fields)

    def info(self, event: str, **fields: Any) -> None:
        self._emit(logging.INFO, event, fields)

    def warning(self, event: str, **fields: Any) -> None:
        self._emit(logging.WARNING, event, fields)

    def error(self, event: str, **fields: Any) -> None:
        self._emit(logging.ERROR, event, fields)


def _structlog_stand_in() -> types.ModuleType:
    module = types.ModuleType("structlog")
    module.get_logger = _Logger  # type: ignore[attr-defined]
    return module


def _orjson_dumps(obj: Any, default: Any = None, option: int | None = None) -> bytes:
    return json.dumps(obj, default=default, ensure_ascii=False, separators=(",", ":")).encode()


def _orjson_stand_in() -> types.ModuleType:
    module = types.ModuleType("orjson")
    module.dumps = _orjson_dumps  # type: ignore[attr-defined]
    module.loads = json.loads  # type: ignore[attr-defined]
    return module
