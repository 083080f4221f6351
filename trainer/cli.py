"""The trainer's commands: ``protege dataset build`` / ``relabel``, ``train``, ``eval``,
``publish``.

Registering them imports nothing heavy; torch and transformers load only when one runs.
"""

from __future__ import annotations

import argparse
import asyncio
import re
from datetime import UTC, datetime
from pathlib import Path
from typing import Any


def register(sub: Any) -> None:
    """Add the trainer's subcommands to the ``protege`` parser's subparsers."""
    dataset = sub.add_parser("dataset", help="build training datasets from the logs")
    commands = dataset.add_subparsers(dest="dataset_command", required=True)
    build = commands.add_parser("build", help="curate a task's logs into a versioned snapshot")
    _common(build)
    build.add_argument("--since", type=_when, help="ISO time, inclusive (default: all)")
    build.add_argument("--until", type=_when, help="ISO time, exclusive (default: now)")
    build.add_argument("--seed", type=int, default=0)
    build.set_defaults(run=_dataset_build)
    _relabel_args(commands)

    train = sub.add_parser("train", help="build -> LoRA -> eval -> publish for a task")
    _common(train)
    _model_args(train)
    sweep = train.add_mutually_exclusive_group()
    sweep.add_argument(
        "--sweep", action="append", metavar="KEY=V1,V2,...",
        help="one run per value of one TrainConfig field, e.g. learning_rate=1e-4,2e-4; values "
        "read like --set's and win over a --set of the same key; the run with the best mean "
        "score over the test sets is kept (a tie: the later one)",
    )
    sweep.add_argument(
        "--data-fractions", type=_fractions,
        help="comma-separated shares of the data, e.g. 0.1,0.5,1: the size ablation, the same "
        "as --sweep data_fraction=... in ascending order",
    )  # fmt: skip
    train.add_argument("--no-publish", action="store_true", help="stop after the report")
    train.add_argument(
        "--nproc", type=_positive, default=1, metavar="N",
        help="data-parallel training in N processes on this machine, launched with torchrun: "
        "one per GPU with --device cuda, else N CPU processes (default 1)",
    )  # fmt: skip
    train.add_argument("--since", type=_when)
    train.add_argument("--until", type=_when)
    _autopilot_args(train)
    train.set_defaults(run=_train)

    ev = sub.add_parser("eval", help="an adapter against the zero-shot base on the test sets")
    _common(ev)
    _model_args(ev)
    ev.add_argument("--adapter", required=True, help="adapter directory or published version")
    ev.set_defaults(run=_eval)

    pub = sub.add_parser("publish", help="publish a training run's adapter to the store")
    _common(pub)
    # dest: ``run`` is the handler every subcommand sets (set_defaults) and main() calls.
    pub.add_argument("--run", dest="run_dir", required=True, type=Path,
                     help="the run directory of protege train")  # fmt: skip
    pub.set_defaults(run=_publish)


def _autopilot_args(train: argparse.ArgumentParser) -> None:
    """What the autopilot passes: the adapter to beat, and the name the run's record takes."""
    train.add_argument(
        "--champion", type=_adapter_ref, metavar="VERSION",
        help="the task's published adapter serving now (VERSION or TASK/VERSION): evaluated on "
        "the same test sets, and the student is published only if it matches it on every one",
    )  # fmt: skip
    train.add_argument(
        "--champion-margin", type=float, default=0.0, metavar="M",
        help="the lead over the champion's headline the student needs on every test set "
        "(default 0: a tie passes)",
    )  # fmt: skip
    train.add_argument(
        "--run-id", type=_run_id, metavar="R",
        help="name of this run: when it ends (published, rejected or failed) its record is "
        "written to autopilot/<task>/runs/<R>.json in the store, and protege.json says run_id",
    )  # fmt: skip


