"""``andon evaluate MODEL DATA``: the plant figures and the classification report on a labelled set."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from andon.errors import DatasetError


def register(app: typer.Typer) -> None:
    app.command("evaluate", no_args_is_help=True)(evaluate)


def evaluate(
    model: Path = typer.Argument(..., help="An exported .onnx file, or a training run folder (needs andon\\[train])."),
    data: Path = typer.Argument(..., help="A folder with one sub-folder per class, or a CSV manifest."),
    split: str = typer.Option(
        "test",
        help="Split to evaluate when the data has splits (a manifest split column); "
        "data without splits is evaluated whole.",
    ),
    as_json: bool = typer.Option(False, "--json", help="Print the figures as JSON only."),
    report: Path | None = typer.Option(None, "--report", help="Write report.html, evaluation.json and plots here."),
    defect_classes: str | None = typer.Option(
        None,
        "--defect-classes",
        help="Comma-separated defect classes (default: the model card's; without a card "
        "declaration, every class not named ok/good/pass).",
    ),
    remap: str | None = typer.Option(
        None, "--remap", help="Rename data classes first, e.g. 'scratch=defect,*=defect'."
    ),
    calibrate_on: str | None = typer.Option(
        None, "--calibrate-on", help="Also calibrate thresholds on this split (e.g. val) and check them on --split."
    ),
    target_escape: float = typer.Option(0.005, "--target-escape", help="Escape-rate target for --calibrate-on."),
    max_false_reject: float | None = typer.Option(
        None, "--max-false-reject", help="False-reject cap for --calibrate-on (default: two-way)."
    ),
    batch: int = typer.Option(32, "--batch", min=1, help="Images per onnxruntime call."),
    compare: str | None = typer.Option(
        None,
        "--compare",
        help="Another model (.onnx, run folder, or 'active': the "
        "service's active model) evaluated on the same images, shown side by side.",
    ),
    config: Path | None = typer.Option(
        None, "--config", help="Service settings file (as for 'andon serve'), for --compare active."
    ),
    data_dir: Path | None = typer.Option(
        None, "--data-dir", help="Service data folder (default ./andon-data), for --compare active."
    ),
) -> None:
    """Report accuracy, per-class P/R/F1, confusion, ROC/PR AUC and the escape, false-reject and review rates
    at the model's thresholds, with the escape / false-reject / review trade-off."""
    from andon.evaluation.calibration import calibrate_probs
    from andon.evaluation.evaluate import (
        defect_classes_for,
        evaluate_probs,
        labels_for,
        model_outputs,
        thresholds_for,
        write_report,
    )

    ds = _load(data, remap)
    eval_ds, split_name, note = _select(ds, split)
    cal_ds = _select(ds, calibrate_on, required=True)[0] if calibrate_on else None
    paths = [s.path for s in eval_ds] + ([s.path for s in cal_ds] if cal_ds is not None else [])
    outputs, card, info = model_outputs(model, paths, batch_size=batch, progress=not as_json)
    classes = card.classes
    defects = defect_classes_for(classes, card.defect_classes, defect_classes)
    thresholds = thresholds_for(card.thresholds, defects)
    n_eval = len(eval_ds)
    y_eval = labels_for([s.label for s in eval_ds], classes, source=str(data))
    calibration = None
    if cal_ds is not None:
        y_cal = labels_for([s.label for s in cal_ds], classes, source=str(data))
        calibration = calibrate_probs(
            y_cal,
            outputs.probs[n_eval:],
            classes,
            defects,
            target_escape=target_escape,
            max_false_reject=max_false_reject,
            source=f"split '{calibrate_on}'",
        )
    evaluation = evaluate_probs(
        y_eval,
        outputs.take(slice(0, n_eval)),
        classes,
        defects,
        thresholds,
        model=info,
        data={"path": str(data), "split": split_name, "n": n_eval},
        calibration=calibration,
        anomaly_only=card.anomaly_only,
    )
    if note:
        evaluation.notes.append(note)
    if report is not None:
        html = write_report(evaluation, report)
    other = None
    if compare is not None:
        from andon.reports.compare import active_model, evaluate_on, model_path

        if compare == "active":
            from andon.cli._service import service_settings

            other_model = active_model(service_settings(config, data_dir))
        else:
            other_model = model_path(compare)
        other = evaluate_on(other_model, list(eval_ds), data, split_name, defect_classes, batch, progress=not as_json)
    if as_json:
        out = evaluation.as_dict()
        if other is not None:
            from andon.reports.compare import comparison

            out = {**out, "compare": other.as_dict(), "side_by_side": comparison(evaluation, other)}
        typer.echo(json.dumps(out, indent=2, default=str))
        return
    from rich.console import Console

    console = Console()
    print_evaluation(evaluation, console)
    if other is not None:
        from andon.reports.compare import print_comparison

        print_comparison(evaluation, other, console)
    if report is not None:
        console.print(f"report: {html}")


