"""The run report: ``report.html`` (self-contained, relative PNG links, no scripts) and ``report.md``.

Built from what the run folder holds: metrics.csv, predictions_{val,test}.npz and the best model's card.
Images in the worst-mistakes grid are shown as the model saw them (``Preprocessor.load``), from the
original files.
"""

from __future__ import annotations

import html
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from andon.evaluation import plots
from andon.evaluation.metrics import ClassificationReport, DecisionRates, decision_rates, defect_score
from andon.inspect.card import ModelCard, describe_trained_as
from andon.inspect.decision import DECISIONS, DecisionPolicy
from andon.inspect.outputs import ModelOutputs
from andon.inspect.preprocess import Preprocessor
from andon.training.recipe import Recipe
from andon.training.rundir import HEADLINE, RunDir, atomic_write, load_predictions, read_metrics
from andon.training.stopping import resolve_monitor

MISTAKES_SHOWN = 18


@dataclass
class Figure:
    title: str
    path: str  # relative to the run folder
    caption: str = ""


def write_report(
    run: RunDir,
    recipe: Recipe,
    card: ModelCard,
    reports: dict[str, ClassificationReport],
    *,
    best_epoch: int,
    sources: dict[str, list[str]] | None = None,
    notes: list[str] | None = None,
) -> Path:
    """Draw the plots into ``RUN/plots/`` and write report.html and report.md; returns the HTML path.

    ``sources`` holds each split's folder labels in prediction order (they differ from the model's classes
    after a remap); the decisions table counts pass / review / reject per folder class. ``notes`` are the
    paragraphs on decision targets the validation data could not meet (``fit.calibrate_card``).
    """
    monitor = resolve_monitor(recipe.train.monitor, card.classes, card.defect_classes)
    preds = {split: load_predictions(run.predictions(split)) for split in reports}
    figures = draw_figures(run, card, reports, preds, best_epoch, monitor=monitor)
    main = "test" if "test" in reports else "val"
    sections = {
        "summary": _summary_rows(run, recipe, card, best_epoch, monitor),
        "headline": {split: rep.headline() for split, rep in reports.items()},
        "per_class": reports[main],
        "main": main,
        "decisions": decision_table(card, preds[main], (sources or {}).get(main)),
        "thresholds": threshold_section(run, recipe, card, preds, notes or []),
    }
    atomic_write(run.path / "report.md", _markdown(run.name, sections, figures, recipe))
    out = run.path / "report.html"
    atomic_write(out, _html(run.name, sections, figures, recipe))
    return out


def draw_figures(
    run: RunDir,
    card: ModelCard,
    reports: dict[str, ClassificationReport],
    preds: dict[str, dict[str, np.ndarray]],
    best_epoch: int,
    *,
    monitor: str = "macro_recall",
) -> list[Figure]:
    plot_dir = run.path / "plots"
    main = "test" if "test" in reports else "val"
    curves = {
        split: (np.isin(p["y_true"], card.defect_indices), defect_score(p["probs"], card.defect_indices))
        for split, p in preds.items()
    }
    rep = reports[main]
    curve_metrics = ["val_accuracy", "val_macro_recall", "val_macro_f1"]
    if monitor != "val_loss" and f"val_{monitor}" not in curve_metrics:  # the figure that chose the epoch
        curve_metrics.append(f"val_{monitor}")
    figures = [
        Figure(
            "Training curves",
            _rel(
                run,
                plots.plot_training_curves(
                    read_metrics(run.metrics), plot_dir / "curves.png", best_epoch=best_epoch, metrics=curve_metrics
                ),
            ),
            f"loss and validation metrics per epoch; dashed: best epoch ({best_epoch}), chosen on val {monitor}",
        ),
        Figure(
            f"Confusion matrix ({main})",
            _rel(run, plots.plot_confusion(rep.confusion, rep.classes, plot_dir / "confusion.png", title=f"{main}")),
        ),
        Figure(
            f"Per-class precision and recall ({main})",
            _rel(
                run,
                plots.plot_per_class(
                    [m.name for m in rep.per_class],
                    [m.precision for m in rep.per_class],
                    [m.recall for m in rep.per_class],
                    plot_dir / "per_class.png",
                    support=[m.support for m in rep.per_class],
                ),
            ),
        ),
    ]
    if len(card.good_classes) > 0:
        figures += [
            Figure(
                "ROC: defect vs good",
                _rel(run, plots.plot_roc(curves, plot_dir / "roc.png")),
                "score = P(defect) = sum of the defect classes' probabilities",
            ),
            Figure("Precision-recall: defect vs good", _rel(run, plots.plot_pr(curves, plot_dir / "pr.png"))),
        ]
    images, captions = worst_mistakes(preds[main], card)
    figures.append(
        Figure(
            f"Worst mistakes ({main})",
            _rel(
                run,
                plots.plot_image_grid(
                    images, captions, plot_dir / "mistakes.png", title=f"most confident mistakes on {main}"
                ),
            ),
            "wrong predictions with the highest confidence, as the model saw them: true -> predicted (probability)",
        )
    )
    return figures


