"""``protege train``: dataset → LoRA → evaluation against the naive baseline (and the champion,
``trainer.champion``) → publication.

Reads top to bottom: data, model and baseline, training and evaluation (one run, or one per
value of a swept setting, ``trainer.sweep``), report, publication, the report to the store
(``trainer.report_store``). Everything a run produced lands in its run directory (adapter,
report, plots, ``run.json``; for a sweep also ``sweep.json`` and every run's adapter under
``sweep/``), so ``protege publish --run DIR`` can publish it later exactly as it was judged.
"""

from __future__ import annotations

import asyncio
import json
import platform
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import torch

from core.judging import JudgeSettings
from trainer import distributed
from trainer.champion import Champion, measure, standing
from trainer.config import TrainConfig
from trainer.dataset import build_snapshot, load_snapshot
from trainer.decoding import serving_manifest
from trainer.errors import BelowBaseline, BelowChampion
from trainer.evaluate import EvalResult, evaluate
from trainer.examples import TEST_SPLITS, Example
from trainer.judged import Judged, judge_for_publication
from trainer.loop import TrainResult, train
from trainer.model import (
    as_trained,
    attach_lora,
    default_dtype,
    load_adapter,
    load_base,
    place,
    resolve_base,
    save_adapter,
)
from trainer.predictors import (
    Predictor,
    answer_budget,
    cached,
    greedy_predictor,
    sampled_predictor,
)
from trainer.publish import Published, publish, reference_profile
from trainer.report import mark_published, write_report
from trainer.report_store import report_location, store_report
from trainer.run_record import RunFacts
from trainer.settings import CurationConfig
from trainer.sharding import full_lora_state
from trainer.sweep import SWEEP_DIR, SWEEP_FILE, Sweep, kept_run, sweep_row, sweep_table

RUN_FILE = "run.json"
BASELINE = "base (zero-shot)"


@dataclass
class RunOptions:
    task: str
    store: str
    out_dir: Path
    base_model: str = "smollm2"
    dataset: str | None = None  # a snapshot id; None builds a new one from the logs
    curation: CurationConfig = field(default_factory=CurationConfig)
    config: TrainConfig = field(default_factory=TrainConfig)
    sweep: Sweep | None = None  # one run per value of one setting; None: one run of config
    device: str = field(default_factory=lambda: "cuda" if torch.cuda.is_available() else "cpu")
    publish: bool = True
    judges: JudgeSettings | None = None  # the task's LLM judges (the config's judges section)
    since: datetime | None = None
    until: datetime | None = None
    say: Callable[[str], None] = print  # progress, for a person
    champion: Champion | None = None  # the adapter serving now, to be matched
    run_id: str | None = None  # the autopilot's name for this run, in protege.json
    facts: RunFacts = field(default_factory=RunFacts)  # what the run's record will say


@dataclass
class RunResult:
    snapshot: str
    adapter_dir: Path
    report: Path
    evaluation: EvalResult
    training: TrainResult
    sweep: dict[str, Any] | None  # sweep.json's content; None for a single run
    published: Published | None


