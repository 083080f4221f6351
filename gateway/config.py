"""The gateway's settings: one typed object, loaded once at start-up from the shared YAML file
and the environment (``core.settings`` says how, and which environment names set what).

A bad value fails start-up with a ``ConfigError`` naming the key, e.g.
``config: routes[2].task must be a non-empty string, got ''``.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from typing import Annotated, Any

from pydantic import AfterValidator, Field, SecretStr, field_validator, model_validator

from core.judging.config import JudgesConfig, JudgeSettings, TeacherRef
from core.keys import NAME
from core.settings import (
    DEFAULT_STORE,
    KeyProblem,
    LoggingConfig,
    Model,
    RedactionConfig,
    SpoolConfig,
    StoreUri,
    gather,
    validate,
)
from gateway.decoding import StudentDecoding
from gateway.policy import RolloutPolicy


def _check_http_url(value: str) -> str:
    if not re.match(r"^https?://[^/\s]+", value):
        raise ValueError("must be an http(s) URL such as https://api.openai.com/v1")
    return value.rstrip("/")


HttpUrl = Annotated[str, AfterValidator(_check_http_url)]


class UpstreamConfig(Model):
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


class RouteConfig(Model):
    """Maps a model alias the client asks for to a task, its teacher model and its student."""

    alias: str = Field(min_length=1)
    task: str = Field(min_length=1, pattern=f"^{NAME}$")
    # The model name sent to the teacher; None forwards the client's model unchanged.
    teacher_model: str | None = None
    # The task's rollout: which backend answers, and its guardrails (see gateway.policy).
    # Aliases of one task share it; at most one of them sets it.
    rollout: RolloutPolicy = RolloutPolicy()
    # How this alias's student calls decode: the adapter's published policy and learned
    # output schema, overridden key by key (see gateway.decoding). The teacher never gets them.
    student_decoding: StudentDecoding = StudentDecoding()


class ServerConfig(Model):
    host: str = "127.0.0.1"
    port: int = Field(default=8080, ge=0, le=65535)
    # Gateway processes sharing the port (gateway.workers); None: one per core available to
    # the process (its CPU affinity, capped by a cgroup CPU quota). 1: a single process.
    workers: int | None = Field(default=None, ge=1, le=256)


class MetricsConfig(Model):
    # Task label values admitted beyond the configured routes before folding into "other".
    max_dynamic_tasks: int = Field(default=50, ge=0)


class RolloutSettings(Model):
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
    # Judged shadow agreement (``gateway.judged``; tasks with ``judges.tasks.<t>.pairwise``):
    # shadow pairs waiting for the judge (beyond: not judged, counted as dropped), the workers
    # asking it, and how long a shadow record waits for its verdict before it is written
    # without it (``verdict: pending``; the verdict still counts when it comes).
    judge_queue: int = Field(default=64, ge=1, le=100_000)
    judge_workers: int = Field(default=4, ge=1, le=64)
    judge_wait_s: float = Field(default=60.0, gt=0)


class FeedbackConfig(Model):
    """``POST /v1/feedback``: how a request id finds its task (see ``gateway.feedback``)."""

    # Seconds after which every replica's exchange is surely in the store: feedback on an id
    # older than this that is found nowhere is refused (404); a newer one is kept unresolved.
    unknown_after_s: float = Field(default=900.0, gt=0)
    # Request ids (and tasks) of this gateway's recent requests held in memory (0: none).
    recent_requests: int = Field(default=200_000, ge=0)
    # How long after its id was issued an exchange record may be stamped (its ``ts``): the
    # store look-up reads the hour partitions of [id time, id time + this].
    lookup_window_s: float = Field(default=600.0, gt=0)
    # Store look-ups in flight at once; more wait their turn.
    lookup_concurrency: int = Field(default=4, ge=1)


class GatewaySettings(Model):
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
    feedback: FeedbackConfig = FeedbackConfig()
    # Where the sidecar ships records: file://DIR or s3://bucket/prefix.
    store: StoreUri = DEFAULT_STORE
    # LLM judges (``core.judging``; shared with the trainer): the gateway judges the shadow
    # pairs of tasks with ``pairwise`` on. Absent: nothing is judged.
    judges: JudgesConfig = JudgesConfig()

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

    def judge_settings(self) -> JudgeSettings:
        """What ``core.judging`` needs: the judges section, the store, the teacher's endpoint."""
        teacher = TeacherRef(base_url=self.teacher.base_url, api_key=self.teacher.api_key)
        return JudgeSettings(store=self.store, judges=self.judges, teacher=teacher)

    def rollouts_by_task(self) -> dict[str, RolloutPolicy]:
        """The configured rollout of every task a route names (the default where none sets one)."""
        out: dict[str, RolloutPolicy] = {}
        for route in self.routes:
            if "rollout" in route.model_fields_set or route.task not in out:
                out[route.task] = route.rollout
        return out


# Sections of the shared config file that belong to other services.
_OTHER_SERVICES = ("sidecar", "trainer", "autopilot", "console")


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
