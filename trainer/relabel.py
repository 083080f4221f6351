"""``protege dataset relabel``: a snapshot's teacher answers put to a vote, as a new snapshot.

The playbook's "aggregate your teachers" (section 5): one teacher answer is noisy, the majority
of several is less so. For every example of the source snapshot (the newest unless named) whose
answer is the teacher's, the teacher is asked ``samples`` more times (temperature 1; the model
the logged request named, read from the exchange record, unless ``model`` overrides it), and:

    labels / JSON   a vote (``trainer.votes``) over the samples and the original answer; the
                    example is kept only when every field's winner has ``consensus`` of the
                    votes, with the winning values as its answer
    free text       the task's pairwise judge (``judges.tasks.<task>.pairwise``) compares every
                    answer with every other; the one judged as good as the most others wins
                    (without that judge a free-text task is refused before anything is asked)

Each example ends ``changed`` (source ``relabelled``, label read again), ``unchanged`` (the
vote agreed with the original; a human ``correction``, never asked; no model to ask; free text
the judge gave no verdict on) or ``dropped`` (no consensus, no label, a teacher error or the
call budget spent): the card's ``relabel`` section counts each, with why, per split, and
``relabel.parquet`` beside the splits records every example's outcome and agreement.

Test sets are copied from the source snapshot byte for byte, unless ``relabel_tests``: then they
are voted on too, and the card says loudly that their scores compare with no other snapshot's.
The frozen test sets of the task (``datasets/<task>/tests/``) are never touched.
"""

from __future__ import annotations

import asyncio
import tempfile
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Final

import orjson
import pyarrow as pa
import pyarrow.parquet as pq
import structlog

from core.errors import ConfigError
from core.judging import JudgeItem, JudgeSettings, opened
from core.keys import snapshot_prefix, split_key
from core.read import iter_exchanges
from core.store import Store, open_store
from trainer.card import DatasetCard, split_facts
from trainer.dataset import load_snapshot, put_snapshot, write_splits
from trainer.examples import SPLITS, TEST_SPLITS, Example, snapshot_id
from trainer.labels import extract_label
from trainer.metrics import CLASSIFICATION, TEXT, task_kind
from trainer.settings import CurationConfig, RelabelConfig
from trainer.teacher import BUDGET, Sample, Teacher
from trainer.votes import UNJUDGED, Consensus, field_consensus, label_consensus, pick

log = structlog.get_logger("trainer")

RELABELLED: Final = "relabelled"  # the source of an example whose answer the vote changed
AUDIT: Final = "relabel.parquet"  # every example's outcome, beside the snapshot's splits
CHANGED, UNCHANGED, DROPPED = "changed", "unchanged", "dropped"
_AUDIT_SCHEMA: Final = pa.schema([
    ("request_id", pa.string()), ("split", pa.string()), ("status", pa.string()),
    ("reason", pa.string()), ("agreement", pa.float64()), ("original", pa.string()),
    ("completion", pa.string()),
])  # fmt: skip


@dataclass(frozen=True)
class Options:
    """What ``protege dataset relabel`` was asked."""

    snapshot: str | None = None  # the source; None: the newest
    model: str | None = None  # None: each example's own request's model
    samples: int = 5
    consensus: float = 0.6
    relabel_tests: bool = False


@dataclass(frozen=True)
class Outcome:
    """One example's fate: the example kept (None: dropped), its status, why, the agreement."""

    example: Example | None
    status: str
    reason: str
    agreement: float | None = None


def refuse_free_text(kind: str, judges: JudgeSettings, task: str) -> None:
    """A ``ConfigError`` when ``task`` is free text and has no pairwise judge to choose with."""
    if kind == TEXT and not any(c.mode == "pairwise" for c in judges.criteria(task)):
        raise ConfigError(
            f"config: protege dataset relabel: task {task!r} is free text (its answers are "
            "neither labels nor JSON objects), so there is nothing to vote on; choosing among "
            "the teacher's answers needs the task's pairwise judge: set "
            f"judges.tasks.{task}.pairwise: true (and judges.endpoint.model)"
        )