def run(opts: RunOptions) -> RunResult | None:
    """The whole run. Under data-parallel training (``trainer.distributed``) every rank loads
    the data and the base and trains; rank 0 alone builds the snapshot, evaluates, writes and
    publishes, and the other ranks return None once trained."""
    world = distributed.current()
    if world.main:
        opts.out_dir.mkdir(parents=True, exist_ok=True)

    # Data: a fresh snapshot of the task's logs, or the one asked for.
    snapshot, splits = _data(opts, world)
    train_set, tests = splits["train"], {name: splits[name] for name in TEST_SPLITS}
    sizes = ", ".join(f"{len(v)} {k}" for k, v in tests.items())
    opts.say(f"[data] snapshot {snapshot}: {len(train_set)} train, {sizes}")
    if not train_set:
        raise ValueError(f"snapshot {snapshot} of task {opts.task} has no training example")

    # Model: the base, loaded once. The naive baseline is that base answering zero-shot; its
    # (greedy, deterministic) answers are computed once, before any adapter touches the base;
    # so are the champion's, on the same base, which then comes back bare (trainer.champion).
    # A base to be sharded over the ranks is read into host memory and sharded from there.
    ref = resolve_base(opts.base_model)
    sharded = opts.config.sharding == "fsdp" and world.distributed
    opts.say(f"[model] {ref.model_id} on {opts.device}" + (" (sharded)" if sharded else ""))
    base, tokenizer = load_base(
        ref, dtype=default_dtype(opts.device, opts.config.bf16),
        device="cpu" if sharded else opts.device, quantize=opts.config.quantize,
    )  # fmt: skip
    max_new = answer_budget(tokenizer, tests, opts.config.eval_max_new_tokens)
    baseline, champion = None, {}  # only rank 0 evaluates; a sharded run does so afterwards
    if world.main and not sharded:
        baseline = cached(greedy_predictor(base, tokenizer, max_new, opts.config), tests)
        champion, base = measure(opts.champion, base, tokenizer, tests, max_new, opts.config)

    # Training: one run, or one per value of the swept setting on the same base and test sets;
    # the kept run is the one with the best mean headline over the test sets (trainer.sweep).
    bench = _Bench(tokenizer, train_set, tests, baseline, champion)
    trials = [t for t in _train_runs(opts, base, bench) if t is not None]
    if not world.main:
        return None
    kept, sweep = _keep(opts, trials)

    # Serving: how the student decodes when a client does not say (chosen from its greedy and
    # sampled scores), and the shape of a valid answer, learned from the teacher's.
    serving = serving_manifest(kept.evaluation, splits, tokenizer)

    # Judges: the task's LLM criteria on the test sets (free text's real signal), if any.
    judged, shortfalls = judged_for(opts, tests, kept.evaluation)
    against = standing(opts.champion, kept.evaluation, judged)
    opts.facts.note_kept(kept.training, kept.evaluation, judged)

    # Report: report with plots, run.json (the manifest publication uses) of the kept run.
    report = write_report(
        kept.evaluation, opts.out_dir, task=opts.task, snapshot=snapshot,
        loss_curve=[(p.step, p.loss) for p in kept.training.curve], sweep=sweep,
        serving=serving, judged=judged, shortfalls=shortfalls,
        champion_shortfalls=against["champion_shortfalls"],
    )  # fmt: skip
    manifest = _manifest(ref.model_id, snapshot, kept, sweep) | against | {
        "run_id": opts.run_id, "prompt_template": tokenizer.chat_template,
        "input_profile": reference_profile(train_set), **serving,
        "judged": None if judged is None else judged.to_dict(), "judged_shortfalls": shortfalls,
    }  # fmt: skip
    (opts.out_dir / RUN_FILE).write_bytes(orjson.dumps(manifest, option=orjson.OPT_INDENT_2))
    opts.say(f"[report] {report}")

    # Publication (only of a student beating the naive baseline), then, either way, the report.
    try:
        published = publish_run(opts.out_dir, opts.store, opts.task) if opts.publish else None
        if published is not None:
            opts.facts.published = published.adapter_id
            opts.say(f"[publish] {published.uri}")
    finally:
        store_report(opts, kept.evaluation)
    return RunResult(
        snapshot, kept.adapter, report, kept.evaluation, kept.training, sweep, published
    )


@dataclass(frozen=True)
class _Bench:
    """What every run of a sweep shares: the tokenizer, the data and the baseline's answers."""

    tokenizer: Any
    train_set: list[Example]
    tests: dict[str, list[Example]]
    baseline: Predictor | None  # None on ranks that do not evaluate
    champion: dict[str, Predictor]  # its name -> its answers; empty without one


@dataclass(frozen=True)
class _Trial:
    """One training run: its config (LoRA layers named), results and saved adapter."""

    config: TrainConfig
    training: TrainResult
    evaluation: EvalResult
    adapter: Path


def _train_runs(opts: RunOptions, base: Any, bench: _Bench) -> list[_Trial | None]:
    """Train and evaluate each run in turn on ``base``, saving each adapter once evaluated, so
    memory holds one student at a time: a sweep's runs go to ``sweep/<KEY>=<value>/adapter``,
    a single run straight to ``adapter``."""
    sweep = opts.sweep
    configs = sweep.configs if sweep else (opts.config,)
    trials: list[_Trial | None] = []
    student: Any = None
    for index, cfg in enumerate(configs):
        if student is not None:
            base = student.unload()  # the bare base again, for a fresh adapter
        student = attach_lora(base, cfg)
        named = f"{sweep.name(index)} ({index + 1}/{len(configs)}), " if sweep else ""
        opts.say(f"[train] {named}LoRA r={cfg.lora_r}")
        folder = opts.out_dir / SWEEP_DIR / sweep.name(index) if sweep else opts.out_dir
        trials.append(_train_one(opts, student, bench, cfg, folder / "adapter"))
    return trials


