"""A task's rollout policy: which backend answers it, how far the student is trusted, and when
the gateway takes that trust back on its own.

The policy is set per task in the config file (``routes[i].rollout``) and changed at runtime
through the admin API (``gateway.admin``); both are validated by these models, so a bad value
names its key either way. Modes, from least to most student::

    teacher   the teacher answers; every exchange is logged for training
    shadow    the teacher answers; a sample of requests also goes to the student in the
              background, and the two answers are scored against each other
    canary    ``percent`` of requests (sticky per user) go to the student, the rest the teacher
    hybrid    the student answers what it should handle (input not drifted, within limits);
              an answer failing the output checks is replaced by the teacher's
    student   the student answers everything; the teacher only when the student fails

A ``challenger`` adapter may be proven beside the ``adapter`` (the champion) whatever the mode:
both are asked in the background about a sample of the requests the teacher answers, scored
against the teacher, and the challenger takes the champion's place once it is as good
(``challenge``; decided in ``gateway.challenge``).
"""

from __future__ import annotations

from typing import Any, Final, Literal

from jsonschema import Draft202012Validator, SchemaError
from pydantic import Field, field_validator, model_validator

from core.keys import NAME
from core.settings import KeyProblem, Model, re2_pattern

Mode = Literal["teacher", "shadow", "canary", "hybrid", "student"]
MODES: Final[tuple[Mode, ...]] = ("teacher", "shadow", "canary", "hybrid", "student")
# Modes in which the student answers some client requests (and so can be stepped back).
ANSWERING: Final = frozenset({"canary", "hybrid", "student"})

# Phrases that mark an answer as a refusal (matched case-insensitively anywhere in the text).
REFUSALS: Final = (
    "i can't help with",
    "i cannot help with",
    "i can't assist with",
    "i cannot assist with",
    "i'm sorry, but i can",
    "i am unable to",
    "as an ai language model",
)


class OutputChecksConfig(Model):
    """Checks every student answer must pass. A failure is counted per check; in hybrid mode
    the teacher answers instead."""

    # The answer must be JSON (also required whenever the request's response_format asks for it).
    json_object: bool = False
    # A JSON schema the answer must satisfy when the request's response_format carries none.
    json_schema: dict[str, Any] | None = None
    # RE2 patterns the answer's text must each contain / must none contain.
    must_match: tuple[str, ...] = ()
    must_not_match: tuple[str, ...] = ()
    # Longest answer accepted, in characters.
    max_chars: int | None = Field(default=None, ge=1)
    # An answer with neither text nor a tool call fails.
    non_empty: bool = True
    # Case-insensitive phrases that mark a refusal; empty turns the check off.
    refusal_phrases: tuple[str, ...] = REFUSALS

    @field_validator("must_match", "must_not_match")
    @classmethod
    def _patterns_compile(cls, values: tuple[str, ...]) -> tuple[str, ...]:
        return tuple(re2_pattern(v) for v in values)

    @field_validator("json_schema")
    @classmethod
    def _schema_is_valid(cls, value: dict[str, Any] | None) -> dict[str, Any] | None:
        if value is not None:
            try:
                Draft202012Validator.check_schema(value)
            except SchemaError as exc:
                raise ValueError(f"is not a valid JSON schema: {exc.message}") from exc
        return value


class GuardrailsConfig(Model):
    """When the rollout steps back to shadow on its own (judged over the policy's window)."""

    enabled: bool = True
    # Fewest student answers (or shadow scores) in the window before a rate is judged.
    min_samples: int = Field(default=20, ge=1)
    # Share of student calls failing (errors, timeouts, unreadable answers).
    max_error_rate: float = Field(default=0.05, ge=0, le=1)
    # Share of student answers failing an output check.
    max_check_failure_rate: float = Field(default=0.10, ge=0, le=1)
    # Mean shadow agreement below which a task is not fit to answer.
    min_agreement: float = Field(default=0.80, ge=0, le=1)