def voted(
    example: Example,
    answers: Sequence[Sample],
    kind: str,
    curation: CurationConfig,
    consensus: float,
) -> Outcome:
    """The outcome of the vote on ``example`` given the teacher's ``answers`` (labels, JSON)."""
    failed = [s.error for s in answers if s.text is None]
    if failed:
        return Outcome(None, DROPPED, "teacher_budget" if BUDGET in failed else "teacher_error")
    texts = [s.text or "" for s in answers]
    if kind == CLASSIFICATION and curation.label is not None:
        verdict = label_consensus(example.completion, texts, curation.label, curation.classes,
                                  consensus)  # fmt: skip
    else:
        verdict = field_consensus(example.completion, texts, consensus)
    return applied(example, verdict, curation)


def applied(example: Example, verdict: Consensus, curation: CurationConfig) -> Outcome:
    """``example`` as ``verdict`` leaves it."""
    if verdict.completion is None:
        return Outcome(None, DROPPED, verdict.reason or "no_consensus", verdict.agreement)
    if verdict.completion == example.completion:
        return Outcome(example, UNCHANGED, "agreed", verdict.agreement)
    label = extract_label(verdict.completion, curation.label) if curation.label else None
    changed = replace(example, completion=verdict.completion, label=label, source=RELABELLED)
    return Outcome(changed, CHANGED, "outvoted", verdict.agreement)


@dataclass(frozen=True)
class _Job:
    """One relabelling's settings."""

    task: str
    curation: CurationConfig
    judges: JudgeSettings
    config: RelabelConfig
    options: Options


async def relabel_snapshot(
    store_uri: str,
    task: str,
    curation: CurationConfig,
    judges: JudgeSettings,
    config: RelabelConfig,
    options: Options,
    *,
    now: datetime | None = None,
) -> DatasetCard:
    """A new snapshot of ``task``: the source's examples as the teacher's vote leaves them."""
    job = _Job(task, curation, judges, config, options)
    source, splits, card = await load_snapshot(store_uri, task, options.snapshot)
    kind = task_kind(splits["train"], curation.label)
    refuse_free_text(kind, judges, task)
    names = ("train", *TEST_SPLITS) if options.relabel_tests else ("train",)
    todo = _unique(e for name in names for e in splits[name])
    asked = [e for e in todo if e.source != "correction"]
    models = await asyncio.to_thread(_models, store_uri, task, asked, options.model)
    outcomes = await _outcomes(job, asked, models, kind)
    outcomes.update({e.request_id: Outcome(e, UNCHANGED, "correction") for e in todo
                     if e.source == "correction"})  # fmt: skip
    moment = now or datetime.now(UTC)
    new = {n: [o.example for e in splits[n] if (o := outcomes[e.request_id]).example]
           for n in names}  # fmt: skip
    summary = _summary(source, kind, options, {n: splits[n] for n in names}, outcomes)
    out = replace(card, snapshot=snapshot_id(moment), created=moment.astimezone(UTC).isoformat(),
                  **split_facts({**splits, **new}), relabel=summary,
                  tests_reused=not options.relabel_tests)  # fmt: skip
    audit = _audit({n: splits[n] for n in names}, outcomes)
    await _write(store_uri, task, source, out, new, audit)
    log.info("snapshot relabelled", task=task, source=source, snapshot=out.snapshot,
             dropped=summary["dropped"], unchanged=summary["unchanged"])  # fmt: skip
    return out


def relabel_snapshot_sync(*args: Any, **kwargs: Any) -> DatasetCard:
    """``relabel_snapshot`` for callers without an event loop."""
    return asyncio.run(relabel_snapshot(*args, **kwargs))


