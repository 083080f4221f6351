"""The report's section on how the student is to be served: its greedy and traffic-sampled
scores, the decoding policy chosen from them and the learned output schema
(``trainer.decoding``)."""

from __future__ import annotations

import json
from typing import Any

from trainer.evaluate import EvalResult
from trainer.markdown import EMPTY, NONE, block, fmt, table
from trainer.metrics import SetScores


def serving_section(result: EvalResult, serving: dict[str, Any]) -> str:
    decoding = serving["decoding"]
    basis = decoding["basis"]
    greedy, sampled = result.greedy_headline, result.sampled_headline
    rows = [
        [name, str(_n(by)), fmt(greedy.get(name)), fmt(sampled.get(name)),
         NONE if name not in sampled else f"{sampled[name] - greedy[name]:+.3f}"]
        if _n(by) else [name, "0", EMPTY, EMPTY, EMPTY]
        for name, by in result.scores.items()
    ]  # fmt: skip
    traffic = basis["traffic"]
    mix = ", ".join(f"{t}: {share:.0%}" for t, share in traffic["temperature"].items())
    temperature = decoding["temperature"]
    policy = [
        "- temperature when the client sets none: "
        + ("not set (the provider's default)" if temperature is None else f"`{temperature:g}`")
        + f" ({basis['why']})",
        f"- max_tokens when the client sets none: `{decoding['max_tokens']}` (the longest "
        f"training answer, {basis['longest_answer_tokens']} tokens, with a margin)",
        "- an explicit temperature is capped: "
        + ("no" if decoding["max_temperature"] is None else f"at {decoding['max_temperature']}"),
    ]
    return "\n\n".join(
        [
            "## Serving: decoding policy and output schema",
            "The student decoded greedily, and sampling as the task's traffic does (each test "
            "example with its own request's temperature and top_p; unset counts as the "
            "provider's default, 1):",
            table(["test set", "n", "greedy", "sampled as the traffic", "difference"], rows),
            f"Traffic: {traffic['requests']} requests, temperature unset in "
            f"{traffic['temperature_unset']:.0%} (temperature: {mix or NONE}).",
            "Decoding policy (published with the adapter; the gateway applies it to student "
            "calls, to what a client leaves unset):\n" + "\n".join(policy),
            _schema_lines(serving),
        ]
    )


def _schema_lines(serving: dict[str, Any]) -> str:
    fit, schema = serving.get("output_schema_fit"), serving.get("output_schema")
    if fit is None:
        return "Output schema: none (the teacher's answers are not all JSON objects or arrays)."
    share = f"accepts {fit['accepted']} of the {fit['examples']} training answers"
    if schema is None:
        return f"Output schema: not published, it {share} (it must accept all)."
    text = json.dumps(schema, indent=2, ensure_ascii=False)
    return f"Output schema (published; the student is held to it), {share}:\n\n" + block(text)


def _n(by_model: dict[str, SetScores]) -> int:
    return max((s.n for s in by_model.values()), default=0)
