"""A challenger proven beside the champion on live traffic: the duel's evidence and its outcome.

While a task's policy names a ``challenger``, a sample of the requests the teacher answers is
also put to both students in the background (``gateway.shadow``); each answer is scored
against the teacher's (a failed call scores 0) into the task's ``Duel``, one window per side
over the policy's ``window_s``. The challenger's scores never reach the guardrail window that
judges the champion. ``outcome`` is the decision, pure: promote once both sides have
``min_samples`` scores and the challenger's mean reaches the champion's plus ``margin``;
retire once ``deadline_s`` passed since the challenge began without that.
"""

from __future__ import annotations

from typing import Final, Literal

from core.live import Scores
from gateway.guard import Stats, Window
from gateway.policy import RolloutPolicy

Role = Literal["champion", "challenger"]
ROLES: Final[tuple[Role, ...]] = ("champion", "challenger")
Outcome = Literal["promote", "retire"]
# Rounding slack in ``challenger >= champion + margin`` (means are sums over counts).
_SLACK: Final = 1e-9


def outcome(
    policy: RolloutPolicy, champion: Stats, challenger: Stats, elapsed_s: float
) -> Outcome | None:
    """What becomes of the policy's challenger after ``elapsed_s`` seconds of challenge with
    these scores over the window; None: the duel goes on (or there is none)."""
    if policy.challenger is None:
        return None
    c = policy.challenge
    ours, theirs = champion.mean_agreement, challenger.mean_agreement
    enough = champion.scored >= c.min_samples and challenger.scored >= c.min_samples
    if enough and ours is not None and theirs is not None and theirs + _SLACK >= ours + c.margin:
        return "promote"
    if elapsed_s >= c.deadline_s:
        return "retire"
    return None


def figures(champion: Stats, challenger: Stats) -> dict[str, float | int | None]:
    """Both sides' means and counts, as an event's figures."""
    return {
        "champion_agreement": _rounded(champion.mean_agreement),
        "champion_samples": champion.scored,
        "challenger_agreement": _rounded(challenger.mean_agreement),
        "challenger_samples": challenger.scored,
    }


def summary(policy: RolloutPolicy, champion: Stats, challenger: Stats) -> str:
    """One line: both sides' means and counts (the rollout change's reason, the event's)."""
    return (
        f"challenger {policy.challenger} agreement {_text(challenger)} vs champion "
        f"{policy.adapter} {_text(champion)} (margin {policy.challenge.margin:g})"
    )


def _text(stats: Stats) -> str:
    mean = stats.mean_agreement
    return f"{'n/a' if mean is None else f'{mean:.3f}'} over {stats.scored}"


def _rounded(value: float | None) -> float | None:
    return None if value is None else round(value, 4)


class Duel:
    """The scores of one champion and one challenger over the window (the clock passed in)."""

    def __init__(self, champion: str, challenger: str, window_s: float) -> None:
        self.adapters: dict[Role, str] = {"champion": champion, "challenger": challenger}
        self.window_s = window_s
        self._windows: dict[Role, Window] = {role: Window(window_s) for role in ROLES}

    def matches(self, policy: RolloutPolicy) -> bool:
        """Whether this duel is the one ``policy`` asks for (else a new one starts)."""
        return (
            self.adapters["champion"] == policy.adapter
            and self.adapters["challenger"] == policy.challenger
            and self.window_s == policy.window_s
        )

    def scored(self, now: float, role: Role, score: float) -> None:
        self._windows[role].scored(now, score)

    def stats(self, now: float, role: Role) -> Stats:
        return self._windows[role].stats(now)

    def scores(self, now: float, role: Role) -> Scores:
        stats = self.stats(now, role)
        return Scores(self.adapters[role], stats.scored, stats.mean_agreement)
