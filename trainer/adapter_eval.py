"""``protege eval``: an adapter, trained here or published, against the zero-shot base on a
snapshot's test sets, with the report ``protege train`` writes (no training, no publication)."""

from __future__ import annotations

import asyncio
from pathlib import Path

from trainer.dataset import load_snapshot
from trainer.decoding import serving_manifest
from trainer.evaluate import EvalResult, evaluate
from trainer.examples import TEST_SPLITS
from trainer.model import default_dtype, load_adapter, load_base, resolve_base
from trainer.pipeline import BASELINE, RunOptions, judged_for, say_eval
from trainer.predictors import answer_budget, cached, greedy_predictor, sampled_predictor
from trainer.publish import download_adapter
from trainer.report import write_report


def evaluate_adapter(opts: RunOptions, adapter: str) -> tuple[EvalResult, Path]:
    """``protege eval``: an adapter (a directory, or a published version) against the baseline
    on the snapshot's test sets; writes the report into ``opts.out_dir``."""
    opts.out_dir.mkdir(parents=True, exist_ok=True)
    snapshot, splits, _ = asyncio.run(load_snapshot(opts.store, opts.task, opts.dataset))
    tests = {name: splits[name] for name in TEST_SPLITS}
    folder = Path(adapter)
    if not folder.is_dir():
        folder = asyncio.run(
            download_adapter(opts.store, opts.task, adapter, opts.out_dir / "adapter")
        )
    base, tokenizer = load_base(
        resolve_base(opts.base_model),
        dtype=default_dtype(opts.device, opts.config.bf16),
        device=opts.device,
    )
    max_new = answer_budget(tokenizer, tests, opts.config.eval_max_new_tokens)
    baseline = cached(greedy_predictor(base, tokenizer, max_new, opts.config), tests)
    student = load_adapter(base, folder).to(opts.device)
    predictors = {
        "student": greedy_predictor(student, tokenizer, max_new, opts.config),
        BASELINE: baseline,
    }
    evaluation = evaluate(
        tests, predictors, label_rule=opts.curation.label,
        sampled=sampled_predictor(student, tokenizer, max_new, opts.config),
    )  # fmt: skip
    serving = serving_manifest(evaluation, splits, tokenizer)
    judged, shortfalls = judged_for(opts, tests, evaluation)
    report = write_report(
        evaluation, opts.out_dir, task=opts.task, snapshot=snapshot, serving=serving,
        judged=judged, shortfalls=shortfalls,
    )  # fmt: skip
    say_eval(opts, evaluation)
    opts.say(f"[report] {report}")
    return evaluation, report
