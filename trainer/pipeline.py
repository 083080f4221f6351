"""``protege train``: dataset → LoRA → evaluation against the naive baseline → publication.

Reads top to bottom: data, model and baseline, training (one run per data fraction for the
size ablation), evaluation, report, publication. Everything a run produced lands in its run
directory (adapter, report, plots, ``run.json``), so ``protege publish --run DIR`` can publish
it later exactly as it was judged.
"""

from __future__ import annotations

import asyncio
import json
import platform
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import torch

from trainer.config import TrainConfig
from trainer.dataset import build_snapshot, load_snapshot
from trainer.evaluate import EvalResult, evaluate
from trainer.examples import TEST_SPLITS, Example
from trainer.generate import generate
from trainer.loop import TrainResult, train
from trainer.model import as_trained, attach_lora, load_base, resolve_base, save_adapter
from trainer.publish import Published, publish, reference_profile
from trainer.report import write_report
from trainer.settings import CurationConfig

RUN_FILE = "run.json"
BASELINE = "base (zero-shot)"
Predictor = Callable[[list[Example]], list[str]]


class BelowBaseline(Exception):
    """The student does not beat the naive baseline; it is not published."""


@dataclass
class RunOptions:
    task: str
    store: str
    out_dir: Path
    base_model: str = "smollm2"
    dataset: str | None = None  # a snapshot id; None builds a new one from the logs
    curation: CurationConfig = field(default_factory=CurationConfig)
    config: TrainConfig = field(default_factory=TrainConfig)
    data_fractions: Sequence[float] = (1.0,)
    device: str = field(default_factory=lambda: "cuda" if torch.cuda.is_available() else "cpu")
    publish: bool = True
    since: datetime | None = None
    until: datetime | None = None
    say: Callable[[str], None] = print  # progress, for a person


@dataclass
class RunResult:
    snapshot: str
    adapter_dir: Path
    report: Path
    evaluation: EvalResult
    training: TrainResult
    ablation: list[dict[str, Any]]
    published: Published | None


def run(opts: RunOptions) -> RunResult:
    opts.out_dir.mkdir(parents=True, exist_ok=True)

    # Data: a fresh snapshot of the task's logs, or the one asked for.
    snapshot, splits = _data(opts)
    train_set, tests = splits["train"], {name: splits[name] for name in TEST_SPLITS}
    sizes = ", ".join(f"{len(v)} {k}" for k, v in tests.items())
    opts.say(f"[data] snapshot {snapshot}: {len(train_set)} train, {sizes}")
    if not train_set:
        raise ValueError(f"snapshot {snapshot} of task {opts.task} has no training example")

    # Model: the base, loaded once. The naive baseline is that base answering zero-shot; its
    # (greedy, deterministic) answers are computed once, before any adapter touches the base.
    ref = resolve_base(opts.base_model)
    opts.say(f"[model] {ref.model_id} on {opts.device}")
    base, tokenizer = load_base(ref, device=opts.device)
    max_new = _answer_budget(tokenizer, tests, opts.config.eval_max_new_tokens)
    baseline = _cached(_predictor(base, tokenizer, max_new, opts.config), tests)

    # Training: one run per data fraction; the last (largest) student is the one kept.
    ablation: list[dict[str, Any]] = []
    student: Any = None
    for fraction in sorted(opts.data_fractions):
        cfg = replace(opts.config, data_fraction=fraction)
        if student is not None:
            base = student.unload()  # the bare base again, for a fresh adapter
        student = attach_lora(base, cfg)
        opts.say(f"[train] {fraction:g} of the data, LoRA r={cfg.lora_r}")
        training = train(student, tokenizer, train_set, cfg, device=opts.device, say=opts.say)
        opts.say(
            f"[train] {training.steps} steps on {training.examples} examples, loss "
            f"{training.curve[0].loss:.3f} -> {training.final_loss:.3f}, "
            f"{training.tokens_per_s:,.0f} tokens/s"
        )
        predictors = {"student": _predictor(student, tokenizer, max_new, cfg), BASELINE: baseline}
        evaluation = evaluate(tests, predictors, label_rule=opts.curation.label)
        ablation.append(_ablation_row(fraction, training, evaluation))
        opts.say("[eval] " + ", ".join(f"{k} {v:.3f}" for k, v in _headline(evaluation).items()))

    # Report: adapter, report with plots, run.json (the manifest publication uses).
    adapter_dir = save_adapter(student, opts.out_dir / "adapter", config=cfg)
    report = write_report(
        evaluation, opts.out_dir, task=opts.task, snapshot=snapshot,
        loss_curve=[(p.step, p.loss) for p in training.curve],
        ablation=ablation if len(ablation) > 1 else None,
    )  # fmt: skip
    trained = as_trained(student, cfg)
    manifest = _manifest(ref.model_id, snapshot, trained, training, evaluation, ablation)
    manifest["prompt_template"] = tokenizer.chat_template
    manifest["input_profile"] = reference_profile(train_set)
    (opts.out_dir / RUN_FILE).write_bytes(orjson.dumps(manifest, option=orjson.OPT_INDENT_2))
    if len(ablation) > 1:
        opts.say(ablation_table(ablation))
    opts.say(f"[report] {report}")

    # Publication: only an adapter that beats the naive baseline.
    published = publish_run(opts.out_dir, opts.store, opts.task) if opts.publish else None
    if published is not None:
        opts.say(f"[publish] {published.uri}")
    return RunResult(snapshot, adapter_dir, report, evaluation, training, ablation, published)


