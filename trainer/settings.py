"""How a task's data is curated: the ``trainer.tasks.<task>`` section of the shared config file.

    trainer:
      tasks:
        tickets:
          label: {json_path: "$.category"}        # or {regex: "^(spam|ham)"}; omit for free text
          classes: [billing, bug, other]           # expected labels (others are dropped)
          balance: true                            # cap every class at the rarest one's count
          min_prompt_chars: 1
          max_prompt_chars: 20000
          max_completion_chars: 8000
          must_match: []                           # RE2 patterns the completion must match
          must_not_match: []                       # ...and must not
          refusal_phrases: ["I can't help", ...]   # teacher refusals are dropped
          near_duplicate_distance: 3               # SimHash bits; -1 turns near-dedup off
          max_per_group: 200                       # cap per user, so power users don't dominate
          test_fraction: 0.1                       # share of groups held out for test-indist
          test_balanced_per_class: 50              # size of test-balanced per class
          corrections: s3://bucket/corrections/tickets.parquet   # request_id -> gold output
          feedback: true                           # use the applications' feedback (below)
          negative_labels: [bad, wrong, incorrect, thumbs_down, negative]
          negative_score_below: 0                  # null: scores never make feedback negative
      relabel:                                     # protege dataset relabel (RelabelConfig)
        max_concurrency: 4
        max_calls_per_s: 5
        max_calls: 20000

Feedback (``POST /v1/feedback``, read from the store's ``feedback/`` table): an exchange with
negative feedback is dropped (``negative_feedback``) unless it has a correction. Feedback is
negative when its label, case-folded, is one of ``negative_labels``, or its score is strictly
below ``negative_score_below`` (default 0: a score under 0 is negative, 0 and above are not).
A feedback ``correction`` is a gold output like those of the ``corrections`` file, which wins
where both correct one request.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from pydantic import Field, model_validator

from core.settings import DEFAULT_STORE, Model, StoreUri, gather, validate

DEFAULT_REFUSALS = (
    "I can't help with",
    "I cannot help with",
    "I can't assist with",
    "I cannot assist with",
    "I'm sorry, but I can't",
    "I am sorry, but I cannot",
    "As an AI language model",
)

DEFAULT_NEGATIVE_LABELS = ("bad", "wrong", "incorrect", "thumbs_down", "negative")


class LabelRule(Model):
    """Where a classification label is read from the teacher's answer."""

    # A simple JSON path into the answer parsed as JSON: $.field or $.a.b
    json_path: str | None = Field(default=None, pattern=r"^\$(\.[A-Za-z0-9_-]+)+$")
    # Or the first capture group (else the whole match) of an RE2 pattern.
    regex: str | None = None

    @model_validator(mode="after")
    def _exactly_one(self) -> LabelRule:
        if (self.json_path is None) == (self.regex is None):
            raise ValueError("set exactly one of json_path or regex")
        return self


class CurationConfig(Model):
    label: LabelRule | None = None
    classes: tuple[str, ...] = ()
    balance: bool = False
    min_prompt_chars: int = Field(default=1, ge=0)
    max_prompt_chars: int = Field(default=20_000, ge=1)
    min_completion_chars: int = Field(default=1, ge=0)
    max_completion_chars: int = Field(default=8_000, ge=1)
    must_match: tuple[str, ...] = ()
    must_not_match: tuple[str, ...] = ()
    refusal_phrases: tuple[str, ...] = DEFAULT_REFUSALS
    near_duplicate_distance: int = Field(default=3, ge=-1, le=16)
    max_per_group: int = Field(default=200, ge=1)
    test_fraction: float = Field(default=0.1, ge=0.0, lt=1.0)
    test_balanced_per_class: int = Field(default=50, ge=0)
    corrections: str | None = None
    # Applications' feedback: drop what they call bad, learn their corrections (module doc).
    feedback: bool = True
    negative_labels: tuple[str, ...] = DEFAULT_NEGATIVE_LABELS
    negative_score_below: float | None = 0.0


class RelabelConfig(Model):
    """How ``protege dataset relabel`` asks the teacher again (``trainer.relabel``): the
    ``trainer.relabel`` section. The teacher's endpoint is the ``teacher`` section's."""

    # Teacher calls in flight at once, and call starts per second (retries included).
    max_concurrency: int = Field(default=4, ge=1, le=256)
    max_calls_per_s: float = Field(default=5.0, gt=0)
    # Calls one run may send; the examples whose samples were not sent are dropped, counted.
    max_calls: int = Field(default=20_000, ge=0)
    # Retries of one call on a failed connect, a 429 or a 5xx; backoff doubles from base.
    max_retries: int = Field(default=3, ge=0, le=10)
    retry_base_s: float = Field(default=0.5, gt=0)
    retry_max_s: float = Field(default=30.0, gt=0)
    # Seconds to open a connection, and of silence while waiting for an answer.
    connect_timeout_s: float = Field(default=5.0, gt=0)
    read_timeout_s: float = Field(default=120.0, gt=0)


class TrainerConfig(Model):
    """The ``trainer`` section."""

    tasks: dict[str, CurationConfig] = Field(default_factory=dict)
    relabel: RelabelConfig = RelabelConfig()

    def curation(self, task: str) -> CurationConfig:
        return self.tasks.get(task, CurationConfig())


class TrainerSettings(Model):
    store: StoreUri = DEFAULT_STORE
    trainer: TrainerConfig = TrainerConfig()


def load_trainer_settings(
    path: str | os.PathLike[str] | None = None,
    env: Mapping[str, str] | None = None,
    **overrides: Any,
) -> TrainerSettings:
    """The trainer's settings (``store`` and ``trainer``) from the shared file and environment."""
    data = gather(path, env, overrides)
    return validate(TrainerSettings, {k: v for k, v in data.items() if k in ("store", "trainer")})