def worst_mistakes(
    pred: dict[str, np.ndarray], card: ModelCard, limit: int = MISTAKES_SHOWN
) -> tuple[list[np.ndarray], list[str]]:
    """The most confident wrong predictions: model-input images and 'true -> predicted (p)' captions."""
    probs, y_true = pred["probs"], pred["y_true"]
    if len(probs) == 0:
        return [], []
    y_pred = probs.argmax(axis=1)
    wrong = np.flatnonzero(y_pred != y_true)
    order = wrong[np.argsort(-probs[wrong, y_pred[wrong]], kind="stable")][:limit]
    pre = Preprocessor(card.preprocess)
    images, captions = [], []
    for i in order:
        path = Path(str(pred["paths"][i]))
        try:
            images.append(pre.load(path.read_bytes()))
        except OSError:
            continue  # a file removed since training: leave it out of the picture, not the report
        captions.append(
            f"{path.name[:22]}\n{card.classes[y_true[i]]} -> {card.classes[y_pred[i]]} ({probs[i, y_pred[i]]:.2f})"
        )
    return images, captions


@dataclass
class DecisionTable:
    """The card's thresholds applied to one split: the plant's rates and the decisions per folder class."""

    rates: DecisionRates
    rows: list[tuple[str, str, int, int, int, int]]  # folder class, model class, images, pass, review, reject

    def sentence(self) -> str:
        r = self.rates
        escapes = round(r.escape_rate * r.n_defective) if r.n_defective else 0
        rejects = round(r.false_reject_rate * r.n_good) if r.n_good else 0
        return (
            f"escape rate {_pct(r.escape_rate)} ({escapes} of {r.n_defective} defective parts passed), "
            f"false rejects {_pct(r.false_reject_rate)} ({rejects} of {r.n_good} good parts rejected), "
            f"sent to review {_pct(r.review_rate)} of {r.n} parts"
        )


def decision_table(card: ModelCard, pred: dict[str, np.ndarray], sources: list[str] | None = None) -> DecisionTable:
    """Pass / review / reject at the card's thresholds, per folder class (``sources``, default the true class)."""
    y_true = pred["y_true"]
    decisions = DecisionPolicy.from_card(card).decide(ModelOutputs.from_predictions(pred)).decisions
    truth = [card.classes[i] for i in y_true]
    folder = np.array(truth if sources is None else list(sources), dtype=str)
    if len(folder) != len(truth):
        raise ValueError(f"{len(folder)} folder labels for {len(truth)} predictions")
    class_of = dict(zip(folder.tolist(), truth))  # every image of a folder class has the same model class
    rows = []
    for name in sorted(class_of, key=lambda n: (card.classes.index(class_of[n]), n)):
        mine = folder == name
        rows.append((name, class_of[name], int(mine.sum()), *(int((decisions[mine] == d).sum()) for d in DECISIONS)))
    return DecisionTable(decision_rates(np.isin(y_true, card.defect_indices), decisions), rows)


