"""The trainer's commands: ``protege dataset build``, ``train``, ``eval``, ``publish``.

Registering them imports nothing heavy; torch and transformers load only when one runs.
"""

from __future__ import annotations

import argparse
import asyncio
from datetime import UTC, datetime
from pathlib import Path
from typing import Any


def register(sub: Any) -> None:
    """Add the trainer's subcommands to the ``protege`` parser's subparsers."""
    dataset = sub.add_parser("dataset", help="build training datasets from the logs")
    build = dataset.add_subparsers(dest="dataset_command", required=True).add_parser(
        "build", help="curate a task's logs into a versioned snapshot"
    )
    _common(build)
    build.add_argument("--since", type=_when, help="ISO time, inclusive (default: all)")
    build.add_argument("--until", type=_when, help="ISO time, exclusive (default: now)")
    build.add_argument("--seed", type=int, default=0)
    build.set_defaults(run=_dataset_build)

    train = sub.add_parser("train", help="build -> LoRA -> eval -> publish for a task")
    _common(train)
    _model_args(train)
    train.add_argument(
        "--data-fractions", type=_fractions, default=(1.0,),
        help="comma-separated shares of the data, e.g. 0.1,0.5,1: runs the size ablation",
    )  # fmt: skip
    train.add_argument("--no-publish", action="store_true", help="stop after the report")
    train.add_argument("--since", type=_when)
    train.add_argument("--until", type=_when)
    train.set_defaults(run=_train)

    ev = sub.add_parser("eval", help="an adapter against the zero-shot base on the test sets")
    _common(ev)
    _model_args(ev)
    ev.add_argument("--adapter", required=True, help="adapter directory or published version")
    ev.set_defaults(run=_eval)

    pub = sub.add_parser("publish", help="publish a training run's adapter to the store")
    _common(pub)
    pub.add_argument("--run", required=True, type=Path, help="the run directory of protege train")
    pub.set_defaults(run=_publish)


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--task", required=True)
    p.add_argument("--config", help="YAML settings file (store, trainer.tasks.<task>)")
    p.add_argument("--store", help="store URI (default: from config / PROTEGE_STORE)")


def _model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dataset", help="snapshot id (default: build one / the newest)")
    p.add_argument("--base-model", default="smollm2", help="smollm2, a model dir or a .gguf")
    p.add_argument("--out", type=Path, help="run directory (default: .protege/runs/...)")
    p.add_argument("--device", help="cpu, cuda, cuda:1 ... (default: cuda if present)")
    p.add_argument("--train-config", type=Path, help="YAML/JSON of TrainConfig fields")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override one TrainConfig field, e.g. --set epochs=2")  # fmt: skip


def _when(text: str) -> datetime:
    moment = datetime.fromisoformat(text)
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def _fractions(text: str) -> tuple[float, ...]:
    values = tuple(float(x) for x in text.split(",") if x.strip())
    if not values or any(not 0 < v <= 1 for v in values):
        raise argparse.ArgumentTypeError("fractions must be in (0, 1], e.g. 0.1,0.5,1")
    return values


def _settings(args: argparse.Namespace) -> Any:
    from trainer.settings import load_trainer_settings

    return load_trainer_settings(args.config, **({"store": args.store} if args.store else {}))


def _dataset_build(args: argparse.Namespace) -> int:
    from trainer.dataset import build_snapshot

    settings = _settings(args)
    card = asyncio.run(
        build_snapshot(
            settings.store, args.task, settings.trainer.curation(args.task),
            since=args.since, until=args.until, seed=args.seed,
        )
    )  # fmt: skip
    print(card.to_markdown())
    return 0


def train_config(path: Path | None, overrides: list[str]) -> Any:
    """A ``TrainConfig`` from a YAML/JSON file of its fields, then ``KEY=VALUE`` overrides
    (values read as YAML scalars: ``epochs=2``, ``bf16=true``, ``lora_r=8``)."""
    import yaml

    from core.errors import ConfigError
    from trainer.config import TrainConfig

    fields: dict[str, Any] = {}
    if path is not None:
        loaded = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"config: {path} must hold a mapping of training settings")
        fields.update(loaded)
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep:
            raise ConfigError(f"config: --set {item!r} must be KEY=VALUE")
        fields[key.strip()] = yaml.safe_load(value)
    defaults = TrainConfig()
    for key, value in fields.items():
        # YAML reads 2e-4 (no dot) as a string; a float setting takes it as the number it is.
        if isinstance(getattr(defaults, key, None), float) and isinstance(value, str | int):
            try:
                fields[key] = float(value)
            except ValueError as exc:
                raise ConfigError(f"config: {key} must be a number, got {value!r}") from exc
    return TrainConfig.from_dict(fields)


def _options(args: argparse.Namespace, **extra: Any) -> Any:
    from trainer.pipeline import RunOptions

    settings = _settings(args)
    out = args.out or Path(".protege/runs") / args.task / datetime.now(UTC).strftime(
        "%Y%m%dT%H%M%SZ"
    )
    opts = RunOptions(
        task=args.task,
        store=settings.store,
        out_dir=out,
        base_model=args.base_model,
        dataset=args.dataset,
        curation=settings.trainer.curation(args.task),
        config=train_config(args.train_config, args.set),
        **extra,
    )
    if args.device:
        opts.device = args.device
    return opts


def _train(args: argparse.Namespace) -> int:
    from trainer.pipeline import BelowBaseline, run

    opts = _options(
        args, data_fractions=args.data_fractions, publish=not args.no_publish,
        since=args.since, until=args.until,
    )  # fmt: skip
    try:
        run(opts)
    except BelowBaseline as exc:
        print(f"protege: not published: {exc}")
        return 3
    return 0


def _eval(args: argparse.Namespace) -> int:
    from trainer.pipeline import evaluate_adapter

    evaluation, _ = evaluate_adapter(_options(args), args.adapter)
    return 0 if evaluation.student_beats_baseline else 3


def _publish(args: argparse.Namespace) -> int:
    from trainer.pipeline import BelowBaseline, publish_run

    try:
        published = publish_run(args.run, _settings(args).store, args.task)
    except BelowBaseline as exc:
        print(f"protege: not published: {exc}")
        return 3
    print(published.uri)
    return 0
