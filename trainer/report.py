"""The evaluation report a person reads before an adapter is published.

``write_report`` writes into one folder::

    report.md      headline student vs baselines, every metric, per-class or per-field tables,
                   the student's worst mistakes, the loss curve and the data ablation
    scores.png     headline per test set, grouped bars per predictor
    loss.png       training loss by step (when a loss curve is given)
    ablation.png   headline by share of training data (when an ablation is given)

Plots are drawn on matplotlib's Agg canvas directly: no display, no pyplot global state.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, Final

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from trainer.evaluate import EvalResult
from trainer.metrics import ExampleRecord, SetScores

# Longest prompt, reference or prediction shown for one mistake.
SHOWN_CHARS: Final = 600
# Most rows of the loss table (the plot has every point).
LOSS_ROWS: Final = 20
_NONE = "—"


def write_report(
    result: EvalResult,
    out_dir: Path,
    *,
    task: str,
    snapshot: str,
    adapter_version: str | None = None,
    loss_curve: list[tuple[int, float]] | None = None,
    ablation: list[dict[str, Any]] | None = None,
) -> Path:
    """Write ``report.md`` and its plots into ``out_dir``; return the report's path.

    ``ablation`` rows hold ``fraction`` (share of the training data used) and the headline per
    test set under the set's name; any other keys are shown in the table only, e.g.
    ``{"fraction": 0.25, "train_examples": 240, "test-indist": 0.81, "test-balanced": 0.77}``.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    sections = [
        _summary(result, task, snapshot, adapter_version),
        _metrics_section(result),
        *(_set_details(result, name) for name in result.scores),
        _mistakes_section(result),
    ]
    plot_scores(result, out_dir / "scores.png")
    if loss_curve:
        plot_loss(loss_curve, out_dir / "loss.png")
        sections.append(_loss_section(loss_curve))
    if ablation:
        plot_ablation(
            ablation, list(result.scores), result.headline_metric, out_dir / "ablation.png"
        )
        sections.append(_ablation_section(ablation))
    path = out_dir / "report.md"
    path.write_text("\n\n".join(s for s in sections if s) + "\n", encoding="utf-8")
    return path


def _summary(result: EvalResult, task: str, snapshot: str, version: str | None) -> str:
    verdict = "yes" if result.student_beats_baseline else "**no**"
    header = ["test set", "n", *result.models, "student - best baseline"]
    rows = []
    for name, by in result.scores.items():
        values = result.headline.get(name, {})
        best = max((values[b] for b in result.baselines if b in values), default=None)
        delta = _NONE if best is None else f"{values[result.student] - best:+.3f}"
        cells = [_fmt(values.get(m)) for m in result.models]
        rows.append([name, str(_n(by)), *cells, delta])
    return "\n\n".join(
        [
            f"# Evaluation: {task}",
            f"- dataset snapshot: `{snapshot}`\n- adapter version: `{version or 'unpublished'}`\n"
            f"- task kind: {result.kind}; headline metric: `{result.headline_metric}`\n"
            f"- student `{result.student}` at least as good as every baseline on every "
            f"non-empty test set: {verdict}",
            "## Headline",
            _table(header, rows),
            "![headline per test set](scores.png)",
        ]
    )


def _metrics_section(result: EvalResult) -> str:
    parts = ["## All metrics"]
    for name, by in result.scores.items():
        metrics = sorted({key for s in by.values() for key in s.metrics()})
        rows = [[key] + [_fmt(by[m].metrics().get(key)) for m in result.models] for key in metrics]
        parts += [f"### {name} (n={_n(by)})", _table(["metric", *result.models], rows)]
    return "\n\n".join(parts)


def _set_details(result: EvalResult, name: str) -> str:
    by = result.scores[name]
    student = by[result.student]
    if student.classes is not None and student.n:
        return _class_details(name, student)
    if student.fields is not None and student.n:
        fields = sorted(student.fields.per_field)
        rows = [
            [_code(f)]
            + [_fmt(s.fields.per_field.get(f) if s.fields else None) for s in by.values()]
            for f in fields
        ]
        return f"## Field agreement: {name}\n\n" + _table(["field", *by], rows)
    return ""