def _manifest(
    base_model: str,
    snapshot: str,
    cfg: TrainConfig,
    training: TrainResult,
    evaluation: EvalResult,
    ablation: list[dict[str, Any]],
) -> dict[str, Any]:
    """What ``protege.json`` says about a run (prompt template and profile are added)."""
    return {
        "base_model": base_model,
        "dataset_snapshot": snapshot,
        "hyperparameters": cfg.to_dict(),
        "training": {k: v for k, v in training.to_dict().items() if k != "curve"},
        "metrics": evaluation.to_dict(),
        "beats_baseline": evaluation.student_beats_baseline,
        "ablation": ablation,
        "environment": {"torch": torch.__version__, "python": platform.python_version()},
        "trained": datetime.now(UTC).isoformat(),
    }


def publish_run(run_dir: Path, store: str, task: str) -> Published:
    """Publish a run's adapter with its manifest; refuse one that lost to the baseline."""
    manifest = json.loads((run_dir / RUN_FILE).read_text())
    if not manifest.get("beats_baseline"):
        raise BelowBaseline(
            f"the student of {run_dir} does not beat the zero-shot base model on every test "
            "set; see its report.md (publish anyway is not offered: fix the data or training)"
        )
    return asyncio.run(publish(store, task, run_dir / "adapter", manifest))


def _data(opts: RunOptions) -> tuple[str, dict[str, list[Example]]]:
    if opts.dataset is None:
        card = asyncio.run(
            build_snapshot(
                opts.store, opts.task, opts.curation, since=opts.since, until=opts.until,
                seed=opts.config.seed,
            )
        )  # fmt: skip
        opts.say(f"[data] built snapshot {card.snapshot} from {card.records_in} records")
        snapshot: str | None = card.snapshot
    else:
        snapshot = opts.dataset
    found, splits, _ = asyncio.run(load_snapshot(opts.store, opts.task, snapshot))
    return found, splits


def _predictor(model: Any, tokenizer: Any, max_new: int, cfg: TrainConfig) -> Predictor:
    def predict(examples: list[Example]) -> list[str]:
        return generate(
            model, tokenizer, examples, max_new_tokens=max_new, batch_size=cfg.eval_batch_size
        )

    return predict


def _cached(predict: Predictor, tests: dict[str, list[Example]]) -> Predictor:
    """``predict``'s answers to every test example, computed now and served from memory."""
    answers: dict[str, str] = {}
    for examples in tests.values():
        if examples:
            answers.update(zip((e.request_id for e in examples), predict(examples), strict=True))

    def cached(examples: list[Example]) -> list[str]:
        return [answers[e.request_id] for e in examples]

    return cached


def _answer_budget(tokenizer: Any, tests: dict[str, list[Example]], cap: int) -> int:
    """New tokens to generate: the longest reference answer plus slack, within ``cap``."""
    longest = max(
        (len(tokenizer(e.completion, add_special_tokens=False)["input_ids"])
         for examples in tests.values() for e in examples),
        default=cap,
    )  # fmt: skip
    return min(cap, int(longest * 1.5) + 8)


def _headline(evaluation: EvalResult) -> dict[str, float]:
    """Student headline per non-empty test set."""
    return {
        name: by_model["student"]
        for name, by_model in evaluation.headline.items()
        if "student" in by_model
    }


def _ablation_row(fraction: float, training: TrainResult, ev: EvalResult) -> dict[str, Any]:
    return {"fraction": fraction, "train_examples": training.examples, **_headline(ev)}


def ablation_table(rows: list[dict[str, Any]]) -> str:
    """The dataset-size ablation as a plain-text table."""
    sets = [k for k in rows[0] if k not in ("fraction", "train_examples")]
    lines = ["fraction  examples  " + "  ".join(f"{s:>14}" for s in sets)]
    for row in rows:
        scores = "  ".join(f"{row.get(s, float('nan')):>14.3f}" for s in sets)
        lines.append(f"{row['fraction']:>8g}  {row['train_examples']:>8}  {scores}")
    return "\n".join(lines)


def evaluate_adapter(opts: RunOptions, adapter: str) -> tuple[EvalResult, Path]:
    """``protege eval``: an adapter (a directory, or a published version) against the baseline
    on the snapshot's test sets; writes the report into ``opts.out_dir``."""
    from trainer.model import load_adapter
    from trainer.publish import download_adapter

    opts.out_dir.mkdir(parents=True, exist_ok=True)
    snapshot, splits, _ = asyncio.run(load_snapshot(opts.store, opts.task, opts.dataset))
    tests = {name: splits[name] for name in TEST_SPLITS}
    folder = Path(adapter)
    if not folder.is_dir():
        folder = asyncio.run(
            download_adapter(opts.store, opts.task, adapter, opts.out_dir / "adapter")
        )
    base, tokenizer = load_base(resolve_base(opts.base_model), device=opts.device)
    max_new = _answer_budget(tokenizer, tests, opts.config.eval_max_new_tokens)
    baseline = _cached(_predictor(base, tokenizer, max_new, opts.config), tests)
    student = load_adapter(base, folder).to(opts.device)
    predictors = {
        "student": _predictor(student, tokenizer, max_new, opts.config),
        BASELINE: baseline,
    }
    evaluation = evaluate(tests, predictors, label_rule=opts.curation.label)
    report = write_report(evaluation, opts.out_dir, task=opts.task, snapshot=snapshot)
    opts.say("[eval] " + ", ".join(f"{k} {v:.3f}" for k, v in _headline(evaluation).items()))
    opts.say(f"[report] {report}")
    return evaluation, report
