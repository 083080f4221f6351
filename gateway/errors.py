"""Errors of the gateway's API, and their OpenAI-shaped rendering.

    ProtegeError (core.errors)
    └── ApiError                    answered to the client as {"error": {...}} with .status
        ├── InvalidRequest          400 malformed JSON, missing model/messages, bad field
        ├── Unauthorized            401 missing or unknown gateway key
        ├── NotFound                404 unknown path
        ├── PayloadTooLarge         413 body over max_body_bytes
        ├── ServiceUnavailable      503 the spool is full and its policy is to reject
        └── UpstreamError           a backend failed before any byte reached the client
            ├── UpstreamUnreachable 502 connect failed (after retries) or the connection broke
            ├── UpstreamTimeout     504 no answer within the read timeout
            └── UpstreamFailed      502 a 200 stream whose first event is an error, or a
                                        student's own failure (5xx, unreadable answer)

The teacher's own 4xx/5xx answer is not an error here: it is passed through as it came. A
student's ``UpstreamError`` is answered by the teacher (``route=fallback``).

Only this module knows the wire shape; the app has one handler that renders ``ApiError``.
"""

from __future__ import annotations

from typing import Any

import orjson

from core.errors import ProtegeError


class ApiError(ProtegeError):
    status = 500
    type = "server_error"
    code: str | None = None

    def __init__(self, message: str, *, param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.message = message
        self.param = param
        if code is not None:
            self.code = code

    def body(self) -> bytes:
        """The OpenAI error JSON for this error."""
        return error_body(self.message, self.type, self.param, self.code)


class InvalidRequest(ApiError):
    status = 400
    type = "invalid_request_error"


class Unauthorized(ApiError):
    status = 401
    type = "invalid_request_error"
    code = "invalid_api_key"


class NotFound(ApiError):
    status = 404
    type = "invalid_request_error"
    code = "not_found"


class PayloadTooLarge(ApiError):
    status = 413
    type = "invalid_request_error"
    code = "payload_too_large"


class ServiceUnavailable(ApiError):
    status = 503
    type = "server_error"
    code = "capture_unavailable"


class UpstreamError(ApiError):
    """A backend call failed; ``backend`` says which one."""

    def __init__(self, message: str, *, backend: str = "teacher", code: str | None = None):
        super().__init__(message, code=code)
        self.backend = backend


class UpstreamUnreachable(UpstreamError):
    status = 502
    type = "upstream_error"
    code = "upstream_unreachable"

    def __init__(
        self, message: str, *, backend: str, code: str | None = None, retryable: bool = False
    ):
        super().__init__(message, backend=backend, code=code)
        # True only when the request cannot have reached the upstream (the connect failed).
        self.retryable = retryable


class UpstreamTimeout(UpstreamError):
    status = 504
    type = "upstream_error"
    code = "upstream_timeout"


class UpstreamFailed(UpstreamError):
    """The backend answered, but with a failure: a stream opening with an error event, or a
    student's 5xx or unreadable answer."""

    status = 502
    type = "upstream_error"
    code = "upstream_error"


def error_body(
    message: str, type_: str, param: str | None = None, code: str | None = None
) -> bytes:
    """``{"error": {"message", "type", "param", "code"}}`` as JSON bytes."""
    error: dict[str, Any] = {"message": message, "type": type_, "param": param, "code": code}
    return orjson.dumps({"error": error})