def _unique(examples: Iterable[Example]) -> list[Example]:
    """Each request once (test-balanced repeats examples of test-indist)."""
    return list({e.request_id: e for e in examples}.values())


def _models(
    store_uri: str, task: str, examples: Sequence[Example], override: str | None
) -> dict[str, str]:
    """request id -> the model to ask: ``override``, else the model the logged request named
    (read from the task's exchanges of the examples' time span). Blocking: a worker thread."""
    if override is not None or not examples:
        return {e.request_id: override for e in examples if override is not None}
    wanted = {e.request_id for e in examples}
    since = min(e.ts for e in examples)
    until = max(e.ts for e in examples) + timedelta(microseconds=1)
    found: dict[str, str] = {}
    batches = iter_exchanges(store_uri, task=task, since=since, until=until,
                             columns=("request_id", "request"))  # fmt: skip
    for batch in batches:
        ids, requests = batch.column("request_id").to_pylist(), batch.column("request").to_pylist()
        for rid, request in zip(ids, requests, strict=True):
            if rid in wanted and isinstance(model := _model_of(request), str) and model:
                found[rid] = model
    return found


def _model_of(request: Any) -> Any:
    try:
        doc = orjson.loads(request)
    except (orjson.JSONDecodeError, TypeError):
        return None
    return doc.get("model") if isinstance(doc, dict) else None


async def _outcomes(
    job: _Job, examples: Sequence[Example], models: Mapping[str, str], kind: str
) -> dict[str, Outcome]:
    """request id -> outcome, for every example to ask the teacher about."""
    outcomes = {e.request_id: Outcome(e, UNCHANGED, "no_model") for e in examples
                if e.request_id not in models}  # fmt: skip
    if outcomes:
        log.warning("no model to ask for some examples: kept unchanged (use --model)",
                    task=job.task, examples=len(outcomes))  # fmt: skip
    asked = [e for e in examples if e.request_id in models]
    k, teacher = job.options.samples, job.judges.teacher
    async with Teacher(teacher.base_url, teacher.api_key, job.config) as client:
        answers = await asyncio.gather(
            *(client.samples(_body(e, models[e.request_id]), k) for e in asked)
        )
        usage = {"calls": client.stats.calls, "retries": client.stats.retries,
                 "errors": client.stats.errors, "skipped": client.stats.skipped}  # fmt: skip
    log.info("teacher asked again", task=job.task, examples=len(asked), **usage)
    if kind == TEXT:
        outcomes.update(await _chosen(job, asked, answers))
    else:
        consensus = job.options.consensus
        outcomes.update({e.request_id: voted(e, a, kind, job.curation, consensus)
                         for e, a in zip(asked, answers, strict=True)})  # fmt: skip
    return outcomes


def _body(example: Example, model: str) -> dict[str, Any]:
    """The request again: its messages and parameters, sampled at temperature 1."""
    return {**example.params, "model": model, "messages": example.messages, "temperature": 1}


def _pairs(count: int) -> list[tuple[int, int]]:
    return [(i, j) for i in range(count) for j in range(count) if i != j]


async def _chosen(
    job: _Job, examples: Sequence[Example], answers: Sequence[Sequence[Sample]]
) -> dict[str, Outcome]:
    """Free text: each example's answer the pairwise judge prefers (``votes.pick``)."""
    criterion = next(c for c in job.judges.criteria(job.task) if c.mode == "pairwise")
    consensus = job.options.consensus
    out: dict[str, Outcome] = {}
    batch: list[JudgeItem] = []
    places: list[tuple[Example, list[str]]] = []
    for example, samples in zip(examples, answers, strict=True):
        if any(s.text is None for s in samples):
            out[example.request_id] = voted(example, samples, TEXT, job.curation, consensus)
            continue
        candidates = [example.completion, *(s.text or "" for s in samples)]
        places.append((example, candidates))
        batch += [JudgeItem(candidates[i], request=example.messages, reference=candidates[j])
                  for i, j in _pairs(len(candidates))]  # fmt: skip
    async with opened(job.judges) as judge:
        judgements = await judge.judge_many(criterion, batch) if batch else []
    verdicts = iter(j.verdict for j in judgements)
    for example, candidates in places:
        by_pair = {pair: next(verdicts) for pair in _pairs(len(candidates))}
        best, agreement, reason = pick(len(candidates), by_pair, consensus)
        if best is None and reason == UNJUDGED:
            out[example.request_id] = Outcome(example, UNCHANGED, UNJUDGED)
            continue
        choice = Consensus(None if best is None else candidates[best], agreement, reason)
        out[example.request_id] = applied(example, choice, job.curation)
    return out