def _load(data: Path, remap: str | None):
    from andon.datasets.manifest import load_dataset
    from andon.datasets.remap import parse_remap

    ds = load_dataset(data)
    return ds.remap(parse_remap(remap), strict=True) if remap else ds


def _select(ds, split: str | None, *, required: bool = False):
    """The samples of ``split`` when the data has splits; all of them (with a note) when it has none."""
    has_splits = any(s.split for s in ds.samples)
    if not has_splits:
        if required:
            raise DatasetError(
                f"--calibrate-on {split}: the data has no splits; give a manifest with a split "
                "column, or calibrate with 'andon thresholds MODEL --calibrate VAL_DATA'"
            )
        return ds, None, "the data has no splits: every image was evaluated"
    subset = ds.split(split)
    if len(subset) == 0:
        raise DatasetError(
            f"split {split!r} of {ds.root} has no images; splits present: "
            f"{sorted({s.split for s in ds.samples if s.split})}"
        )
    return subset, split, None


# -- terminal view (rich) ------------------------------------------------------------------------------------


def print_evaluation(evaluation, console) -> None:
    """Plant figures first, then the trade-off, then the classification details."""
    from rich.markup import escape
    from rich.table import Table

    e, r, rates = evaluation, evaluation.report, evaluation.rates
    head = (
        f"{e.model.get('name', '?')} v{e.model.get('version', '?')} ({e.model.get('path', '')}) on "
        f"{e.data.get('path', '')} split {e.data.get('split') or 'all'}: {r.n} images, "
        f"{rates.n_defective} defective, {rates.n_good} good; defect classes: {', '.join(e.defect_classes)}"
    )
    console.print(escape(head))
    for note in e.notes:
        console.print(f"[yellow]note:[/] {escape(note)}")
    console.print(thresholds_table(e.thresholds, title="Thresholds (from the model card)"))
    plant = Table(title="At these thresholds", title_justify="left")
    for col in ("escape rate", "false-reject rate", "review rate", "pass", "review", "reject"):
        plant.add_column(col, justify="right")
    plant.add_row(
        f"[bold red]{pct(rates.escape_rate)}[/]",
        f"[bold blue]{pct(rates.false_reject_rate)}[/]",
        f"[bold yellow]{pct(rates.review_rate)}[/]",
        *(str(e.decisions[d]) for d in ("pass", "review", "reject")),
    )
    console.print(plant)
    flagged = {k: v for k, v in e.flagged_by.items() if v}
    if "anomaly" in e.flagged_by:  # a model with a good-only anomaly detector: what each signal flagged
        console.print(
            escape(
                "flagged by: "
                + (", ".join(f"{k} {v}" for k, v in flagged.items()) or "nothing")
                + f"; anomaly score alone: ROC AUC {e.anomaly_auc:.3f} (defective vs good)"
            )
        )
    if e.calibration is not None and e.calibrated_rates is not None:
        console.print(calibration_table(e.calibration, e.calibrated_rates))
    console.print(tradeoff_table(e.operating_points))
    console.print(_metrics_table(r))
    console.print(_per_class_table(r))
    console.print(_confusion_table(r))


def thresholds_table(thresholds, *, title: str = "Thresholds"):
    """The bands in words: what passes, what goes to review, what is rejected."""
    from rich.markup import escape
    from rich.table import Table

    table = Table(title=title, title_justify="left")
    for col in ("on", "pass if below", "review", "reject at or above"):
        table.add_column(col, justify="right")
    band = thresholds.defect
    table.add_row("P(defect)", f"{band.pass_below:.6g}", _review_text(band), f"{band.reject_at:.6g}")
    for name, b in thresholds.per_class.items():
        table.add_row(
            f"P({escape(name)}) [dim](stricter only)[/]", f"{b.pass_below:.6g}", _review_text(b), f"{b.reject_at:.6g}"
        )
    if thresholds.anomaly is not None:
        b = thresholds.anomaly
        table.add_row(
            "anomaly score [dim](stricter only)[/]",
            f"{b.pass_below:.6g}",
            _review_text(b),
            f"{b.reject_at:.6g}" if b.reject_at < 1.0 else "never",
        )
    table.caption = escape(f"source: {thresholds.source}")
    return table