@dataclass
class ThresholdSection:
    """How the thresholds were chosen and what else was on offer: warnings, notes, the trade-off on the split
    they were calibrated on (a figure and a table of operating points)."""

    split: str | None
    warning: str  # the weak-thresholds sentence, or ""
    notes: list[str]
    figure: Figure | None
    #: target escape, false-reject cap, pass_below, reject_at, escape, false reject, review (formatted cells)
    points: list[tuple[str, ...]]


def threshold_section(
    run: RunDir, recipe: Recipe, card: ModelCard, preds: dict[str, dict[str, np.ndarray]], notes: list[str]
) -> ThresholdSection:
    """The report's section on the decision: the escape / false-reject / review trade-off on the validation
    split (where training calibrates), the chosen band marked, with the operating points other targets give."""
    from andon.evaluation.plots import plot_tradeoff
    from andon.evaluation.tradeoff import operating_points, tradeoff_curve
    from andon.training.targets import weak_sentence

    warning = weak_sentence(card.threshold_warnings) if card.threshold_warnings else ""
    split = "val" if "val" in preds else None
    if split is None or not card.good_classes or len(preds[split]["y_true"]) == 0:
        return ThresholdSection(None, warning, notes, None, [])
    pred = preds[split]
    bad = np.isin(pred["y_true"], card.defect_indices)
    scores = defect_score(pred["probs"], card.defect_indices)
    band = card.thresholds.defect
    target = recipe.decision.target_escape
    curve = tradeoff_curve(bad, scores, extra=[band.pass_below, band.reject_at])
    path = plot_tradeoff(
        curve,
        run.path / "plots" / "tradeoff.png",
        band=band,
        target_escape=target,
        title=f"Escape / false-reject / review trade-off ({split})",
    )
    rates = curve.rates(band)
    figure = Figure(
        f"Trade-off: escape, false reject, review ({split})",
        _rel(run, path),
        f"the chosen band [{band.pass_below:.4g}, {band.reject_at:.4g}) is shaded: on {split} it passes "
        f"{_pct(rates['escape_rate'])} of the defective parts, rejects {_pct(rates['false_reject_rate'])} "
        f"of the good ones and sends {_pct(rates['review_rate'])} of all parts to review; right: "
        "raising reject_at trades false rejects for review",
    )
    cell = lambda v: "-" if v is None else f"{v:.4g}"  # noqa: E731
    rows = []
    for p in operating_points(bad, scores):
        targets = (
            f"{p.target_escape:.2%}",
            "none (two-way)" if p.max_false_reject is None else f"{p.max_false_reject:.2%}",
        )
        rows.append(
            (*targets, p.error, "", "", "", "")
            if p.error
            else (
                *targets,
                cell(p.pass_below),
                cell(p.reject_at),
                _pct(p.escape_rate),
                _pct(p.false_reject_rate),
                _pct(p.review_rate),
            )
        )
    return ThresholdSection(split, warning, notes, figure, rows)


_POINT_COLUMNS = ("target escape", "false-reject cap", "pass_below", "reject_at", "escape", "false reject", "review")


def _threshold_markdown(t: ThresholdSection) -> list[str]:
    lines = ["## Thresholds: targets and trade-off", ""]
    lines += [f"**{t.warning}**", ""] if t.warning else []
    for note in t.notes:
        lines += [note, ""]
    if t.figure is not None:
        lines += [f"![{t.figure.title}]({t.figure.path})", "", t.figure.caption, ""]
    if t.points:
        lines += [
            f"Operating points on {t.split} (each calibrated with the rule training uses):",
            "",
            "| " + " | ".join(_POINT_COLUMNS) + " |",
            "|---" * len(_POINT_COLUMNS) + "|",
        ]
        lines += ["| " + " | ".join(row) + " |" for row in t.points] + [""]
    return lines