def _train_one(
    opts: RunOptions, student: Any, bench: _Bench, cfg: TrainConfig, adapter: Path
) -> _Trial | None:
    """Train ``student`` with ``cfg``, evaluate it against the baseline on the test sets, and
    save its adapter to ``adapter`` (only training, on a rank that does not evaluate)."""
    tok = bench.tokenizer
    training = train(student, tok, bench.train_set, cfg, device=opts.device, say=opts.say)
    if training.memory.get("sharded"):
        return _sharded_trial(opts, student, bench, cfg, adapter, training)
    if bench.baseline is None:
        return None
    opts.say(
        f"[train] {training.steps} steps on {training.examples} examples, loss "
        f"{training.curve[0].loss:.3f} -> {training.final_loss:.3f}, "
        f"{training.tokens_per_s:,.0f} tokens/s"
    )
    max_new = answer_budget(tok, bench.tests, cfg.eval_max_new_tokens)
    predictors = {"student": greedy_predictor(student, tok, max_new, cfg), BASELINE: bench.baseline,
                  **bench.champion}  # fmt: skip
    evaluation = evaluate(
        bench.tests, predictors, label_rule=opts.curation.label,
        sampled=sampled_predictor(student, tok, max_new, cfg), contenders=list(bench.champion),
    )  # fmt: skip
    say_eval(opts, evaluation)
    save_adapter(student, adapter, config=cfg)
    return _Trial(as_trained(student, cfg), training, evaluation, adapter)


def _sharded_trial(
    opts: RunOptions,
    student: Any,
    bench: _Bench,
    cfg: TrainConfig,
    adapter: Path,
    training: TrainResult,
) -> _Trial | None:
    """A student trained sharded: its LoRA weights gathered whole (a collective: every rank),
    saved by rank 0, which then evaluates the saved adapter on a whole base of its own, spread
    over the machine's GPUs, against that base's zero-shot answers (and the champion's)."""
    state = full_lora_state(student)
    if not distributed.current().main:
        return None
    save_adapter(student, adapter, config=cfg, state_dict=state)
    trained = as_trained(student, cfg)
    place(student, "cpu")  # this rank's shards off the device, for the whole base
    dtype = default_dtype(opts.device, cfg.bf16)
    base, tok = load_base(resolve_base(opts.base_model), dtype=dtype, device=opts.device,
                          spread=True)  # fmt: skip
    max_new = answer_budget(tok, bench.tests, cfg.eval_max_new_tokens)
    baseline = cached(greedy_predictor(base, tok, max_new, cfg), bench.tests)
    champion, base = measure(opts.champion, base, tok, bench.tests, max_new, cfg)
    whole = load_adapter(base, adapter)
    predictors = {"student": greedy_predictor(whole, tok, max_new, cfg), BASELINE: baseline,
                  **champion}  # fmt: skip
    evaluation = evaluate(
        bench.tests, predictors, label_rule=opts.curation.label,
        sampled=sampled_predictor(whole, tok, max_new, cfg), contenders=list(champion),
    )  # fmt: skip
    say_eval(opts, evaluation)
    return _Trial(trained, training, evaluation, adapter)


def _keep(opts: RunOptions, trials: list[_Trial]) -> tuple[_Trial, dict[str, Any] | None]:
    """The run kept, its adapter in ``adapter``; with a sweep, also the sweep's record, written
    to ``sweep.json`` and printed as a table."""
    sweep = _sweep_record(opts, trials)
    if sweep is None:
        return trials[0], None
    chosen = trials[sweep["kept"]]
    kept = replace(chosen, adapter=opts.out_dir / "adapter")
    _replace_dir(chosen.adapter, kept.adapter)
    (opts.out_dir / SWEEP_FILE).write_bytes(orjson.dumps(sweep, option=orjson.OPT_INDENT_2))
    opts.say(sweep_table(sweep))
    return kept, sweep


