"""The gateway's settings: one typed object, loaded once at start-up from YAML and environment.

Precedence: defaults < YAML file < environment. The environment names are::

    PROTEGE_TEACHER_BASE_URL   teacher.base_url
    PROTEGE_TEACHER_API_KEY    teacher.api_key
    PROTEGE_STUDENT_BASE_URL   student.base_url
    PROTEGE_STUDENT_API_KEY    student.api_key
    PROTEGE_API_KEYS           api_keys (comma-separated)
    PROTEGE_SPOOL_DIR          spool.dir
    PROTEGE_STORE              store
    PROTEGE_ADMIN_TOKEN        rollouts.admin_token
    PROTEGE_HASH_SALT          hash_salt

A bad value fails start-up with a ``ConfigError`` naming the key, e.g.
``config: routes[2].task must be a non-empty string, got ''``.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)

from gateway.errors import ConfigError
from gateway.policy import KeyProblem, RolloutPolicy, re2_pattern
from gateway.policy import Model as _Model

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
    # Put before <task>/<version> in the model the student is asked for: LoRAX loading from S3
    # wants the adapter's location, e.g. s3://bucket/prefix/adapters/; the local student
    # server resolves <task>/<version> in its store itself (empty).
    adapter_prefix: str = ""
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
    # The task's rollout: which backend answers, and its guardrails (see gateway.policy).
    # Aliases of one task share it; at most one of them sets it.
    rollout: RolloutPolicy = RolloutPolicy()


class RedactionRule(_Model):
    """A pattern (RE2 syntax) whose matches are replaced in logged text, never in live answers."""

    name: str = Field(min_length=1)
    pattern: str = Field(min_length=1)
    replacement: str = "[REDACTED]"

    @field_validator("pattern")
    @classmethod
    def _compiles(cls, value: str) -> str:
        return re2_pattern(value)


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


class RolloutSettings(_Model):
    """How rollouts are administered, shared between replicas and shadowed."""

    # Bearer token of the admin API (/admin/routes); None turns the admin API off.
    admin_token: SecretStr | None = None
    # Seconds between reads of the rollout file in the store: how fast replicas converge.
    sync_interval_s: float = Field(default=5.0, gt=0)
    # Shadow calls in flight at once per gateway; a request finding none free is not shadowed.
    shadow_concurrency: int = Field(default=16, ge=1)
    # Seconds a shadow call may take before it is abandoned (counted as failed).
    shadow_timeout_s: float = Field(default=30.0, gt=0)
    # Prompts waiting for the drift monitor; beyond this they are left out (and counted).
    drift_queue: int = Field(default=10000, ge=1)


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
    rollouts: RolloutSettings = RolloutSettings()
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
    def _one_rollout_per_task(self) -> GatewaySettings:
        first: dict[str, int] = {}
        for i, route in enumerate(self.routes):
            if "rollout" not in route.model_fields_set:
                continue
            if route.task in first:
                raise KeyProblem(
                    f"routes.{i}.rollout",
                    f"is set for task {route.task!r} by routes[{first[route.task]}] already",
                )
            first[route.task] = i
        return self

    @model_validator(mode="after")
    def _students_are_served(self) -> GatewaySettings:
        if self.student.base_url is not None:
            return self
        for i, route in enumerate(self.routes):
            if route.rollout.mode != "teacher":
                raise KeyProblem(
                    "student.base_url",
                    f"is required: routes[{i}] ({route.alias}) has mode {route.rollout.mode!r}",
                )
        return self

    def rollouts_by_task(self) -> dict[str, RolloutPolicy]:
        """The configured rollout of every task a route names (the default where none sets one)."""
        out: dict[str, RolloutPolicy] = {}
        for route in self.routes:
            if "rollout" in route.model_fields_set or route.task not in out:
                out[route.task] = route.rollout
        return out


# Environment variable -> the dotted key it sets.
_ENV_KEYS = {
    "PROTEGE_TEACHER_BASE_URL": "teacher.base_url",
    "PROTEGE_TEACHER_API_KEY": "teacher.api_key",
    "PROTEGE_STUDENT_BASE_URL": "student.base_url",
    "PROTEGE_STUDENT_API_KEY": "student.api_key",
    "PROTEGE_SPOOL_DIR": "spool.dir",
    "PROTEGE_STORE": "store",
    "PROTEGE_ADMIN_TOKEN": "rollouts.admin_token",
    "PROTEGE_HASH_SALT": "hash_salt",
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
        index = isinstance(part, int) or part.isdigit()
        path += f"[{part}]" if index else (f".{part}" if path else str(part))
    return path or "(root)"


def problem(exc: ValidationError) -> tuple[str, str]:
    """The first validation error as (key, ``<problem>, got <value>``)."""
    err = exc.errors()[0]
    cause = err.get("ctx", {}).get("error")
    if isinstance(cause, KeyProblem):
        return _key_path((*err["loc"], *cause.key.split("."))), str(cause)
    path = _key_path(tuple(err["loc"]))
    msg = re.sub(r"^(Input|String|Value) should", "must", err["msg"].removeprefix("Value error, "))
    if err["type"] == "extra_forbidden":
        return path, "is not a known setting"
    if err["type"] == "missing":
        return path, "is required"
    shown = "***" if _SECRET_KEYS.search(path) else repr(err.get("input"))
    return path, f"{msg[:1].lower()}{msg[1:]}, got {shown}"


def describe(exc: ValidationError) -> str:
    """The first validation error as ``config: <key> <problem>, got <value>``."""
    key, text = problem(exc)
    return f"config: {key} {text}"


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