def _threshold_html(t: ThresholdSection) -> list[str]:
    e = html.escape
    parts = ["<h2>Thresholds: targets and trade-off</h2>"]
    if t.warning:
        parts.append(f"<p class=warn><strong>{e(t.warning)}</strong></p>")
    parts += [f"<p class=note>{e(note)}</p>" for note in t.notes]
    if t.figure is not None:
        parts.append(
            f"<figure><img src='{e(t.figure.path)}' alt='{e(t.figure.title)}'>"
            f"<figcaption>{e(t.figure.caption)}</figcaption></figure>"
        )
    if t.points:
        parts.append(
            f"<p>Operating points on {e(t.split or '')} (each calibrated with the rule training uses):</p>"
            "<table><tr>" + "".join(f"<th>{e(c)}</th>" for c in _POINT_COLUMNS) + "</tr>"
        )
        for row in t.points:
            if row[3] == "":  # targets this data cannot meet: the reason across the row
                parts.append(f"<tr><td>{e(row[0])}</td><td>{e(row[1])}</td><td colspan=5>{e(row[2])}</td></tr>")
            else:
                parts.append("<tr>" + "".join(f"<td class=n>{e(v)}</td>" for v in row) + "</tr>")
        parts.append("</table>")
    return parts


def _pct(value: float) -> str:
    return "-" if value != value else f"{value:.2%}"


def _rel(run: RunDir, path: Path) -> str:
    return path.relative_to(run.path).as_posix()


def _summary_rows(run: RunDir, recipe: Recipe, card: ModelCard, best_epoch: int, monitor: str) -> list[tuple[str, str]]:
    rows = read_metrics(run.metrics)
    p = card.preprocess
    trained_as = (
        [
            (
                "trained as",
                describe_trained_as(card.trained_as) + " (one head unit each; the model adds up their probabilities)",
            )
        ]
        if card.trained_as
        else []
    )
    return [
        ("data", f"{recipe.data.path}"),
        ("classes", ", ".join(card.classes)),
        *trained_as,
        ("defect classes", ", ".join(card.defect_classes)),
        ("model", f"{card.backbone}, weights {card.weights}"),
        (
            "input",
            f"{p.input_size[0]}x{p.input_size[1]} {p.color_mode}, resize {p.resize}, "
            f"mean {list(p.mean)}, std {list(p.std)}",
        ),
        (
            "epochs",
            f"{len(rows)} run of {recipe.train.epochs}; best epoch {best_epoch} by val {monitor} "
            f"(the latest epoch within {recipe.train.min_delta:g} of the best value)",
        ),
        ("training time", f"{sum(float(r['seconds']) for r in rows):.0f} s"),
        (
            "thresholds",
            f"P(defect) below {card.thresholds.defect.pass_below:.4g} passes, at or above "
            f"{card.thresholds.defect.reject_at:.4g} rejects ({card.thresholds.source})",
        ),
        ("data fingerprint", card.data_fingerprint[:16]),
        ("model version", card.version),
    ]


def _fmt(value: float) -> str:
    return "-" if value != value else f"{value:.4f}"


def _markdown(name: str, sections: dict, figures: list[Figure], recipe: Recipe) -> str:
    lines = [f"# Training report: {name}", ""]
    lines += ["| | |", "|---|---|"] + [f"| {k} | {v} |" for k, v in sections["summary"]] + [""]
    lines += ["## Best model", "", "| split | " + " | ".join(HEADLINE) + " |", "|---" * (len(HEADLINE) + 1) + "|"]
    lines += [
        f"| {split} | " + " | ".join(_fmt(h[k]) for k in HEADLINE) + " |" for split, h in sections["headline"].items()
    ] + [""]
    rep: ClassificationReport = sections["per_class"]
    lines += [
        f"## Per class ({sections['main']})",
        "",
        "| class | support | precision | recall | F1 |",
        "|---|---|---|---|---|",
    ]
    lines += [
        f"| {m.name} | {m.support} | {_fmt(m.precision)} | {_fmt(m.recall)} | {_fmt(m.f1)} |" for m in rep.per_class
    ] + [""]
    table: DecisionTable = sections["decisions"]
    lines += [
        f"## Decisions at the card's thresholds ({sections['main']})",
        "",
        table.sentence() + ".",
        "",
        "| folder class | class | images | pass | review | reject |",
        "|---|---|---|---|---|---|",
    ]
    lines += ["| " + " | ".join(str(v) for v in row) + " |" for row in table.rows] + [""]
    lines += _threshold_markdown(sections["thresholds"])
    for fig in figures:
        lines += [f"## {fig.title}", "", f"![{fig.title}]({fig.path})", ""] + ([fig.caption, ""] if fig.caption else [])
    lines += ["## Recipe", "", "```yaml", recipe.to_yaml().rstrip(), "```", ""]
    return "\n".join(lines)


