"""The evaluation report a person reads before an adapter is published.

``write_report`` writes into one folder::

    report.md      headline student vs baselines (and the champion), the student against the
                   champion, every metric, per-class or per-field tables, the student's worst
                   mistakes, what the task's LLM judges said, the loss
                   curve, the sweep, and how the student is to be served (greedy vs sampled
                   scores, decoding policy, output schema)
    scores.png     headline per test set, grouped bars per predictor
    loss.png       training loss by step (when a loss curve is given)
    sweep.png      headline per test set by value of the swept setting (when a sweep is given)

Plots are drawn on matplotlib's Agg canvas directly: no display, no pyplot global state.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, Final

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from trainer.evaluate import EvalResult
from trainer.judged import Judged
from trainer.markdown import EMPTY, NONE, block, code, fmt, table
from trainer.metrics import ExampleRecord, SetScores
from trainer.report_judged import judged_section
from trainer.report_serving import serving_section
from trainer.sweep import shown

# Most rows of the loss table (the plot has every point).
LOSS_ROWS: Final = 20
_UNPUBLISHED = "- adapter version: `unpublished`"


def write_report(
    result: EvalResult,
    out_dir: Path,
    *,
    task: str,
    snapshot: str,
    adapter_version: str | None = None,
    loss_curve: list[tuple[int, float]] | None = None,
    sweep: dict[str, Any] | None = None,
    serving: dict[str, Any] | None = None,
    judged: Judged | None = None,
    shortfalls: Sequence[str] | None = None,
    champion_shortfalls: Sequence[str] | None = None,
) -> Path:
    """Write ``report.md`` and its plots into ``out_dir``; return the report's path.

    ``sweep`` is ``sweep.json``'s content (``trainer.sweep``): the swept ``key``, the index of
    the ``kept`` run (the one ``result`` evaluates) and a row per run with its ``value``, the
    headline per test set under ``scores``, ``train_examples``, ``train_s``, ``tokens_per_s``
    and ``peak_memory_gb``. ``serving`` is what ``trainer.decoding.serving_manifest`` adds to
    ``protege.json``: ``decoding``, ``output_schema``, ``output_schema_fit``. ``judged`` is
    what the task's LLM judges said (``trainer.judged``), ``shortfalls`` what keeps the student
    from publication under their publish rule (None: no such rule). ``champion_shortfalls``
    is what keeps it from replacing the champion (``trainer.champion``; None: no champion).
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    sections = [
        _summary(result, task, snapshot, adapter_version, sweep),
        _champion_section(result, champion_shortfalls),
        _metrics_section(result),
        *(_set_details(result, name) for name in result.scores),
        _mistakes_section(result),
        judged_section(judged, shortfalls) if judged else "",
        serving_section(result, serving) if serving else "",
    ]
    plot_scores(result, out_dir / "scores.png")
    if loss_curve:
        plot_loss(loss_curve, out_dir / "loss.png")
        sections.append(_loss_section(loss_curve))
    if sweep:
        plot_sweep(sweep, list(result.scores), result.headline_metric, out_dir / "sweep.png")
        sections.append(_sweep_section(sweep))
    path = out_dir / "report.md"
    path.write_text("\n\n".join(s for s in sections if s) + "\n", encoding="utf-8")
    return path


def _summary(
    result: EvalResult, task: str, snapshot: str, version: str | None, sweep: dict[str, Any] | None
) -> str:
    verdict = "yes" if result.student_beats_baseline else "**no**"
    header = ["test set", "n", *result.models, "student - best baseline"]
    rows = []
    for name, row in headline_table(result)["sets"].items():
        scores, lead = row["scores"], row["student_minus_best_baseline"]
        cells = [fmt(scores.get(m)) if scores else EMPTY for m in result.models]
        delta = EMPTY if scores is None else NONE if lead is None else f"{lead:+.3f}"
        rows.append([name, str(row["n"]), *cells, delta])
    return "\n\n".join(
        [
            f"# Evaluation: {task}",
            f"- dataset snapshot: `{snapshot}`\n"
            + (f"- adapter version: `{version}`\n" if version else f"{_UNPUBLISHED}\n")
            + f"- task kind: {result.kind}; headline metric: `{result.headline_metric}`\n"
            f"- student `{result.student}` at least as good as every baseline on every "
            f"non-empty test set: {verdict}" + (f"\n{_kept_line(sweep)}" if sweep else ""),
            "## Headline",
            table(header, rows),
            "![headline per test set](scores.png)",
        ]
    )


def headline_table(result: EvalResult) -> dict[str, Any]:
    """The report's headline table as data (``evaluation.json``): each model's column with its
    role, and per test set its size, each model's headline (None: the set is empty) and the
    student's lead over the best baseline (None: empty, or no baseline scored)."""
    roles = {result.student: "student"} | dict.fromkeys(result.contenders, "champion")
    sets: dict[str, Any] = {}
    for name, by in result.scores.items():
        scores, lead = result.headline.get(name), None
        if scores:
            best = max((scores[b] for b in result.baselines if b in scores), default=None)
            lead = None if best is None else scores[result.student] - best
        sets[name] = {"n": _n(by), "scores": scores, "student_minus_best_baseline": lead}
    return {
        "kind": result.kind,
        "headline_metric": result.headline_metric,
        "models": [{"name": m, "role": roles.get(m, "base")} for m in result.models],
        "student_beats_baseline": result.student_beats_baseline,
        "sets": sets,
    }