def _relabel_args(commands: Any) -> None:
    relabel = commands.add_parser(
        "relabel", help="ask the teacher again and keep the majority answer, as a new snapshot"
    )
    _common(relabel)
    relabel.add_argument("--snapshot", help="the source snapshot (default: the newest)")
    relabel.add_argument("--model", help="the teacher model to ask (default: each request's)")
    relabel.add_argument("--samples", type=_positive, default=5, metavar="K",
                         help="teacher samples per example, at temperature 1 (default 5)")
    relabel.add_argument("--consensus", type=_share, default=0.6,
                         help="least share of the votes every field's winner needs (default 0.6)")
    relabel.add_argument("--relabel-tests", action="store_true",
                         help="relabel the test sets too (their scores then compare with no "
                         "other snapshot's; default: copied unchanged)")  # fmt: skip
    relabel.set_defaults(run=_dataset_relabel)


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


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _run_id(text: str) -> str:
    from core.keys import NAME

    if re.fullmatch(NAME, text) is None:
        raise argparse.ArgumentTypeError(
            f"must be one store key component (letters, digits, _ . -; no /), got {text!r}"
        )
    return text


def _adapter_ref(text: str) -> str:
    from core.keys import ADAPTER_ID, NAME

    if re.fullmatch(NAME, text) is None and ADAPTER_ID.match(text) is None:
        raise argparse.ArgumentTypeError(f"must be VERSION or TASK/VERSION, got {text!r}")
    return text


def _share(text: str) -> float:
    value = float(text)
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"must be in (0, 1], got {value}")
    return value


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
            since=args.since, until=args.until, seed=args.seed, judges=_judges(args),
        )
    )  # fmt: skip
    print(card.to_markdown())
    return 0


