"""``andon thresholds MODEL.onnx``: show the decision thresholds, set them by hand, or calibrate them.

The thresholds live in the model card inside the .onnx, so the file that is deployed always says how it
decides. Changing them rewrites only the card, atomically; the content hash (which excludes the card) is
unchanged, so a service keeps recognising the model.
"""

from __future__ import annotations

import json
from pathlib import Path

import typer

from andon.errors import ConfigError


def register(app: typer.Typer) -> None:
    app.command("thresholds", no_args_is_help=True)(thresholds)


def thresholds(
    model: Path = typer.Argument(..., help="An exported andon .onnx file."),
    pass_below: float | None = typer.Option(None, "--pass-below", help="Pass when P(defect) is below this."),
    reject_at: float | None = typer.Option(None, "--reject-at", help="Reject when P(defect) is at or above this."),
    per_class: list[str] = typer.Option(
        [],
        "--class",
        help="A per-class band NAME:PASS_BELOW:REJECT_AT on the class's own probability (stricter only); repeatable.",
    ),
    clear_class: list[str] = typer.Option([], "--clear-class", help="Remove the per-class band of NAME; repeatable."),
    calibrate: Path | None = typer.Option(
        None,
        "--calibrate",
        help="Calibrate on this labelled data (folder or manifest; its --split when it has splits).",
    ),
    split: str = typer.Option("val", help="Split of --calibrate data to use when it has splits."),
    target_escape: float | None = typer.Option(
        None, "--target-escape", help="Escape-rate target for --calibrate (default: the recipe's, 0.005)."
    ),
    max_false_reject: float | None = typer.Option(
        None,
        "--max-false-reject",
        help="False-reject cap for --calibrate: the uncertain band between the two "
        "thresholds goes to review (default: the recipe's, 0.02; 1: no cap, a "
        "two-way band).",
    ),
    max_review: float | None = typer.Option(
        None,
        "--max-review",
        help="Review budget for --calibrate: fail, writing "
        "nothing, if the band would review more "
        "(default: the recipe's, 0.10; 1: none).",
    ),
    budget: bool = typer.Option(
        False,
        "--budget",
        help="With --calibrate: no escape target; the band that catches the most defective parts within "
        "--max-false-reject and --max-review (for data with too few defective parts to verify an escape "
        "target; the escape rate it gives is measured, not verified).",
    ),
    class_target: list[str] = typer.Option(
        [], "--class-target", help="Calibrate a band for defect class NAME[:TARGET] too; repeatable."
    ),
    remap: str | None = typer.Option(None, "--remap", help="Rename data classes first, e.g. 'scratch=defect'."),
    anomaly_at: float | None = typer.Option(
        None,
        "--anomaly-at",
        help="Send to review when the anomaly score is at or above this (models with an anomaly detector).",
    ),
    false_alarm: float | None = typer.Option(
        None,
        "--false-alarm",
        help="With --calibrate: set the anomaly threshold "
        "on the data's good parts so that at most this share of good parts is "
        "flagged by it (e.g. 0.01).",
    ),
    dry_run: bool = typer.Option(False, "--dry-run", help="Show the new thresholds without writing them."),
    as_json: bool = typer.Option(False, "--json", help="Print the thresholds as JSON only."),
) -> None:
    """Show the thresholds in MODEL; with options, change them in the file."""
    from rich.console import Console

    from andon.cli.evaluate import calibration_table, thresholds_table, tradeoff_table
    from andon.inspect.inspector import Inspector, write_thresholds

    manual = pass_below is not None or reject_at is not None or per_class or clear_class or anomaly_at is not None
    if manual and calibrate is not None:
        raise ConfigError(
            "give either thresholds by hand (--pass-below/--reject-at/--class/--anomaly-at) or --calibrate, not both"
        )
    if budget and (calibrate is None or class_target or target_escape is not None):
        raise ConfigError(
            "--budget calibrates one P(defect) band on labelled data within --max-false-reject and --max-review: "
            "add --calibrate DATA, and leave out --target-escape and --class-target"
        )
    if false_alarm is not None and calibrate is None:
        raise ConfigError("--false-alarm calibrates the anomaly threshold on labelled data: add --calibrate DATA")
    inspector = Inspector.load(model, warmup=calibrate is not None)
    _check_anomaly_options(inspector.card, anomaly_at, false_alarm)
    console = Console(stderr=as_json)
    current = inspector.card.thresholds
    if not manual and calibrate is None:
        _show(console, inspector, thresholds_table(current, title=f"Thresholds in {model.name}"), as_json, current)
        return
    if calibrate is not None and inspector.card.anomaly_only and false_alarm is not None:
        band, text = _anomaly_band(inspector, calibrate, split, remap, false_alarm)
        console.print(text, markup=False, highlight=False)
        new = current.model_copy(update={"defect": band, "source": text})
    elif calibrate is not None:
        target_escape, max_false_reject, max_review = _targets(target_escape, max_false_reject, max_review)
        result, points, why = _calibrate(
            inspector, calibrate, split, remap, target_escape, max_false_reject, max_review, class_target, budget
        )
        if result is not None:
            console.print(calibration_table(result))
        console.print(tradeoff_table(points))
        if why is not None:
            from andon.errors import CalibrationError

            raise CalibrationError(f"{why}; nothing written")
        anomaly = current.anomaly
        if false_alarm is not None:
            anomaly, text = _anomaly_band(inspector, calibrate, split, remap, false_alarm)
            console.print(text, markup=False, highlight=False)
        new = result.thresholds.model_copy(update={"anomaly": anomaly})
    else:
        new = _manual(current, inspector.card.defect_classes, pass_below, reject_at, per_class, clear_class)
        if anomaly_at is not None:
            new = new.model_copy(update={"anomaly": _band(anomaly_at, 1.0, "anomaly score")})
        else:
            new = new.model_copy(update={"anomaly": current.anomaly})
    if dry_run:
        _show(console, inspector, thresholds_table(new, title="New thresholds (dry run: not written)"), as_json, new)
        return
    card = write_thresholds(model, new)
    console.print(f"wrote the thresholds into {model} (content hash unchanged: {card.content_hash[:12]})")
    _show(
        console,
        inspector,
        thresholds_table(card.thresholds, title=f"Thresholds in {model.name}"),
        as_json,
        card.thresholds,
    )


