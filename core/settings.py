"""Settings every service shares: the model base, the sections read by more than one service,
and loading: one YAML file for all services, then environment, then overrides.

Precedence: defaults < YAML file < environment < overrides. The environment names are::

    PROTEGE_TEACHER_BASE_URL   teacher.base_url
    PROTEGE_TEACHER_API_KEY    teacher.api_key
    PROTEGE_STUDENT_BASE_URL   student.base_url
    PROTEGE_STUDENT_API_KEY    student.api_key
    PROTEGE_API_KEYS           api_keys (comma-separated)
    PROTEGE_SPOOL_DIR          spool.dir
    PROTEGE_STORE              store
    PROTEGE_ADMIN_TOKEN        rollouts.admin_token
    PROTEGE_HASH_SALT          hash_salt
    PROTEGE_GATEWAY_WORKERS    server.workers

Each service validates its own sections with ``validate``; a bad value is a ``ConfigError``
naming the key, e.g. ``config: routes[2].task must be a non-empty string, got ''``.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

import re2
import yaml
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, field_validator

from core.errors import ConfigError

_SECRET_KEYS = re.compile(r"key|token|secret|password", re.IGNORECASE)
M = TypeVar("M", bound=BaseModel)


class Model(BaseModel):
    """Settings: unknown keys refused, values frozen once loaded."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class KeyProblem(ValueError):
    """A check across several settings, naming the key (relative to the model checked) at fault."""

    def __init__(self, key: str, problem: str) -> None:
        super().__init__(problem)
        self.key = key


def re2_pattern(value: str) -> str:
    """``value`` once it compiles as an RE2 pattern (a ``ValueError`` saying why, else)."""
    try:
        re2.compile(value)
    except re2.error as exc:
        reason = exc.args[0].decode() if exc.args and isinstance(exc.args[0], bytes) else exc
        raise ValueError(f"{value!r} is not a valid RE2 pattern ({reason})") from exc
    return value


def _check_store_uri(value: str) -> str:
    if not re.match(r"^(file://.+|s3://[a-z0-9][a-z0-9.-]{1,61}[a-z0-9](/.*)?)$", value):
        raise ValueError("must be file://DIR or s3://bucket[/prefix]")
    return value


StoreUri = Annotated[str, AfterValidator(_check_store_uri)]
# Where every service finds the store when none is configured (``protege up``'s default).
DEFAULT_STORE = "file://.protege/store"


class RedactionRule(Model):
    """A pattern (RE2 syntax) whose matches are replaced in logged text, never in live answers."""

    name: str = Field(min_length=1)
    pattern: str = Field(min_length=1)
    replacement: str = "[REDACTED]"

    @field_validator("pattern")
    @classmethod
    def _compiles(cls, value: str) -> str:
        return re2_pattern(value)


class RedactionConfig(Model):
    """PII and secret scrubbing applied to the captured request and response text."""

    # Built-in rules: emails, phone numbers, card numbers, bearer tokens, API keys.
    defaults: bool = True
    rules: tuple[RedactionRule, ...] = ()


class SpoolConfig(Model):
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


# A gateway run with --workers N gives worker i the spool <spool.dir>/worker-<i>/ (and its
# feedback spool <spool.dir>/worker-<i>/feedback/), so no two writers share a segment.
WORKER_SPOOL_PREFIX = "worker-"


def worker_spool(spool_dir: Path, index: int) -> Path:
    """Worker ``index``'s spool directory under the configured one."""
    return Path(spool_dir) / f"{WORKER_SPOOL_PREFIX}{index}"


def writer_spools(spool_dir: Path) -> list[Path]:
    """Every directory a gateway may write exchange segments in: the spool directory itself
    (one gateway process) and each worker's, as they are now on disk."""
    root = Path(spool_dir)
    try:
        workers = sorted(
            p for p in root.iterdir()
            if p.name.startswith(WORKER_SPOOL_PREFIX) and p.is_dir()
        )  # fmt: skip
    except FileNotFoundError:
        workers = []
    return [root, *workers]


class LoggingConfig(Model):
    level: Literal["debug", "info", "warning", "error"] = "info"
    # One JSON line per request answered.
    access_log: bool = False


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
    "PROTEGE_GATEWAY_WORKERS": "server.workers",
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