class PromotionStep(Model):
    """One automatic step up; taken when a full window passes with every guardrail held."""

    mode: Literal["shadow", "canary", "hybrid", "student"]
    percent: float = Field(default=100.0, ge=0, le=100)


class ChallengeConfig(Model):
    """How a challenger is proven beside the champion on live traffic (``gateway.challenge``)."""

    # The challenger's mean agreement with the teacher must reach the champion's plus this.
    margin: float = Field(default=0.0, ge=-1, le=1)
    # Scored answers each side needs in the window before the two are compared.
    min_samples: int = Field(default=50, ge=1)
    # Seconds after the challenge began without a win when the challenger is retired.
    deadline_s: float = Field(default=86400.0, gt=0, allow_inf_nan=False)
    # Share of the requests the teacher answers that both students are also asked about.
    percent: float = Field(default=100.0, ge=0, le=100)
    # At most this many challenge samples a second, per gateway replica (each costs two
    # background student calls, or one where the request's shadow call is the champion's).
    max_per_s: float = Field(default=5.0, gt=0, allow_inf_nan=False)


class RolloutPolicy(Model):
    """How one task's traffic is split between the teacher and its student."""

    mode: Mode = "teacher"
    # canary: share of requests (by hashed user, else client) the student answers.
    percent: float = Field(default=0.0, ge=0, le=100)
    # The task's student: a published adapter <task>/<version>, the model LoRAX is asked for.
    adapter: str | None = Field(default=None, pattern=f"^{NAME}/{NAME}$")
    # A published adapter <task>/<version> proven beside ``adapter`` (see ``challenge``);
    # None: no challenge. Set by the autopilot; cleared when it is promoted or retired.
    challenger: str | None = Field(default=None, pattern=f"^{NAME}/{NAME}$")
    challenge: ChallengeConfig = ChallengeConfig()
    # shadow: share of requests also sent to the student (in shadow mode only).
    shadow_percent: float = Field(default=100.0, ge=0, le=100)
    # shadow: at most this many of the task's shadow calls a second, per gateway replica (its
    # workers share it); None: no cap. A shadow call costs a busy gateway about as much CPU as
    # a client's request: the cap bounds that cost whatever the traffic, and still scores 3,000
    # answers per replica in a 5-minute window.
    shadow_max_per_s: float | None = Field(default=10.0, gt=0, allow_inf_nan=False)
    # Seconds of traffic the guardrails, the shadow agreement and the live drift profile see.
    window_s: float = Field(default=300.0, ge=10, le=86400)
    # hybrid: input drift (PSI or JS of any feature) above which the teacher answers.
    drift_threshold: float = Field(default=0.1, gt=0)
    # hybrid: longest prompt (characters) the student is asked; None: the reference's longest.
    max_prompt_chars: int | None = Field(default=None, ge=1)
    checks: OutputChecksConfig = OutputChecksConfig()
    guardrails: GuardrailsConfig = GuardrailsConfig()
    # Steps taken one by one while the guardrails hold; empty: promotion is the operator's.
    auto_promote: tuple[PromotionStep, ...] = ()

    @model_validator(mode="after")
    def _student_has_adapter(self) -> RolloutPolicy:
        if self.mode != "teacher" and self.adapter is None:
            raise KeyProblem("adapter", f"is required when mode is {self.mode!r}")
        return self

    @model_validator(mode="after")
    def _challenger_has_a_champion(self) -> RolloutPolicy:
        if self.challenger is None:
            return self
        if self.adapter is None:
            raise KeyProblem("challenger", "needs an adapter (the champion) to be proven beside")
        if self.challenger == self.adapter:
            raise KeyProblem("challenger", f"must differ from the adapter, got {self.adapter!r}")
        return self

    @property
    def student_share(self) -> float:
        """The percent of requests the student answers (the ``protege_rollout_percent``)."""
        if self.mode == "canary":
            return self.percent
        return 100.0 if self.mode in ("hybrid", "student") else 0.0