def _champion_section(result: EvalResult, shortfalls: Sequence[str] | None) -> str:
    """Per non-empty test set: the champion's headline, the student's, and the difference."""
    if not result.contenders:
        return ""
    champion = result.contenders[0]
    rows = [
        [name, fmt(by[champion]), fmt(by[result.student]),
         f"{by[result.student] - by[champion]:+.3f}"]
        for name, by in result.headline.items()
    ]  # fmt: skip
    if shortfalls is None:
        verdict = ""
    elif shortfalls:
        verdict = "The student does **not** match the champion:\n" + "\n".join(
            f"- {s}" for s in shortfalls
        )
    else:
        verdict = "The student matches the champion on every non-empty test set."
    return "\n\n".join(
        [
            "## Against the champion",
            f"`{champion}`, the adapter serving now, on the same test sets. The student is "
            "published only if its headline is at least the champion's (plus the margin) on "
            "every one, and its judged pass rates at least the champion's: a tie passes, and "
            "the live challenge on real traffic decides which is better.",
            table(["test set", "champion", "student", "student - champion"], rows),
            verdict,
        ]
    ).rstrip()


def _metrics_section(result: EvalResult) -> str:
    parts = ["## All metrics"]
    for name, by in result.scores.items():
        if not _n(by):
            parts += [f"### {name} (n=0)", f"{EMPTY}: the test set has no example."]
            continue
        metrics = sorted({key for s in by.values() for key in s.metrics()})
        rows = [[key] + [fmt(by[m].metrics().get(key)) for m in result.models] for key in metrics]
        parts += [f"### {name} (n={_n(by)})", table(["metric", *result.models], rows)]
    return "\n\n".join(parts)


def _set_details(result: EvalResult, name: str) -> str:
    by = result.scores[name]
    student = by[result.student]
    if student.classes is not None and student.n:
        return _class_details(name, student)
    if student.fields is not None and student.n:
        fields = sorted(student.fields.per_field)
        rows = [
            [code(f)]
            + [fmt(s.fields.per_field.get(f) if s.fields else None) for s in by.values()]
            for f in fields
        ]
        return f"## Field agreement: {name}\n\n" + table(["field", *by], rows)
    return ""


def _class_details(name: str, scores: SetScores) -> str:
    assert scores.classes is not None
    stats = scores.classes.per_class
    rows = [
        [code(c), fmt(s.precision), fmt(s.recall), fmt(s.f1), str(s.support)]
        for c, s in stats.items()
    ]
    confusion = scores.classes.confusion
    columns = list(next(iter(confusion.values()), {}))
    matrix = [[code(r), *(str(row[c]) for c in columns)] for r, row in confusion.items()]
    return "\n\n".join(
        [
            f"## Classes: {name} (student)",
            table(["class", "precision", "recall", "F1", "support"], rows),
            "Confusion matrix (rows: reference, columns: predicted):",
            table(["reference \\ predicted", *(code(c) for c in columns)], matrix),
        ]
    )


def _mistakes_section(result: EvalResult) -> str:
    parts = ["## Worst mistakes of the student"]
    for name, records in result.mistakes.items():
        parts.append(f"### {name}: {len(records)} shown")
        parts += [_mistake(i, r) for i, r in enumerate(records, 1)]
    return "\n\n".join(parts)


def _mistake(number: int, record: ExampleRecord) -> str:
    title = f"#### {number}. `{record.request_id}`, score {record.score:.3f}"
    if record.reference_label is not None or record.predicted_label is not None:
        title += f", label {record.reference_label!r} predicted as {record.predicted_label!r}"
    return "\n\n".join(
        [
            title,
            "Prompt:\n" + block(record.prompt),
            "Reference:\n" + block(record.reference),
            "Prediction:\n" + block(record.prediction),
        ]
    )


def mark_published(report: Path, version: str) -> None:
    """Name the published adapter version in a run's ``report.md`` (written before)."""
    if report.is_file():
        text = report.read_text(encoding="utf-8")
        report.write_text(
            text.replace(_UNPUBLISHED, f"- adapter version: `{version}`", 1), encoding="utf-8"
        )