def _class_details(name: str, scores: SetScores) -> str:
    assert scores.classes is not None
    stats = scores.classes.per_class
    rows = [
        [_code(c), _fmt(s.precision), _fmt(s.recall), _fmt(s.f1), str(s.support)]
        for c, s in stats.items()
    ]
    confusion = scores.classes.confusion
    columns = list(next(iter(confusion.values()), {}))
    matrix = [[_code(r), *(str(row[c]) for c in columns)] for r, row in confusion.items()]
    return "\n\n".join(
        [
            f"## Classes: {name} (student)",
            _table(["class", "precision", "recall", "F1", "support"], rows),
            "Confusion matrix (rows: reference, columns: predicted):",
            _table(["reference \\ predicted", *(_code(c) for c in columns)], matrix),
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
            "Prompt:\n" + _block(record.prompt),
            "Reference:\n" + _block(record.reference),
            "Prediction:\n" + _block(record.prediction),
        ]
    )


def _loss_section(curve: list[tuple[int, float]]) -> str:
    stride = max(1, -(-len(curve) // LOSS_ROWS))
    shown = curve[::stride]
    if shown[-1] != curve[-1]:
        shown.append(curve[-1])
    rows = [[str(step), f"{loss:.4f}"] for step, loss in shown]
    return "## Training loss\n\n![loss by step](loss.png)\n\n" + _table(["step", "loss"], rows)


def _ablation_section(ablation: list[dict[str, Any]]) -> str:
    keys = list(dict.fromkeys(k for row in ablation for k in row))
    rows = [[_fmt_any(row.get(k)) for k in keys] for row in ablation]
    return "## Data ablation\n\n![headline by data fraction](ablation.png)\n\n" + _table(keys, rows)


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


def plot_ablation(rows: list[dict[str, Any]], sets: list[str], metric: str, path: Path) -> None:
    """The headline per test set against the share of training data used."""
    fig = Figure(figsize=(7, 4))
    ax = fig.add_subplot()
    ordered = sorted(rows, key=lambda row: float(row["fraction"]))
    for name in sets:
        points = [
            (float(r["fraction"]), float(r[name])) for r in ordered if r.get(name) is not None
        ]
        if points:
            ax.plot(*zip(*points, strict=True), marker="o", label=name)
    ax.set_xlabel("fraction of training data")
    ax.set_ylabel(metric)
    ax.set_ylim(0, 1)
    ax.set_title("Data ablation")
    if ax.get_legend_handles_labels()[0]:
        ax.legend(loc="lower right")
    ax.grid(alpha=0.3)
    _save(fig, path)


def _save(fig: Figure, path: Path) -> None:
    FigureCanvasAgg(fig)
    fig.tight_layout()
    fig.savefig(path, format="png", dpi=100)


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = [_row(header), "|" + "---|" * len(header)]
    return "\n".join(lines + [_row(r) for r in rows])


def _row(cells: Sequence[str]) -> str:
    return "| " + " | ".join(_cell(c) for c in cells) + " |"


def _cell(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|")


def _code(text: str) -> str:
    return f"`{text}`" if "`" not in text else text


def _block(text: str) -> str:
    """A fenced block that no backticks inside can close, cut to ``SHOWN_CHARS``."""
    shown = (
        text
        if len(text) <= SHOWN_CHARS
        else f"{text[:SHOWN_CHARS]}… (+{len(text) - SHOWN_CHARS} chars)"
    )
    fence = "`" * max(3, _longest_backtick_run(shown) + 1)
    return f"{fence}text\n{shown}\n{fence}"


def _longest_backtick_run(text: str) -> int:
    longest = run = 0
    for char in text:
        run = run + 1 if char == "`" else 0
        longest = max(longest, run)
    return longest


def _fmt(value: float | None) -> str:
    return _NONE if value is None else f"{value:.3f}"


def _fmt_any(value: Any) -> str:
    return _fmt(value) if isinstance(value, float) else _NONE if value is None else str(value)


def _n(by_model: dict[str, SetScores]) -> int:
    return max((s.n for s in by_model.values()), default=0)
