"""Errors of the student server, in LoRAX's wire shape ``{"error": ..., "error_type": ...}``.

    ProtegeError (gateway.errors)
    └── StudentError                 answered with .status and .error_type
        ├── InvalidInput             422 validation: the input or a parameter is out of range
        ├── GenerationFailed         424 generation: the model failed while generating
        │   └── AdapterUnavailable   424 generation: the adapter is not in the store or won't load
        ├── Overloaded               429 overloaded: too many requests are waiting
        └── IncompleteGeneration     500 incomplete_generation: generation ended without an answer

The status codes, types and message prefixes are LoRAX's: an unknown adapter is a failed
adapter download there, so it is a 424 ``generation`` error whose message names the adapter.
On a streaming route every error after the request body is parsed is a ``data:`` event of a
200 stream, as LoRAX sends it. Only ``trainer.serve.app`` turns these into responses.
"""

from __future__ import annotations

from typing import ClassVar

from core.errors import ProtegeError


class StudentError(ProtegeError):
    status: ClassVar[int] = 500
    error_type: ClassVar[str] = "generation"
    prefix: ClassVar[str] = ""

    def __init__(self, detail: str = "") -> None:
        super().__init__(self.prefix + detail)
        self.detail = detail

    def body(self) -> dict[str, str]:
        """The LoRAX error object for this error."""
        return {"error": str(self), "error_type": self.error_type}


class InvalidInput(StudentError):
    status = 422
    error_type = "validation"
    prefix = "Input validation error: "


class GenerationFailed(StudentError):
    status = 424
    error_type = "generation"
    prefix = "Request failed during generation: "


class AdapterUnavailable(GenerationFailed):
    """The adapter named by a request cannot be used; the message names it and says why."""

    def __init__(self, adapter_id: str, reason: str) -> None:
        super().__init__(f"adapter {adapter_id!r} {reason}")
        self.adapter_id = adapter_id


class Overloaded(StudentError):
    status = 429
    error_type = "overloaded"

    def __init__(self, detail: str = "Model is overloaded") -> None:
        super().__init__(detail)


class IncompleteGeneration(StudentError):
    status = 500
    error_type = "incomplete_generation"

    def __init__(self, detail: str = "Incomplete generation") -> None:
        super().__init__(detail)