def _show(console, inspector, table, as_json: bool, thresholds) -> None:
    if as_json:
        typer.echo(
            json.dumps(
                {
                    "model": str(inspector.path),
                    "version": inspector.model_version,
                    "hash": inspector.model_hash,
                    "classes": inspector.card.classes,
                    "defect_classes": inspector.card.defect_classes,
                    "thresholds": thresholds.model_dump(),
                },
                indent=2,
            )
        )
        return
    console.print(table)
    console.print(
        f"classes {inspector.card.classes}, defect classes {inspector.card.defect_classes}; "
        "pass if P(defect) < pass_below, reject if >= reject_at, review in between; per-class bands can "
        "only make a decision stricter"
    )


def _manual(
    current,
    defect_classes: list[str],
    pass_below: float | None,
    reject_at: float | None,
    per_class: list[str],
    clear_class: list[str],
):
    from andon.inspect.card import Thresholds

    band = current.defect
    pb = band.pass_below if pass_below is None else pass_below
    ra = band.reject_at if reject_at is None else reject_at
    bands = dict(current.per_class)
    for name in clear_class:
        if name not in bands:
            raise ConfigError(
                f"--clear-class {name}: there is no per-class band for {name!r} (bands: {sorted(bands) or 'none'})"
            )
        del bands[name]
    for spec in per_class:
        name, band_c = _parse_class_band(spec, defect_classes)
        bands[name] = band_c
    return Thresholds(defect=_band(pb, ra, "P(defect)"), per_class=bands, source="manual (andon thresholds)")


def _band(pass_below: float, reject_at: float, what: str):
    from andon.inspect.card import ThresholdBand

    for name, value in (("pass_below", pass_below), ("reject_at", reject_at)):
        if not 0.0 <= value <= 1.0:
            raise ConfigError(f"{what} {name} {value} must be between 0 and 1")
    if pass_below > reject_at:
        raise ConfigError(
            f"{what}: pass_below {pass_below} must not exceed reject_at {reject_at} "
            "(the review band is [pass_below, reject_at))"
        )
    return ThresholdBand(pass_below=pass_below, reject_at=reject_at)


def _parse_class_band(spec: str, defect_classes: list[str]):
    parts = spec.rsplit(":", 2)
    if len(parts) != 3:
        raise ConfigError(f"--class {spec!r} is not NAME:PASS_BELOW:REJECT_AT, e.g. 'crack:0.1:0.4'")
    name, pb, ra = parts
    if name not in defect_classes:
        raise ConfigError(f"--class {spec!r}: {name!r} is not a defect class; defect classes are {defect_classes}")
    try:
        return name, _band(float(pb), float(ra), f"P({name})")
    except ValueError:
        raise ConfigError(f"--class {spec!r}: {pb!r} and {ra!r} must be numbers between 0 and 1") from None


#: what the targets are called here, for the paragraph when they cannot be met (``andon.training.targets``)
_OPTION_NAMES = {
    "target_escape": "--target-escape",
    "max_false_reject": "--max-false-reject",
    "max_review": "--max-review",
    "no_cap": "1",
    "budget": "--budget",
}


def _targets(
    target_escape: float | None, max_false_reject: float | None, max_review: float | None
) -> tuple[float, float | None, float | None]:
    """The calibration targets: the options given, the default recipe's (default.yaml) for the others; a cap or a
    budget of 1 (or more) means none."""
    from andon.training.recipe import default_dict

    defaults = default_dict()["decision"]
    target_escape = (defaults["target_escape"] or 0.005) if target_escape is None else target_escape
    max_false_reject = defaults["max_false_reject"] if max_false_reject is None else max_false_reject
    max_review = defaults["max_review"] if max_review is None else max_review
    return (
        target_escape,
        None if max_false_reject is not None and max_false_reject >= 1 else max_false_reject,
        None if max_review is not None and max_review >= 1 else max_review,
    )


