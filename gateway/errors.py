"""Errors of the gateway, and their OpenAI-shaped rendering.

    ProtegeError
    ├── ConfigError                 bad settings; start-up fails naming the key
    └── ApiError                    answered to the client as {"error": {...}} with .status
        ├── InvalidRequest          400 malformed JSON, missing model/messages, bad field
        ├── Unauthorized            401 missing or unknown gateway key
        ├── NotFound                404 unknown path
        ├── PayloadTooLarge         413 body over max_body_bytes
        ├── ServiceUnavailable      503 the spool is full and its policy is to reject
        └── UpstreamError           a backend failed before any byte reached the client
            ├── UpstreamUnreachable 502 connect failed (after retries) or the connection broke
            ├── UpstreamTimeout     504 no answer within the read timeout
            └── UpstreamStatus      the backend's own 4xx/5xx, passed through as it came

Only this module knows the wire shape; the app has one handler that renders ``ApiError``.
"""

from __future__ import annotations

from typing import Any

import orjson


class ProtegeError(Exception):
    """Base of every error Protégé raises on purpose."""


class ConfigError(ProtegeError):
    """Settings that cannot be used; the message names the key."""


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


class UpstreamTimeout(UpstreamError):
    status = 504
    type = "upstream_error"
    code = "upstream_timeout"


class UpstreamStatus(UpstreamError):
    """The backend answered an error status; its body is passed through untouched."""

    type = "upstream_error"

    def __init__(self, status: int, raw_body: bytes, content_type: str, *, backend: str):
        super().__init__(f"{backend} answered HTTP {status}", backend=backend)
        self.status = status
        self.raw_body = raw_body
        self.content_type = content_type

    def body(self) -> bytes:
        return self.raw_body


def error_body(
    message: str, type_: str, param: str | None = None, code: str | None = None
) -> bytes:
    """``{"error": {"message", "type", "param", "code"}}`` as JSON bytes."""
    error: dict[str, Any] = {"message": message, "type": type_, "param": param, "code": code}
    return orjson.dumps({"error": error})