def _sweep_record(opts: RunOptions, trials: list[_Trial]) -> dict[str, Any] | None:
    """``sweep.json``'s content (``key``, ``kept``, ``rows``); None without a sweep."""
    if opts.sweep is None:
        return None
    rows = [
        sweep_row(value, t.training, t.evaluation.greedy_headline,
                  t.adapter.relative_to(opts.out_dir).as_posix())
        for value, t in zip(opts.sweep.values, trials, strict=True)
    ]
    return {"key": opts.sweep.key, "kept": kept_run(rows), "rows": rows}


def _replace_dir(source: Path, target: Path) -> None:
    """``target`` becomes a copy of ``source`` (nothing of an earlier run left in it)."""
    if target.exists():
        shutil.rmtree(target)
    shutil.copytree(source, target)


def _manifest(
    base_model: str, snapshot: str, kept: _Trial, sweep: dict[str, Any] | None
) -> dict[str, Any]:
    """What ``protege.json`` says about a run (prompt template and profile are added)."""
    return {
        "base_model": base_model,
        "dataset_snapshot": snapshot,
        "hyperparameters": kept.config.to_dict(),
        "training": {k: v for k, v in kept.training.to_dict().items() if k != "curve"},
        "metrics": kept.evaluation.to_dict(),
        "beats_baseline": kept.evaluation.student_beats_baseline,
        "sweep": sweep,
        "environment": {"torch": torch.__version__, "python": platform.python_version()},
        "trained": datetime.now(UTC).isoformat(),
    }


def publish_run(run_dir: Path, store: str, task: str) -> Published:
    """Publish a run's adapter with its manifest; refuse one that lost to the baseline, missed
    the judges' rule or does not match its champion."""
    manifest = json.loads((run_dir / RUN_FILE).read_text())
    if not manifest.get("beats_baseline"):
        raise BelowBaseline(
            f"the student of {run_dir} does not beat the zero-shot base model on every test "
            "set; see its report.md (publish anyway is not offered: fix the data or training)"
        )
    if manifest.get("judged_shortfalls"):
        raise BelowBaseline(
            f"the student of {run_dir} misses the judges' publish rule: "
            + "; ".join(manifest["judged_shortfalls"]) + " (see its report.md)"
        )
    if manifest.get("beats_champion") is False:
        raise BelowChampion(
            f"the student of {run_dir} does not match the champion {manifest['champion']}: "
            + "; ".join(manifest["champion_shortfalls"]) + " (see its report.md)"
        )
    manifest["report"] = report_location(task, run_dir, manifest.get("run_id"))
    published = asyncio.run(publish(store, task, run_dir / "adapter", manifest))
    mark_published(run_dir / "report.md", published.version)
    return published


def _data(opts: RunOptions, world: distributed.World) -> tuple[str, dict[str, list[Example]]]:
    """The snapshot's splits: the one asked for, or one rank 0 builds now for every rank."""
    if opts.dataset is None and world.main:
        card = asyncio.run(
            build_snapshot(
                opts.store, opts.task, opts.curation, since=opts.since, until=opts.until,
                seed=opts.config.seed, judges=opts.judges,
            )
        )  # fmt: skip
        opts.say(f"[data] built snapshot {card.snapshot} from {card.records_in} records")
        snapshot: str | None = card.snapshot
    else:
        snapshot = opts.dataset
    snapshot = distributed.broadcast(snapshot, world)
    found, splits, card = asyncio.run(load_snapshot(opts.store, opts.task, snapshot))
    opts.facts.note_data(found, splits, card.records_in if opts.dataset is None else None)
    return found, splits


def judged_for(
    opts: RunOptions, tests: dict[str, list[Example]], evaluation: EvalResult
) -> tuple[Judged | None, list[str] | None]:
    """The judges' verdicts and publish-rule shortfalls (``trainer.judged``); None without."""
    if opts.judges is None:
        return None, None
    return judge_for_publication(opts.judges, opts.task, tests, evaluation, opts.say)


def say_eval(opts: RunOptions, evaluation: EvalResult) -> None:
    """The evaluation's headline in one line, for a person."""
    greedy = ", ".join(f"{k} {v:.3f}" for k, v in evaluation.greedy_headline.items()) or "n/a"
    sampled = ", ".join(f"{k} {v:.3f}" for k, v in evaluation.sampled_headline.items())
    opts.say(f"[eval] {greedy}" + (f" (sampled as the traffic: {sampled})" if sampled else ""))