def _calibrate(
    inspector,
    data: Path,
    split: str,
    remap: str | None,
    target_escape: float,
    max_false_reject: float | None,
    max_review: float | None,
    class_target: list[str],
    budget: bool = False,
):
    """(calibration result or None, operating points, why the targets are not met or None)."""
    import numpy as np

    from andon.cli.evaluate import _load, _select
    from andon.errors import CalibrationError
    from andon.evaluation.calibration import calibrate_budget, calibrate_probs
    from andon.evaluation.evaluate import labels_for, onnx_probs
    from andon.evaluation.metrics import defect_score
    from andon.evaluation.tradeoff import operating_points
    from andon.training.targets import shortfall

    ds = _load(data, remap)
    subset, split_name, _ = _select(ds, split)
    card = inspector.card
    y = labels_for([s.label for s in subset], card.classes, source=str(data))
    probs = onnx_probs(inspector, [s.path for s in subset])
    targets = dict(_parse_class_target(t) for t in class_target)
    source = f"{data}" + (f" split '{split_name}'" if split_name else "")
    defect_idx = card.defect_indices
    bad, scores = np.isin(y, defect_idx), defect_score(probs, defect_idx)
    points = operating_points(bad, scores)
    goals = {
        "target_escape": target_escape,
        "max_false_reject": max_false_reject,
        "max_review": max_review,
        "where": "the calibration data",
        "keys": _OPTION_NAMES,
    }
    if budget:
        if max_false_reject is None or max_review is None:
            raise ConfigError(
                "--budget needs a false-reject cap and a review budget below 1 (--max-false-reject, --max-review)"
            )
        try:
            return (
                calibrate_budget(bad, scores, max_false_reject=max_false_reject, max_review=max_review, source=source),
                points,
                None,
            )
        except CalibrationError as exc:
            return None, points, exc.message
    try:  # the review budget is judged here, so that the paragraph can say what would fit in it
        result = calibrate_probs(
            y,
            probs,
            card.classes,
            card.defect_classes,
            target_escape=target_escape,
            max_false_reject=max_false_reject,
            per_class=targets,
            source=source,
        )
    except CalibrationError as exc:
        why = shortfall(bad, scores, error=exc.message, **goals)
        return None, points, why.paragraph if why is not None else exc.message
    why = shortfall(bad, scores, review_rate=result.review_rate, **goals)
    return result, points, None if why is None else why.paragraph


def _check_anomaly_options(card, anomaly_at: float | None, false_alarm: float | None) -> None:
    if anomaly_at is None and false_alarm is None:
        return
    if card.anomaly is None:
        raise ConfigError(
            f"--anomaly-at / --false-alarm: model {card.name} has no anomaly detector (export a run "
            "trained with anomaly.enabled)"
        )
    if anomaly_at is not None and card.anomaly_only:
        raise ConfigError(
            "an anomaly-only model decides on its P(anomaly), the anomaly score: set its band with "
            "--pass-below / --reject-at"
        )
    if false_alarm is not None and not 0.0 < false_alarm < 0.5:
        raise ConfigError(f"--false-alarm {false_alarm} must be a share of good parts between 0 and 0.5, e.g. 0.01")


def _anomaly_band(inspector, data: Path, split: str, remap: str | None, false_alarm: float):
    """The anomaly band [t, never) with at most ``false_alarm`` of good parts flagged (the rank rule), and a line."""
    import numpy as np

    from andon.cli.evaluate import _load, _select
    from andon.evaluation.calibration import reject_at_for
    from andon.evaluation.evaluate import labels_for, onnx_outputs
    from andon.inspect.card import ThresholdBand

    subset, split_name, _ = _select(_load(data, remap), split)
    card = inspector.card
    y = labels_for([s.label for s in subset], card.classes, source=str(data))
    scores = np.asarray(onnx_outputs(inspector, [s.path for s in subset]).get("anomaly_score"), dtype=np.float64)
    good = scores[~np.isin(y, card.defect_indices)]
    t = reject_at_for(good, false_alarm, floor=0.0)
    caught = float((scores[np.isin(y, card.defect_indices)] >= t).mean()) if len(good) < len(scores) else float("nan")
    text = (
        f"anomaly threshold {t:.6g}: at most {false_alarm:.1%} of good parts flagged (rank rule on {len(good)} good "
        f"parts of {data}{f' split {split_name!r}' if split_name else ''}; {float((good >= t).mean()):.1%} of them "
        f"flagged here" + ("" if np.isnan(caught) else f", {caught:.1%} of the defective ones") + ")"
    )
    return ThresholdBand(pass_below=t, reject_at=1.0), text


def _parse_class_target(text: str) -> tuple[str, float | None]:
    name, sep, target = text.partition(":")
    if not sep:
        return name, None
    try:
        return name, float(target)
    except ValueError:
        raise ConfigError(f"--class-target {text!r} is not NAME or NAME:TARGET (e.g. 'crack:0.001')") from None