def _summary(
    source: str,
    kind: str,
    options: Options,
    splits: Mapping[str, Sequence[Example]],
    outcomes: Mapping[str, Outcome],
) -> dict[str, Any]:
    """The card's ``relabel`` section: how, and per split what changed, stayed or went."""
    per = {name: Counter(outcomes[e.request_id].status for e in examples)
           for name, examples in splits.items()}  # fmt: skip
    seen = list(outcomes.values())
    agreements = [o.agreement for o in seen if o.example is not None and o.agreement is not None]
    return {
        "from": source,
        "model": options.model or "each request's own",
        "samples": options.samples,
        "consensus": options.consensus,
        "kind": kind,
        "tests_relabelled": options.relabel_tests,
        "splits": {n: {s: c[s] for s in (CHANGED, UNCHANGED, DROPPED)} for n, c in per.items()},
        "dropped": _reasons(o for o in seen if o.status == DROPPED),
        "unchanged": _reasons(o for o in seen if o.status == UNCHANGED),
        "agreement": {
            "mean": round(sum(agreements) / len(agreements), 4) if agreements else None,
            "min": round(min(agreements), 4) if agreements else None,
            "unanimous": sum(a == 1.0 for a in agreements),
        },
    }


def _reasons(outcomes: Iterable[Outcome]) -> dict[str, int]:
    return dict(Counter(o.reason for o in outcomes).most_common())


def _audit(splits: Mapping[str, Sequence[Example]], outcomes: Mapping[str, Outcome]) -> pa.Table:
    """Every relabelled example's outcome: ``relabel.parquet``."""
    rows = []
    for name, examples in splits.items():
        for e in examples:
            o = outcomes[e.request_id]
            kept = o.example.completion if o.example else None
            rows.append({"request_id": e.request_id, "split": name, "status": o.status,
                         "reason": o.reason, "agreement": o.agreement, "original": e.completion,
                         "completion": kept})  # fmt: skip
    return pa.Table.from_pylist(rows, schema=_AUDIT_SCHEMA)


async def _write(
    store_uri: str,
    task: str,
    source: str,
    card: DatasetCard,
    new: Mapping[str, list[Example]],
    audit: pa.Table,
) -> None:
    """The new snapshot: its relabelled splits, the others copied as they are, the audit, the
    card last."""
    async with open_store(store_uri) as store:
        with tempfile.TemporaryDirectory(prefix="protege-relabel-") as tmp:
            workdir = Path(tmp)
            files = await write_splits(workdir, new, list(new))
            files.update(await _copies(store, task, source, workdir, set(SPLITS) - set(new)))
            path = workdir / AUDIT
            await asyncio.to_thread(pq.write_table, audit, path, compression="zstd")
            await store.put_file(snapshot_prefix(task, card.snapshot) + AUDIT, path)
            await put_snapshot(store, task, card.snapshot, files, card)


async def _copies(
    store: Store, task: str, source: str, workdir: Path, names: Iterable[str]
) -> dict[str, Path]:
    """The source snapshot's files of the splits ``names``, downloaded as they are."""
    files = {}
    for name in names:
        files[name] = workdir / f"source-{name}.parquet"
        await store.get_file(split_key(snapshot_prefix(task, source), name), files[name])
    return files
