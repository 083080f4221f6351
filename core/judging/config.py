"""The ``judges`` section of the shared config file: which LLM judges free-text answers, how
fast and how much it may be asked, and the criteria of each task.

    judges:
      endpoint:                       # any OpenAI-compatible API; default: the teacher's
        base_url: https://api.openai.com/v1
        model: gpt-4o                 # required once a task has criteria
        api_key_env: PROTEGE_JUDGE_API_KEY
      max_concurrency: 4              # judge calls in flight at once
      max_calls_per_s: 5              # judge calls started per second (retries included)
      budget: {calls: 2000, tokens: 2000000}   # per run; once spent the rest is skipped
      price_per_1k_tokens: 0.0        # for the cost estimate
      tasks:
        ticket-summary:
          criteria:
            - name: faithful
              question: "Does the answer state only facts found in the request?"
              uses: [request, answer]          # what the judge sees: request, answer, reference
              min_agreement: 0.8               # calibrated agreement below this flags it
          pairwise: true                       # "is the student's answer as good as the teacher's?"
          pairwise_min_agreement: 0.8          # (the built-in criterion "as-good-as-teacher")
          shadow_percent: 100                  # gateway: share of shadow pairs judged pairwise
          shadow_max_per_s: 2                  # gateway: at most this many a second per replica
          publish_min: {as-good-as-teacher: 0.9}   # publish only at these student pass rates

The gateway reads this section too: in shadow mode it asks a task's pairwise criterion about
a sample of shadow pairs, and its guardrails judge the pass rate (``gateway.judged``).

The endpoint's key is read from the environment variable ``api_key_env``; when it is unset and
the judge is the teacher's own endpoint, the teacher's key (``teacher.api_key``) is used — never
sent to any other host. A bad value is a ``ConfigError`` naming its key, e.g.
``config: judges.tasks.ticket-summary.criteria[0].uses must name answer, got ['request']``.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    ConfigDict,
    Field,
    SecretStr,
    StrictBool,
    field_validator,
    model_validator,
)

from core.errors import ConfigError
from core.keys import NAME
from core.settings import DEFAULT_STORE, KeyProblem, Model, StoreUri, gather, validate

Use = Literal["request", "answer", "reference"]
# The name of the built-in pairwise criterion of a task with ``pairwise`` on.
PAIRWISE = "as-good-as-teacher"
# The teacher's default endpoint (``gateway.config.TeacherConfig``).
TEACHER_DEFAULT_URL = "https://api.openai.com/v1"


def _http_url(value: str) -> str:
    if not (value.startswith(("http://", "https://")) and len(value.split("/")[2]) > 0):
        raise ValueError("must be an http(s) URL such as https://api.openai.com/v1")
    return value.rstrip("/")


HttpUrl = Annotated[str, AfterValidator(_http_url)]
Name = Annotated[str, Field(pattern=f"^{NAME}$")]


class EndpointConfig(Model):
    """The judge's OpenAI-compatible API."""

    # None: the teacher's base_url.
    base_url: HttpUrl | None = None
    # The model asked to judge; part of every criterion's version.
    model: str | None = Field(default=None, min_length=1)
    # Environment variable holding the judge's API key.
    api_key_env: str = Field(default="PROTEGE_JUDGE_API_KEY", pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")
    # Seconds to open a connection, and of silence while waiting for the verdict.
    connect_timeout_s: float = Field(default=5.0, gt=0)
    read_timeout_s: float = Field(default=120.0, gt=0)


class BudgetConfig(Model):
    """What one run (one ``Judge``) may spend; judgements past it are skipped, never passed."""

    calls: int = Field(default=2000, ge=0)
    tokens: int = Field(default=2_000_000, ge=0)
    # A long-running gateway's allowance renews every this many seconds (a trainer's run has
    # one allowance); past it, shadow pairs are skipped until the next period.
    gateway_period_s: float = Field(default=3600.0, gt=0, allow_inf_nan=False)


class CriterionConfig(Model):
    """A named pass/fail question about an answer."""

    name: Name
    question: str = Field(min_length=1)
    uses: tuple[Use, ...] = ("request", "answer")
    min_agreement: float = Field(default=0.8, ge=0.0, le=1.0)

    @field_validator("uses")
    @classmethod
    def _uses(cls, uses: tuple[Use, ...]) -> tuple[Use, ...]:
        if "answer" not in uses:
            raise ValueError("must name answer")
        if len(set(uses)) != len(uses):
            raise ValueError("must name each of request, answer, reference at most once")
        return uses


class TaskJudging(Model):
    criteria: tuple[CriterionConfig, ...] = ()
    # Judge the student's answer against the teacher's too: the built-in criterion
    # "as-good-as-teacher" ("is the student's answer as good as the teacher's?").
    pairwise: StrictBool = False
    pairwise_min_agreement: float = Field(default=0.8, ge=0.0, le=1.0)
    # The gateway, in shadow mode: the share of the task's shadow pairs (student and teacher
    # answers to one request) it asks the pairwise criterion about, off the request path...
    shadow_percent: float = Field(default=100.0, ge=0.0, le=100.0)
    # ...and at most this many of them a second, per gateway replica (more are not judged).
    shadow_max_per_s: float = Field(default=2.0, gt=0, allow_inf_nan=False)
    # The publish rule: criterion name (the pairwise one included) -> the student's lowest pass
    # rate on every test set; empty: the judges report but do not decide publication.
    publish_min: dict[str, Annotated[float, Field(ge=0.0, le=1.0)]] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _publish_min_names_criteria(self) -> TaskJudging:
        names = {c.name for c in self.criteria} | ({PAIRWISE} if self.pairwise else set())
        for name in self.publish_min:
            if name not in names:
                raise KeyProblem(
                    f"publish_min.{name}", f"names no criterion of the task ({sorted(names)})"
                )
        return self

    @field_validator("criteria")
    @classmethod
    def _unique(cls, criteria: tuple[CriterionConfig, ...]) -> tuple[CriterionConfig, ...]:
        seen: set[str] = set()
        for i, criterion in enumerate(criteria):
            if criterion.name in seen or criterion.name == PAIRWISE:
                raise KeyProblem(f"{i}.name", f"{criterion.name!r} is taken")
            seen.add(criterion.name)
        return criteria


class JudgesConfig(Model):
    """The ``judges`` section."""

    endpoint: EndpointConfig = EndpointConfig()
    max_concurrency: int = Field(default=4, ge=1, le=256)
    max_calls_per_s: float = Field(default=5.0, gt=0)
    budget: BudgetConfig = BudgetConfig()
    price_per_1k_tokens: float = Field(default=0.0, ge=0)
    # Retries of one judgement on a connect error, 429 or 5xx; backoff doubles from retry_base_s.
    max_retries: int = Field(default=3, ge=0, le=10)
    retry_base_s: float = Field(default=0.5, gt=0)
    retry_max_s: float = Field(default=30.0, gt=0)
    # New judgements are written to the store at least every this many (and at a batch's end).
    flush_every: int = Field(default=200, ge=1)
    tasks: dict[str, TaskJudging] = Field(default_factory=dict)

    @field_validator("tasks")
    @classmethod
    def _task_names(cls, tasks: dict[str, TaskJudging]) -> dict[str, TaskJudging]:
        for name in tasks:
            if not re.fullmatch(NAME, name):
                raise KeyProblem(name, "is not a task name (letters, digits, _ . -)")
        return tasks

    @model_validator(mode="after")
    def _model_named(self) -> JudgesConfig:
        if self.endpoint.model is None and any(
            t.criteria or t.pairwise for t in self.tasks.values()
        ):
            raise KeyProblem("endpoint.model", "is required once a task has criteria")
        return self


class TeacherRef(Model):
    """What the judge borrows of the ``teacher`` section (its other keys are the gateway's)."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    base_url: HttpUrl = TEACHER_DEFAULT_URL
    api_key: SecretStr | None = None


@dataclass(frozen=True)
class Endpoint:
    """Where judge calls go, resolved from the settings and the environment."""

    base_url: str
    model: str
    api_key: SecretStr | None
    connect_timeout_s: float
    read_timeout_s: float


@dataclass(frozen=True)
class Criterion:
    """A criterion ready to judge with: the config of one task's criterion and the judge model.

    ``mode`` is ``single`` (the question about one answer) or ``pairwise`` (the student's answer,
    ``answer``, against the teacher's, ``reference``)."""

    task: str
    name: str
    question: str
    uses: tuple[Use, ...]
    min_agreement: float
    model: str
    mode: Literal["single", "pairwise"] = "single"


class JudgeSettings(Model):
    """What judging needs of the shared config file: the store, the judges, the teacher."""

    store: StoreUri = DEFAULT_STORE
    judges: JudgesConfig = JudgesConfig()
    teacher: TeacherRef = TeacherRef()

    def endpoint(self, env: Mapping[str, str] | None = None) -> Endpoint:
        """The judge's endpoint; its key from ``env`` (default: this process's environment)."""
        config = self.judges.endpoint
        env = os.environ if env is None else env
        base_url = config.base_url or self.teacher.base_url
        key = env.get(config.api_key_env)
        api_key = SecretStr(key) if key else None
        if api_key is None and base_url == self.teacher.base_url:
            api_key = self.teacher.api_key
        if config.model is None:
            raise ConfigError("config: judges.endpoint.model is required to judge")
        return Endpoint(
            base_url, config.model, api_key, config.connect_timeout_s, config.read_timeout_s
        )

    def criteria(self, task: str) -> list[Criterion]:
        """Every criterion of ``task``, the pairwise one (when on) last."""
        judging = self.judges.tasks.get(task, TaskJudging())
        model = self.judges.endpoint.model or ""
        out = [
            Criterion(task, c.name, c.question, c.uses, c.min_agreement, model)
            for c in judging.criteria
        ]
        if judging.pairwise:
            out.append(pairwise_criterion(task, model, judging.pairwise_min_agreement))
        return out

    def criterion(self, task: str, name: str) -> Criterion:
        """The criterion ``name`` of ``task``, or a ``ConfigError`` naming the key."""
        for criterion in self.criteria(task):
            if criterion.name == name:
                return criterion
        if task not in self.judges.tasks:
            raise ConfigError(f"config: judges.tasks.{task} is not configured")
        raise ConfigError(f"config: judges.tasks.{task}.criteria has no criterion {name!r}")


def pairwise_criterion(task: str, model: str, min_agreement: float) -> Criterion:
    """The built-in pairwise criterion of ``task``: ``answer`` is the student's, ``reference``
    the teacher's."""
    question = "Is the student's answer as good as the teacher's answer for this request?"
    uses: tuple[Use, ...] = ("request", "reference", "answer")
    return Criterion(task, PAIRWISE, question, uses, min_agreement, model, "pairwise")


def load_judge_settings(
    path: str | os.PathLike[str] | None = None,
    env: Mapping[str, str] | None = None,
    **overrides: Any,
) -> JudgeSettings:
    """Judging's settings (``store``, ``judges``, ``teacher``) from the shared file and the
    environment."""
    data = gather(path, env, overrides)
    wanted = ("store", "judges", "teacher")
    return validate(JudgeSettings, {k: v for k, v in data.items() if k in wanted})
