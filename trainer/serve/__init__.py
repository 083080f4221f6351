"""The local student server: LoRAX's protocol on transformers + peft, for CPU, CI and demos.

    create_app(settings)      the FastAPI app (``protege student`` serves it with uvicorn)
    StudentSettings           its settings; load_student_settings() reads PROTEGE_STORE
    Student                   base model, tokenizer, adapters and engine, once started

Names load on first use, so ``trainer.serve.cli`` registers its command without torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from trainer.serve.app import create_app
    from trainer.serve.settings import StudentSettings, load_student_settings
    from trainer.serve.student import Student

__all__ = ["Student", "StudentSettings", "create_app", "load_student_settings"]

_HOMES = {
    "Student": "trainer.serve.student",
    "StudentSettings": "trainer.serve.settings",
    "create_app": "trainer.serve.app",
    "load_student_settings": "trainer.serve.settings",
}


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(home), name)
