"""The gateway's settings: one typed object, loaded once at start-up from YAML and environment.

Precedence: defaults < YAML file < environment. The environment names are::

    PROTEGE_TEACHER_BASE_URL   teacher.base_url
    PROTEGE_TEACHER_API_KEY    teacher.api_key
    PROTEGE_STUDENT_BASE_URL   student.base_url
    PROTEGE_STUDENT_API_KEY    student.api_key
    PROTEGE_API_KEYS           api_keys (comma-separated)
    PROTEGE_SPOOL_DIR          spool.dir
    PROTEGE_STORE              store

A bad value fails start-up with a ``ConfigError`` naming the key, e.g.
``config: routes[2].task must be a non-empty string, got ''``.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

import re2
import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)

from gateway.errors import ConfigError

_SECRET_KEYS = re.compile(r"key|token|secret|password", re.IGNORECASE)
M = TypeVar("M", bound=BaseModel)


def _check_store_uri(value: str) -> str:
    if not re.match(r"^(file://.+|s3://[a-z0-9][a-z0-9.-]{1,61}[a-z0-9](/.*)?)$", value):
        raise ValueError("must be file://DIR or s3://bucket[/prefix]")
    return value


StoreUri = Annotated[str, AfterValidator(_check_store_uri)]


def _check_http_url(value: str) -> str:
    if not re.match(r"^https?://[^/\s]+", value):
        raise ValueError("must be an http(s) URL such as https://api.openai.com/v1")
    return value.rstrip("/")


HttpUrl = Annotated[str, AfterValidator(_check_http_url)]
_NAME = r"[A-Za-z0-9][A-Za-z0-9_.-]*"


class KeyProblem(ValueError):
    """A check across several settings, naming the key (relative to the model checked) at fault."""

    def __init__(self, key: str, problem: str) -> None:
        super().__init__(problem)
        self.key = key


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class UpstreamConfig(_Model):
    """How the gateway talks to an OpenAI-compatible upstream (see ``gateway.upstream``)."""

    api_key: SecretStr | None = None
    # Seconds to open a connection; a connect failure is retried connect_retries times.
    connect_timeout_s: float = Field(default=5.0, gt=0)
    connect_retries: int = Field(default=2, ge=0, le=10)
    # Longest silence between two bytes of the upstream's answer before giving up (504).
    read_timeout_s: float = Field(default=300.0, gt=0)
    # Pooled connections to the upstream.
    max_connections: int = Field(default=1024, ge=1)


class TeacherConfig(UpstreamConfig):
    """The OpenAI-compatible API every request goes to while no student serves it."""

    base_url: HttpUrl = "https://api.openai.com/v1"


class StudentConfig(UpstreamConfig):
    """LoRAX (or the local student server): one base model serving every task's adapter.

    The client's key is never sent: the gateway authenticates with ``api_key`` or not at all.
    A student that fails before the first byte is answered for by the teacher, so its
    timeouts are shorter than the teacher's: the fallback should not keep the client waiting.
    """

    # Its OpenAI route, e.g. http://lorax:8080/v1; None: no student, the teacher answers all.
    base_url: HttpUrl | None = None
    connect_timeout_s: float = Field(default=1.0, gt=0)
    connect_retries: int = Field(default=1, ge=0, le=10)
    read_timeout_s: float = Field(default=60.0, gt=0)
    max_connections: int = Field(default=256, ge=1)


class RouteConfig(_Model):
    """Maps a model alias the client asks for to a task, its teacher model and its student."""

    alias: str = Field(min_length=1)
    task: str = Field(min_length=1, pattern=f"^{_NAME}$")
    # The model name sent to the teacher; None forwards the client's model unchanged.
    teacher_model: str | None = None
    # The task's student: a published adapter, <task>/<version>, sent to LoRAX as the model.
    adapter: str | None = Field(default=None, pattern=f"^{_NAME}/{_NAME}$")
    # teacher: the teacher answers (and every exchange is logged for training);
    # student: the adapter answers, the teacher only when the student fails before the first byte.
    mode: Literal["teacher", "student"] = "teacher"

    @model_validator(mode="after")
    def _student_has_adapter(self) -> RouteConfig:
        if self.mode == "student" and self.adapter is None:
            raise KeyProblem("adapter", "is required when mode is 'student'")
        return self


class RedactionRule(_Model):
    """A pattern (RE2 syntax) whose matches are replaced in logged text, never in live answers."""

    name: str = Field(min_length=1)
    pattern: str = Field(min_length=1)
    replacement: str = "[REDACTED]"

    @field_validator("pattern")
    @classmethod
    def _compiles(cls, value: str) -> str:
        try:
            re2.compile(value)
        except re2.error as exc:
            reason = exc.args[0].decode() if exc.args and isinstance(exc.args[0], bytes) else exc
            raise ValueError(f"is not a valid RE2 pattern ({reason})") from exc
        return value


class RedactionConfig(_Model):
    """PII and secret scrubbing applied to the captured request and response text."""

    # Built-in rules: emails, phone numbers, card numbers, bearer tokens, API keys.
    defaults: bool = True
    rules: tuple[RedactionRule, ...] = ()


class SpoolConfig(_Model):
    """Where and how exchange records are spooled before the sidecar ships them."""

    dir: Path = Path(".protege/spool")
    # A segment is sealed (handed to the sidecar) once it holds this many bytes...
    segment_max_bytes: int = Field(default=16 * 1024 * 1024, ge=4096)
    # ...or once its first record is this old, so quiet tasks still ship promptly.
    segment_max_age_s: float = Field(default=30.0, gt=0)
    # never: leave flushing to the OS (a killed process loses nothing, power loss may);
    # interval: fsync at most every fsync_interval_s; always: fsync before acknowledging.
    fsync: Literal["never", "interval", "always"] = "interval"
    fsync_interval_s: float = Field(default=1.0, gt=0)
    # Cap on the bytes held in the spool directory (open + sealed segments).
    max_bytes: int = Field(default=2 * 1024**3, ge=64 * 1024)
    # When the cap is reached: drop (keep serving, do not capture new records, count them)
    # or reject (answer 503 to new requests until the sidecar drains the spool).
    on_full: Literal["drop", "reject"] = "drop"


class ServerConfig(_Model):
    host: str = "127.0.0.1"
    port: int = Field(default=8080, ge=0, le=65535)


class LoggingConfig(_Model):
    level: Literal["debug", "info", "warning", "error"] = "info"
    # One JSON line per request answered.
    access_log: bool = False


class MetricsConfig(_Model):
    # Task label values admitted beyond the configured routes before folding into "other".
    max_dynamic_tasks: int = Field(default=50, ge=0)


class GatewaySettings(_Model):
    """Everything ``protege gateway`` needs, validated."""

    teacher: TeacherConfig = TeacherConfig()
    student: StudentConfig = StudentConfig()
    routes: tuple[RouteConfig, ...] = ()
    # Keys clients must present as ``Authorization: Bearer …``; empty accepts any client.
    api_keys: tuple[SecretStr, ...] = ()
    # Salt for hashing client keys and user ids into the record's client/user columns.
    hash_salt: SecretStr = SecretStr("protege")
    # Largest request body accepted, in bytes.
    max_body_bytes: int = Field(default=32 * 1024 * 1024, ge=1024)
    spool: SpoolConfig = SpoolConfig()
    redaction: RedactionConfig = RedactionConfig()
    server: ServerConfig = ServerConfig()
    logging: LoggingConfig = LoggingConfig()
    metrics: MetricsConfig = MetricsConfig()
    # Where the sidecar ships records: file://DIR or s3://bucket/prefix.
    store: StoreUri = "file://.protege/store"

    @field_validator("routes")
    @classmethod
    def _unique_aliases(cls, routes: tuple[RouteConfig, ...]) -> tuple[RouteConfig, ...]:
        seen: set[str] = set()
        for route in routes:
            if route.alias in seen:
                raise ValueError(f"alias {route.alias!r} is defined twice")
            seen.add(route.alias)
        return routes

    @model_validator(mode="after")
    def _students_are_served(self) -> GatewaySettings:
        if self.student.base_url is not None:
            return self
        for i, route in enumerate(self.routes):
            if route.mode == "student":
                raise KeyProblem(
                    "student.base_url",
                    f"is required: routes[{i}] ({route.alias}) has mode 'student'",
                )
        return self


# Environment variable -> the dotted key it sets.
_ENV_KEYS = {
    "PROTEGE_TEACHER_BASE_URL": "teacher.base_url",
    "PROTEGE_TEACHER_API_KEY": "teacher.api_key",
    "PROTEGE_STUDENT_BASE_URL": "student.base_url",
    "PROTEGE_STUDENT_API_KEY": "student.api_key",
    "PROTEGE_SPOOL_DIR": "spool.dir",
    "PROTEGE_STORE": "store",
}


def _env_overrides(env: Mapping[str, str]) -> dict[str, Any]:
    """The settings named by PROTEGE_* environment variables, as a nested dict."""
    out: dict[str, Any] = {}
    for name, key in _ENV_KEYS.items():
        if name in env:
            *sections, leaf = key.split(".")
            node = out
            for section in sections:
                node = node.setdefault(section, {})
            node[leaf] = env[name]
    if "PROTEGE_API_KEYS" in env:
        out["api_keys"] = [k.strip() for k in env["PROTEGE_API_KEYS"].split(",") if k.strip()]
    return out


def _merge(base: dict[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in over.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = _merge(dict(merged[key]), value)
        else:
            merged[key] = value
    return merged


def _key_path(loc: tuple[int | str, ...]) -> str:
    path = ""
    for part in loc:
        path += f"[{part}]" if isinstance(part, int) else (f".{part}" if path else str(part))
    return path or "(root)"


def describe(exc: ValidationError) -> str:
    """The first validation error as ``config: <key> <problem>, got <value>``."""
    err = exc.errors()[0]
    cause = err.get("ctx", {}).get("error")
    if isinstance(cause, KeyProblem):
        return f"config: {_key_path((*err['loc'], *cause.key.split('.')))} {cause}"
    path = _key_path(tuple(err["loc"]))
    msg = re.sub(r"^(Input|String|Value) should", "must", err["msg"].removeprefix("Value error, "))
    if err["type"] == "extra_forbidden":
        return f"config: {path} is not a known setting"
    if err["type"] == "missing":
        return f"config: {path} is required"
    shown = "***" if _SECRET_KEYS.search(path) else repr(err.get("input"))
    return f"config: {path} {msg[:1].lower()}{msg[1:]}, got {shown}"


def gather(
    path: str | os.PathLike[str] | None,
    env: Mapping[str, str] | None,
    overrides: Mapping[str, Any],
) -> dict[str, Any]:
    """The raw settings: the YAML file at ``path`` (optional) < environment < ``overrides``."""
    data: dict[str, Any] = {}
    if path is not None:
        try:
            loaded = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
        except OSError as exc:
            raise ConfigError(f"config: cannot read {path}: {exc.strerror}") from exc
        except yaml.YAMLError as exc:
            raise ConfigError(f"config: {path} is not valid YAML: {exc}") from exc
        if loaded is not None and not isinstance(loaded, dict):
            raise ConfigError(f"config: {path} must hold a mapping at the top level")
        data = loaded or {}
    data = _merge(data, _env_overrides(os.environ if env is None else env))
    return _merge(data, overrides)


def validate(model: type[M], data: Mapping[str, Any]) -> M:
    """``data`` as a ``model``, or a ``ConfigError`` naming the first bad key."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(describe(exc)) from exc


# Sections of the shared config file that belong to other services.
_OTHER_SERVICES = ("sidecar", "trainer")


def load_settings(
    path: str | os.PathLike[str] | None = None,
    env: Mapping[str, str] | None = None,
    **overrides: Any,
) -> GatewaySettings:
    """The gateway's settings from the YAML file at ``path``, the environment and ``overrides``."""
    data = gather(path, env, overrides)
    for section in _OTHER_SERVICES:
        data.pop(section, None)
    return validate(GatewaySettings, data)
