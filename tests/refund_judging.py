"""The refund task judged by a deterministic fake judge (``FakeJudge(rule=refund_rule)``): its
rule, the judging settings, the test sets, and a student right on half of them (for the judged
evaluation's tests)."""

from __future__ import annotations

import random
import re
from pathlib import Path
from typing import Any

import yaml

from core.judging import load_judge_settings
from tests.fake_judge import FakeJudge
from trainer import synthetic_refunds as refunds
from trainer.evaluate import Predictor
from trainer.examples import Example

TASK = "refunds"
_TAG = re.compile(r"<(\w+)>\n(.*?)\n</\1>", re.S)


def refund_rule(user: str) -> bool:
    """The judge of the refund task: pairwise by ``refunds.as_good`` (the thing read from the
    teacher's answer), else "does the answer start with a verdict?"."""
    tags = dict(_TAG.findall(user))
    if "teacher_answer" in tags:
        reference = tags["teacher_answer"]
        thing = next(t for t in refunds.THINGS if t in reference)
        return refunds.as_good(reference, tags["student_answer"], thing)
    return refunds.verdict(tags.get("answer", "")) is not None


def judge_settings(tmp_path: Path, judge: FakeJudge, **task: Any) -> Any:
    """One criterion (``verdict-first``) and the pairwise one for the refund task."""
    config = {
        "store": f"file://{tmp_path / 'store'}",
        "judges": {
            "endpoint": {"base_url": judge.base_url, "model": "judge"},
            "max_calls_per_s": 200,
            "max_concurrency": 8,
            "tasks": {TASK: {
                "criteria": [{"name": "verdict-first", "uses": ["answer"],
                              "question": "Does the answer start with Yes or No?"}],
                "pairwise": True, **task,
            }},
        },
    }  # fmt: skip
    path = tmp_path / "protege.yaml"
    path.write_text(yaml.safe_dump(config))
    return load_judge_settings(path, env={})


def refund_tests() -> dict[str, list[Example]]:
    """20 refund tickets in test-indist; test-balanced empty."""
    rng = random.Random(5)
    tickets = [refunds.ticket(rng) for _ in range(20)]
    examples = [
        Example(f"r{i}", refunds.messages(t.text), refunds.teacher_answer(t), f"g{i}")
        for i, t in enumerate(tickets)
    ]
    return {"test-indist": examples, "test-balanced": []}


def half_right(tests: dict[str, list[Example]], wrong_every: int = 2) -> Predictor:
    """Paraphrases (right) of the tickets, except every ``wrong_every``-th one (by id): a
    near copy that gets it wrong; ``wrong_every=0`` is never wrong."""
    by_id = {e.request_id: e for e in tests["test-indist"]}

    def predict(examples: list[Example]) -> list[str]:
        out = []
        for e in examples:
            t = ticket_of(by_id[e.request_id])
            wrong = wrong_every and int(e.request_id[1:]) % wrong_every
            out.append(refunds.near_copy_wrong(t) if wrong else refunds.paraphrase(t))
        return out

    return predict


def ticket_of(example: Example) -> refunds.Ticket:
    thing = next(t for t in refunds.THINGS if t in example.completion)
    return refunds.Ticket(example.messages[-1]["content"], thing, example.completion[:3] == "Yes")