_CSS = """body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:.5em 0 1.5em}td,th{border:1px solid #ccc;padding:.25em .6em;text-align:left}
th{background:#f2f2f2}td.n{text-align:right;font-variant-numeric:tabular-nums}img{max-width:100%}
figure{margin:1.5em 0}figcaption{color:#555;font-size:.9em}pre{background:#f6f6f6;padding:1em;overflow:auto}
p.warn{color:#a93226;border-left:4px solid #a93226;padding-left:.6em}
p.note{border-left:4px solid #d4ac0d;padding-left:.6em}"""


def _html(name: str, sections: dict, figures: list[Figure], recipe: Recipe) -> str:
    e = html.escape
    parts = [
        f"<!doctype html><html><head><meta charset='utf-8'><title>andon run {e(name)}</title>",
        f"<style>{_CSS}</style></head><body><h1>Training report: {e(name)}</h1><table>",
    ]
    parts += [f"<tr><th>{e(k)}</th><td>{e(v)}</td></tr>" for k, v in sections["summary"]]
    parts.append(
        "</table><h2>Best model</h2><table><tr><th>split</th>" + "".join(f"<th>{e(k)}</th>" for k in HEADLINE) + "</tr>"
    )
    parts += [
        f"<tr><td>{e(split)}</td>" + "".join(f"<td class=n>{_fmt(h[k])}</td>" for k in HEADLINE) + "</tr>"
        for split, h in sections["headline"].items()
    ]
    rep: ClassificationReport = sections["per_class"]
    parts.append(
        f"</table><h2>Per class ({e(sections['main'])})</h2><table><tr><th>class</th><th>support</th>"
        "<th>precision</th><th>recall</th><th>F1</th></tr>"
    )
    parts += [
        f"<tr><td>{e(m.name)}</td><td class=n>{m.support}</td><td class=n>{_fmt(m.precision)}</td>"
        f"<td class=n>{_fmt(m.recall)}</td><td class=n>{_fmt(m.f1)}</td></tr>"
        for m in rep.per_class
    ]
    table: DecisionTable = sections["decisions"]
    parts.append(
        f"</table><h2>Decisions at the card's thresholds ({e(sections['main'])})</h2>"
        f"<p>{e(table.sentence())}.</p><table><tr><th>folder class</th><th>class</th><th>images</th>"
        "<th>pass</th><th>review</th><th>reject</th></tr>"
    )
    parts += [
        "<tr>"
        + "".join(f"<td>{e(str(v))}</td>" if i < 2 else f"<td class=n>{v}</td>" for i, v in enumerate(row))
        + "</tr>"
        for row in table.rows
    ]
    parts.append("</table>")
    parts += _threshold_html(sections["thresholds"])
    for fig in figures:
        parts.append(
            f"<figure><h2>{e(fig.title)}</h2><img src='{e(fig.path)}' alt='{e(fig.title)}'>"
            f"<figcaption>{e(fig.caption)}</figcaption></figure>"
        )
    parts.append(f"<h2>Recipe</h2><pre>{e(recipe.to_yaml())}</pre></body></html>\n")
    return "".join(parts)