def _dataset_relabel(args: argparse.Namespace) -> int:
    from trainer.relabel import Options, relabel_snapshot

    settings = _settings(args)
    options = Options(args.snapshot, args.model, args.samples, args.consensus,
                      args.relabel_tests)  # fmt: skip
    card = asyncio.run(
        relabel_snapshot(
            settings.store, args.task, settings.trainer.curation(args.task), _judges(args),
            settings.trainer.relabel, options,
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
    from trainer.sweep import as_setting

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
    return TrainConfig.from_dict({key: as_setting(key, value) for key, value in fields.items()})


def _sweep(args: argparse.Namespace, config: Any) -> Any:
    """The sweep asked for over ``config``: ``--sweep KEY=V1,...`` or ``--data-fractions``
    (ascending); None for a single run. Every run's config is checked here, before any data."""
    from core.errors import ConfigError
    from trainer.sweep import parse_sweep, sweep_of

    if args.data_fractions:
        return sweep_of("data_fraction", sorted(args.data_fractions), config)
    if not args.sweep:
        return None
    if len(args.sweep) > 1:
        raise ConfigError(f"config: one --sweep per run, got {len(args.sweep)}")
    return parse_sweep(args.sweep[0], config)


def _options(args: argparse.Namespace, config: Any = None, **extra: Any) -> Any:
    from trainer.pipeline import RunOptions

    settings = _settings(args)
    out = args.out or _default_out(args.task)
    opts = RunOptions(
        task=args.task,
        store=settings.store,
        out_dir=out,
        base_model=args.base_model,
        dataset=args.dataset,
        curation=settings.trainer.curation(args.task),
        config=config if config is not None else train_config(args.train_config, args.set),
        judges=_judges(args),
        **extra,
    )
    if args.device:
        opts.device = args.device
    return opts


def _judges(args: argparse.Namespace) -> Any:
    """The judges section of the same file (``core.judging``): the task's criteria, if any."""
    from core.judging import load_judge_settings

    return load_judge_settings(args.config, **({"store": args.store} if args.store else {}))


def _default_out(task: str) -> Path:
    return Path(".protege/runs") / task / datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")


def _train(args: argparse.Namespace) -> int:
    """``protege train``; with ``--run-id`` the run leaves its record in the store however it
    ends (``trainer.run_record``): rank 0 writes it, or, when torchrun ends without one (a rank
    died first), the process that launched it."""
    from trainer import distributed
    from trainer.run_record import RunFacts

    facts = RunFacts()
    try:
        code, world = _train_run(args, facts)
    except BaseException as exc:
        _leave_record(args, facts, exc)
        raise
    if world is None:  # the ranks ran under torchrun, their rank 0 wrote the record
        if code != 0:
            died = ChildProcessError(f"torchrun exited with status {code} before rank 0 "
                                     "wrote the run's record")  # fmt: skip
            _leave_record(args, facts, died, unless_written=True)
        return code
    _leave_record(args, facts, None)
    return distributed.leave(code, world)


def _train_run(args: argparse.Namespace, facts: Any) -> tuple[int, Any]:
    """The run's exit status and its rank's world; no world when it was launched on
    ``--nproc`` ranks under torchrun."""
    from core.errors import ConfigError
    from trainer import distributed
    from trainer.champion import Champion, champion_version
    from trainer.model import check_quantize
    from trainer.pipeline import BelowBaseline, run

    config = train_config(args.train_config, args.set)
    opts = _options(
        args, config=config, sweep=_sweep(args, config), publish=not args.no_publish,
        since=args.since, until=args.until, run_id=args.run_id, facts=facts,
    )  # fmt: skip
    if args.champion is not None:
        version = champion_version(args.task, args.champion)
        opts.champion = Champion(opts.store, args.task, version, args.champion_margin)
        facts.champion = opts.champion.adapter_id
    check_quantize(config.quantize, opts.device)  # before any data or model is loaded
    if opts.sweep is not None and config.sharding == "fsdp":
        raise ConfigError("config: sharding=fsdp trains one student a launch: drop --sweep")
    if args.nproc > 1:
        return _launch(args), None
    code = 0
    with distributed.joined(opts.device) as world:
        opts.device = distributed.rank_device(opts.device, world)
        if not world.main:
            opts.say = _silent  # rank 0 speaks for the run
        try:
            run(opts)
        except BelowBaseline as exc:
            print(f"protege: not published: {exc}")
            facts.rejected = str(exc)
            code = 3
    return code, world


def _leave_record(
    args: argparse.Namespace, facts: Any, error: BaseException | None, unless_written: bool = False
) -> None:
    """Write the run's record (``--run-id``; rank 0 of a torchrun only); a failure to is
    logged, never raised over the run's own ending."""
    import os
    import time

    from trainer import distributed
    from trainer.run_record import leave_record, record_of, recorded

    if args.run_id is None or not distributed.world_from_env(os.environ).main:
        return
    record = record_of(args.task, args.run_id, facts, error, time.time())
    try:
        store = _settings(args).store
    except Exception as exc:  # the settings may be what failed: nowhere to write the record
        leave_record(None, record, why=f"no store: {exc}")
        return
    if not (unless_written and recorded(store, args.task, args.run_id)):
        leave_record(store, record)


def _launch(args: argparse.Namespace) -> int:
    """``protege train`` again on ``--nproc`` ranks under torchrun; its exit status.

    The run directory is fixed here, so every rank agrees on it; CPU threads are shared out
    among the ranks unless OMP_NUM_THREADS says otherwise."""
    import os
    import subprocess

    from core.errors import ConfigError
    from trainer import distributed

    if distributed.world_from_env(os.environ).distributed:
        raise ConfigError("config: --nproc: this process is already one rank of a torchrun")
    argv = list(args.argv)
    if args.out is None:
        argv += ["--out", str(_default_out(args.task))]
    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // args.nproc)))
    return subprocess.run(distributed.launch_command(args.nproc, argv), env=env).returncode


def _silent(_: str) -> None:
    return None


def _eval(args: argparse.Namespace) -> int:
    from trainer.adapter_eval import evaluate_adapter

    evaluation, _ = evaluate_adapter(_options(args), args.adapter)
    return 0 if evaluation.student_beats_baseline else 3


def _publish(args: argparse.Namespace) -> int:
    from trainer.pipeline import BelowBaseline, publish_run

    try:
        published = publish_run(args.run_dir, _settings(args).store, args.task)
    except BelowBaseline as exc:
        print(f"protege: not published: {exc}")
        return 3
    print(published.uri)
    return 0