def _review_text(band) -> str:
    return "none (two-way)" if band.pass_below == band.reject_at else f"\\[{band.pass_below:.6g}, {band.reject_at:.6g})"


def calibration_table(calibration, held_out=None):
    """Calibrated thresholds and their rates on the calibration data (and on held-out data when given)."""
    from rich.markup import escape
    from rich.table import Table

    table = Table(title="Calibrated thresholds", title_justify="left", caption=escape(calibration.description))
    for col in ("", "pass_below", "reject_at", "escape rate", "false-reject rate", "review rate"):
        table.add_column(col, justify="right")
    band = calibration.thresholds.defect
    table.add_row(
        "calibration data",
        f"{band.pass_below:.6g}",
        f"{band.reject_at:.6g}",
        pct(calibration.escape_rate),
        pct(calibration.false_reject_rate),
        pct(calibration.review_rate),
    )
    if held_out is not None:
        table.add_row(
            "evaluated data",
            "",
            "",
            pct(held_out.escape_rate),
            pct(held_out.false_reject_rate),
            pct(held_out.review_rate),
        )
    return table


def tradeoff_table(points):
    """Operating points: for each escape target and false-reject cap, the band and what it costs in review."""
    from rich.table import Table

    table = Table(title="Trade-off: bands calibrated on this data (— = two-way)", title_justify="left")
    for col in ("target escape", "max false reject", "pass_below", "reject_at", "escape", "false reject", "review"):
        table.add_column(col, justify="right")
    shown_error = None
    for target in dict.fromkeys(p.target_escape for p in points):
        group = [p for p in points if p.target_escape == target]
        if all(p.error for p in group):  # one row: no cap helps when the target itself cannot be verified
            table.add_row(pct(target), "any", "[dim]n/a[/]", "", "", "", "")
            shown_error = shown_error or group[0].error
            continue
        for p in group:
            cap = "—" if p.max_false_reject is None else pct(p.max_false_reject)
            if p.error:
                table.add_row(pct(p.target_escape), cap, "[dim]n/a[/]", "", "", "", "")
                shown_error = shown_error or p.error
                continue
            table.add_row(
                pct(p.target_escape),
                cap,
                f"{p.pass_below:.4g}",
                f"{p.reject_at:.4g}",
                pct(p.escape_rate),
                pct(p.false_reject_rate),
                pct(p.review_rate),
            )
    if shown_error:
        from rich.markup import escape

        table.caption = escape(f"n/a: {shown_error}")
    return table


def _metrics_table(r):
    from rich.table import Table

    table = Table(title="Classification", title_justify="left")
    values = {
        "accuracy": r.accuracy,
        "macro recall": r.macro_recall,
        "macro F1": r.macro_f1,
        "defect recall": r.defect_recall,
        "ROC AUC": r.roc_auc,
        "PR AUC": r.pr_auc,
    }
    for col in values:
        table.add_column(col, justify="right")
    table.add_row(*(num(v) for v in values.values()))
    return table


def _per_class_table(r):
    from rich.markup import escape
    from rich.table import Table

    table = Table(title="Per class", title_justify="left")
    for col, justify in (
        ("class", "left"),
        ("support", "right"),
        ("precision", "right"),
        ("recall", "right"),
        ("F1", "right"),
    ):
        table.add_column(col, justify=justify)
    for m in r.per_class:
        name = f"{escape(m.name)} [dim](defect)[/]" if m.name in r.defect_classes else escape(m.name)
        table.add_row(name, str(m.support), num(m.precision), num(m.recall), num(m.f1))
    return table


def _confusion_table(r):
    from rich.markup import escape
    from rich.table import Table

    table = Table(title="Confusion (rows: true, columns: predicted)", title_justify="left")
    table.add_column("")
    for c in r.classes:
        table.add_column(escape(c), justify="right")
    for c, row in zip(r.classes, r.confusion):
        table.add_row(escape(c), *(f"[bold]{v}[/]" if i == r.classes.index(c) else str(v) for i, v in enumerate(row)))
    return table


def pct(value) -> str:
    import math

    return "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.2%}"


def num(value) -> str:
    import math

    return "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.4f}"