def _loss_section(curve: list[tuple[int, float]]) -> str:
    stride = max(1, -(-len(curve) // LOSS_ROWS))
    shown = curve[::stride]
    if shown[-1] != curve[-1]:
        shown.append(curve[-1])
    rows = [[str(step), f"{loss:.4f}"] for step, loss in shown]
    return "## Training loss\n\n![loss by step](loss.png)\n\n" + table(["step", "loss"], rows)


def _kept_line(sweep: dict[str, Any]) -> str:
    kept = sweep["rows"][sweep["kept"]]
    return (
        f"- kept from a sweep of `{sweep['key']}`: the run `{sweep['key']}={shown(kept['value'])}`"
        f" (run {sweep['kept'] + 1} of {len(sweep['rows'])}), chosen on the test sets: see the"
        " sweep below"
    )


def _sweep_section(sweep: dict[str, Any]) -> str:
    key, rows = sweep["key"], sweep["rows"]
    sets = list(dict.fromkeys(name for row in rows for name in row["scores"]))
    header = [key, "examples", *sets, "train time (s)", "tokens/s", "peak memory (GiB)", "kept"]
    body = [
        [
            shown(row["value"]),
            str(row["train_examples"]),
            *(fmt(row["scores"].get(name)) for name in sets),
            f"{row['train_s']:.1f}",
            f"{row['tokens_per_s']:,.0f}",
            f"{row['peak_memory_gb']:.2f}",
            "kept" if i == sweep["kept"] else "",
        ]
        for i, row in enumerate(rows)
    ]
    kept = rows[sweep["kept"]]
    chosen = (
        f"Kept: `{key}={shown(kept['value'])}` (run {sweep['kept'] + 1} of {len(rows)}), the best "
        "mean headline over the test sets (a tie goes to the later run). It was chosen on these "
        "same test sets, so its scores above are an optimistic estimate of a fresh sample's."
    )
    return "\n\n".join(
        [f"## Sweep: {key}", chosen, f"![headline by {key}](sweep.png)", table(header, body)]
    )


def plot_scores(result: EvalResult, path: Path) -> None:
    """Grouped bars: the headline per non-empty test set, one bar per predictor."""
    fig = Figure(figsize=(7, 4))
    ax = fig.add_subplot()
    sets, models = list(result.headline), result.models
    width = 0.8 / max(1, len(models))
    for i, model in enumerate(models):
        xs = [j + (i - (len(models) - 1) / 2) * width for j in range(len(sets))]
        bars = ax.bar(xs, [result.headline[s][model] for s in sets], width, label=model)
        ax.bar_label(bars, fmt="%.2f", fontsize=8)
    ax.set_xticks(range(len(sets)), sets)
    ax.set_ylim(0, 1.2)  # room above 1.0 for the legend
    ax.set_yticks([0, 0.2, 0.4, 0.6, 0.8, 1.0])
    ax.set_ylabel(result.headline_metric)
    ax.set_title("Headline per test set")
    ax.legend(loc="upper center", ncol=max(1, len(models)), fontsize=8)
    _save(fig, path)


def plot_loss(curve: Sequence[tuple[int, float]], path: Path) -> None:
    fig = Figure(figsize=(7, 4))
    ax = fig.add_subplot()
    ax.plot([step for step, _ in curve], [loss for _, loss in curve])
    ax.set_xlabel("step")
    ax.set_ylabel("training loss")
    ax.set_title("Training loss")
    ax.grid(alpha=0.3)
    _save(fig, path)


def plot_sweep(sweep: dict[str, Any], sets: list[str], metric: str, path: Path) -> None:
    """The headline per test set against the swept setting's value, the kept run marked.

    Values go in the order given, one per tick; positive numbers spanning 10x or more are
    placed on a log axis instead (learning rates, data fractions).
    """
    fig = Figure(figsize=(7, 4))
    ax = fig.add_subplot()
    rows = sweep["rows"]
    values = [row["value"] for row in rows]
    numbers = all(isinstance(v, int | float) and not isinstance(v, bool) for v in values)
    if numbers and min(values) > 0 and max(values) >= 10 * min(values):
        xs: list[float] = [float(v) for v in values]
        ax.set_xscale("log")
        ax.set_xticks(xs, [shown(v) for v in values])
        ax.minorticks_off()
    else:
        xs = [float(i) for i in range(len(rows))]
        ax.set_xticks(xs, [shown(v) for v in values])
        ax.set_xlim(-0.5, len(rows) - 0.5)
    for name in sets:
        points = [(x, row["scores"][name]) for x, row in zip(xs, rows, strict=True)
                  if row["scores"].get(name) is not None]  # fmt: skip
        if points:
            ax.plot(*zip(*points, strict=True), marker="o", label=name)
    ax.axvline(xs[sweep["kept"]], color="grey", linestyle=":", label="kept")
    ax.set_xlabel(sweep["key"])
    ax.set_ylabel(metric)
    ax.set_ylim(0, 1)
    ax.set_title(f"Sweep: {sweep['key']}")
    ax.legend(loc="lower right")
    ax.grid(alpha=0.3)
    _save(fig, path)


def _save(fig: Figure, path: Path) -> None:
    FigureCanvasAgg(fig)
    fig.tight_layout()
    fig.savefig(path, format="png", dpi=100)


def _n(by_model: dict[str, SetScores]) -> int:
    return max((s.n for s in by_model.values()), default=0)
