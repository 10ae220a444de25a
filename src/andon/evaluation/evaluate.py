"""Evaluating a model on a labelled set: what ``andon evaluate`` computes, prints and writes (torch-free).

The figures a plant runs on come first: the escape rate (defective parts passed) and the false-reject rate
(good parts rejected) at the model's own thresholds, and the review rate those thresholds cost. Around them:
accuracy, per-class precision/recall/F1, the confusion matrix, ROC AUC and PR AUC of defect vs good, and the
trade-off between escapes, false rejects and review (``andon.evaluation.tradeoff``).

Probabilities come from an exported ``.onnx`` through the inspector's own path (``Preprocessor`` then one
onnxruntime call per batch) or, for a training run folder, from ``andon.training.predict`` (needs torch).
"""

from __future__ import annotations

import html
import json
import math
import os
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from andon.errors import AndonError, ConfigError, DatasetError, RunError
from andon.evaluation.calibration import CalibrationResult
from andon.evaluation.metrics import (
    ClassificationReport,
    DecisionRates,
    classification_report,
    decision_rates,
    defect_score,
)
from andon.evaluation.tradeoff import OperatingPoint, TradeoffCurve, operating_points, tradeoff_curve
from andon.fileio import write_atomic
from andon.inspect.card import ModelCard, Thresholds, default_defect_classes
from andon.inspect.decision import DecisionPolicy
from andon.inspect.outputs import ModelOutputs, output_spec

Progress = bool | None | Callable[[int, int], None]


@dataclass
class Evaluation:
    """Everything ``andon evaluate`` reports, for one model on one labelled set."""

    model: dict[str, str]
    data: dict[str, object]
    classes: list[str]
    defect_classes: list[str]
    thresholds: Thresholds
    report: ClassificationReport
    rates: DecisionRates
    decisions: dict[str, int]
    operating_points: list[OperatingPoint]
    curve: TradeoffCurve
    y_true: np.ndarray
    outputs: ModelOutputs
    #: frames flagged (review or reject) per deciding signal: {"defect": 12, "anomaly": 3}
    flagged_by: dict[str, int] = field(default_factory=dict)
    calibration: CalibrationResult | None = None
    calibrated_rates: DecisionRates | None = None
    calibrated_decisions: dict[str, int] | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def probs(self) -> np.ndarray:
        return np.asarray(self.outputs.probs, dtype=np.float64)

    @property
    def anomaly_auc(self) -> float:
        """ROC AUC of the good-only anomaly score for defective vs good parts (NaN without one)."""
        from andon.evaluation.metrics import roc_auc

        score = self.outputs.get("anomaly_score")
        return float("nan") if score is None else roc_auc(self.is_defective, score)

    @property
    def scores(self) -> np.ndarray:
        return defect_score(self.probs, [self.classes.index(c) for c in self.defect_classes])

    @property
    def is_defective(self) -> np.ndarray:
        return np.isin(self.y_true, [self.classes.index(c) for c in self.defect_classes])

    def as_dict(self) -> dict:
        """JSON-ready (NaN becomes null)."""
        report = self.report
        out = {
            "model": self.model,
            "data": self.data,
            "classes": self.classes,
            "defect_classes": self.defect_classes,
            "thresholds": self.thresholds.model_dump(),
            "metrics": report.headline(),
            "per_class": [vars(m) for m in report.per_class],
            "confusion": report.confusion,
            "decisions": self.decisions,
            "flagged_by": self.flagged_by,
            "anomaly_roc_auc": self.anomaly_auc,
            "rates": self.rates.as_dict(),
            "operating_points": [p.as_dict() for p in self.operating_points],
            "calibration": None if self.calibration is None else self.calibration.as_dict(),
            "calibrated_rates": None if self.calibrated_rates is None else self.calibrated_rates.as_dict(),
            "calibrated_decisions": self.calibrated_decisions,
            "notes": self.notes,
        }
        return jsonable(out)


def evaluate_probs(
    y_true: np.ndarray,
    probs: np.ndarray | ModelOutputs,
    classes: Sequence[str],
    defect_classes: Sequence[str],
    thresholds: Thresholds,
    *,
    model: dict[str, str] | None = None,
    data: dict[str, object] | None = None,
    calibration: CalibrationResult | None = None,
    anomaly_only: bool = False,
) -> Evaluation:
    """All figures from labels and model outputs (or bare probabilities); with ``calibration``, also the rates its
    thresholds give here."""
    classes, defect_classes = list(classes), list(defect_classes)
    y_true = np.asarray(y_true, dtype=np.int64)
    outputs = probs if isinstance(probs, ModelOutputs) else ModelOutputs.of(np.asarray(probs, dtype=np.float64))
    probs = np.asarray(outputs.probs, dtype=np.float64)
    report = classification_report(y_true, probs, classes, defect_classes)
    defect_idx = [classes.index(c) for c in defect_classes]
    bad, score = np.isin(y_true, defect_idx), defect_score(probs, defect_idx)
    verdicts = DecisionPolicy(thresholds, classes, defect_classes, anomaly_only=anomaly_only).decide(outputs)
    decisions = verdicts.decisions
    band = thresholds.defect
    evaluation = Evaluation(
        model=model or {},
        data=data or {},
        classes=classes,
        defect_classes=defect_classes,
        thresholds=thresholds,
        report=report,
        rates=decision_rates(bad, decisions),
        decisions=verdicts.counts(),
        operating_points=operating_points(bad, score),
        curve=tradeoff_curve(bad, score, extra=(band.pass_below, band.reject_at)),
        y_true=y_true,
        outputs=outputs,
        flagged_by=verdicts.flagged_by(),
    )
    if calibration is not None:
        # calibration sets the classifier's bands; the card's anomaly band still decides beside them
        recalibrated = calibration.thresholds.model_copy(update={"anomaly": thresholds.anomaly})
        calibrated = DecisionPolicy(recalibrated, classes, defect_classes, anomaly_only=anomaly_only).decide(outputs)
        evaluation.calibration = calibration
        evaluation.calibrated_rates = decision_rates(bad, calibrated.decisions)
        evaluation.calibrated_decisions = calibrated.counts()
    if len(defect_classes) == len(classes):
        evaluation.notes.append(
            "every class is a defect class: P(defect) = 1 for every part, so every part is "
            "rejected; read the per-class figures, not the plant rates"
        )
    return evaluation


def defect_classes_for(classes: list[str], declared_by_card: list[str], option: str | None) -> list[str]:
    """The card's defect classes, or those a ``--defect-classes`` option names (comma-separated)."""
    if option is None:
        return list(declared_by_card)
    names = [c.strip() for c in option.split(",") if c.strip()]
    if not names:
        raise ConfigError(f"--defect-classes {option!r} names no class; classes are {classes}")
    return default_defect_classes(classes, names)


def thresholds_for(thresholds: Thresholds, defects: list[str]) -> Thresholds:
    """The card's thresholds, without per-class bands of classes no longer counted as defects."""
    kept = {c: b for c, b in thresholds.per_class.items() if c in defects}
    return thresholds if len(kept) == len(thresholds.per_class) else thresholds.model_copy(update={"per_class": kept})


# -- the labelled set --------------------------------------------------------------------------------------


def labels_for(labels: Sequence[str], classes: Sequence[str], *, source: str = "the data") -> np.ndarray:
    """Class indices of ``labels`` in the model's class order; unknown labels are a ``DatasetError``."""
    index = {c: i for i, c in enumerate(classes)}
    unknown = sorted({label for label in labels if label not in index})
    if unknown:
        raise DatasetError(
            f"{source} has class(es) {unknown} that the model does not know (its classes: {list(classes)}); "
            "rename them with --remap (e.g. 'scratch=defect') or evaluate on data with the model's classes"
        )
    return np.array([index[label] for label in labels], dtype=np.int64)


# -- probabilities from a model ------------------------------------------------------------------------------


def onnx_probs(
    inspector, paths: Sequence[Path], *, batch_size: int = 32, progress: Progress = True, workers: int | None = None
) -> np.ndarray:
    """NxK probabilities for image files (``onnx_outputs``' probabilities)."""
    return onnx_outputs(inspector, paths, batch_size=batch_size, progress=progress, workers=workers).probs


def onnx_outputs(
    inspector, paths: Sequence[Path], *, batch_size: int = 32, progress: Progress = True, workers: int | None = None
) -> ModelOutputs:
    """The model's outputs (all but the maps) for image files, through the inspector's preprocessing and one
    call per batch.

    Files are read and preprocessed by a few threads (the decoders release the GIL) while the network runs.
    Unreadable images are collected and reported together: a silently skipped image would change the figures.
    """
    from andon.datasets.progress import progress_bar

    k = len(inspector.card.classes)
    out = {
        key: np.zeros((len(paths), k) if key == "probabilities" else (len(paths),), dtype=np.float32)
        for key in inspector.card.output_names
        if not output_spec(key).is_map
    }
    failures: list[str] = []
    workers = workers or min(4, os.cpu_count() or 1)

    def tensor(path: Path) -> np.ndarray | None:
        try:
            return inspector.preprocessor(Path(path).read_bytes())
        except (AndonError, OSError) as exc:
            failures.append(f"{path}: {exc}")
            return None

    with ThreadPoolExecutor(max_workers=workers) as pool, progress_bar(len(paths), "evaluating", progress) as advance:
        for start in range(0, len(paths), batch_size):
            chunk = list(paths[start : start + batch_size])
            tensors = list(pool.map(tensor, chunk))
            ok = [i for i, t in enumerate(tensors) if t is not None]
            if ok:
                batch = inspector.predict(np.stack([tensors[i] for i in ok]))
                for key, values in batch.values.items():
                    out[key][[start + i for i in ok]] = values
            advance(len(chunk))
    if failures:
        raise DatasetError(
            f"{len(failures)} image(s) cannot be read, so the figures would be wrong: "
            + "; ".join(failures[:3])
            + ("; ..." if len(failures) > 3 else "")
            + "; find them all with 'andon data check'"
        )
    return ModelOutputs(out)


def model_outputs(
    model: Path, paths: Sequence[Path], *, batch_size: int = 32, progress: Progress = True
) -> tuple[ModelOutputs, ModelCard, dict[str, str]]:
    """Outputs from an exported ``.onnx`` (torch-free) or a training run folder (needs torch)."""
    model = Path(model)
    if model.is_dir():
        return _run_outputs(model, paths)
    from andon.inspect.inspector import Inspector

    inspector = Inspector.load(model)
    outputs = onnx_outputs(inspector, paths, batch_size=batch_size, progress=progress)
    info = {
        "path": str(model),
        "kind": "onnx",
        "name": inspector.card.name,
        "version": inspector.model_version,
        "hash": inspector.model_hash,
    }
    return outputs, inspector.card, info


def _run_outputs(run_dir: Path, paths: Sequence[Path]) -> tuple[ModelOutputs, ModelCard, dict[str, str]]:
    try:
        from andon.training.predict import predict_outputs  # torch: only for run folders
    except ImportError as exc:
        raise RunError(
            f"evaluating the run folder {run_dir} needs the training extras ({exc.name or exc} is missing): "
            "pip install 'andon[train]', or export it with 'andon export RUN' and evaluate the .onnx"
        ) from None
    outputs, card = predict_outputs(run_dir, list(paths))
    info = {"path": str(run_dir), "kind": "run", "name": card.name, "version": card.version, "hash": card.content_hash}
    return outputs, card, info


# -- the report --------------------------------------------------------------------------------------------


def write_report(evaluation: Evaluation, out_dir: str | Path) -> Path:
    """report.html, evaluation.json and the PNGs (confusion, ROC, PR, trade-off) in ``out_dir``."""
    from andon.evaluation import plots

    plots.require()  # before the folder: no empty report folder where matplotlib is missing
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    bad, score = evaluation.is_defective, evaluation.scores
    figures = {
        "confusion": plots.plot_confusion(evaluation.report.confusion, evaluation.classes, out_dir / "confusion.png")
    }
    if bad.any() and (~bad).any():
        figures["roc"] = plots.plot_roc({"P(defect)": (bad, score)}, out_dir / "roc.png")
        figures["pr"] = plots.plot_pr({"P(defect)": (bad, score)}, out_dir / "pr.png")
    target = evaluation.calibration.bands[0].target_escape if evaluation.calibration else None
    figures["tradeoff"] = plots.plot_tradeoff(
        evaluation.curve, out_dir / "tradeoff.png", band=evaluation.thresholds.defect, target_escape=target
    )
    write_atomic(out_dir / "evaluation.json", json.dumps(evaluation.as_dict(), indent=2))
    write_atomic(out_dir / "report.html", render_html(evaluation, {k: p.name for k, p in figures.items()}))
    return out_dir / "report.html"


def render_html(evaluation: Evaluation, figures: dict[str, str]) -> str:
    """A self-contained page (figures beside it): plant figures first, then the classification details."""
    e, r, rates = evaluation, evaluation.report, evaluation.rates
    band = e.thresholds.defect
    parts = [
        f"<h1>Evaluation of {_h(e.model.get('name', '?'))} v{_h(e.model.get('version', '?'))}</h1>",
        f"<p>Model <code>{_h(e.model.get('path', ''))}</code> (hash {_h(str(e.model.get('hash', ''))[:12])}) on "
        f"<code>{_h(str(e.data.get('path', '')))}</code>, split {_h(str(e.data.get('split') or 'all'))}: "
        f"{r.n} images, {rates.n_defective} defective, {rates.n_good} good. Defect classes: "
        f"{_h(', '.join(e.defect_classes))}.</p>",
        *[f"<p class='note'>{_h(n)}</p>" for n in e.notes],
        "<h2>At the model's thresholds</h2>",
        f"<p class='band'>pass if P(defect) &lt; <b>{band.pass_below:.4g}</b>, reject if P(defect) &ge; "
        f"<b>{band.reject_at:.4g}</b>, review in between{_per_class_html(e.thresholds)} "
        f"<small>({_h(e.thresholds.source)})</small></p>",
        _table(
            ["escape rate", "false-reject rate", "review rate", "pass", "review", "reject"],
            [
                [
                    _pct(rates.escape_rate),
                    _pct(rates.false_reject_rate),
                    _pct(rates.review_rate),
                    e.decisions["pass"],
                    e.decisions["review"],
                    e.decisions["reject"],
                ]
            ],
            cls="plant",
        ),
    ]
    if e.calibration is not None and e.calibrated_rates is not None:
        cal, cr = e.calibration, e.calibrated_rates
        parts += [
            "<h2>With calibrated thresholds (checked on this held-out data)</h2>",
            f"<p>{_h(cal.description)}</p>",
            _table(
                ["", "escape rate", "false-reject rate", "review rate"],
                [
                    ["calibration data", _pct(cal.escape_rate), _pct(cal.false_reject_rate), _pct(cal.review_rate)],
                    ["this data", _pct(cr.escape_rate), _pct(cr.false_reject_rate), _pct(cr.review_rate)],
                ],
            ),
        ]
    parts += [
        "<h2>Trade-off: escapes vs false rejects vs review</h2>",
        _img(figures, "tradeoff"),
        "<p>Each row: the band calibrated on this data for an escape target and a false-reject cap "
        "(— = two-way, no review band).</p>",
        _table(
            ["target escape", "max false reject", "pass_below", "reject_at", "escape", "false reject", "review"],
            [_point_row(p) for p in e.operating_points],
        ),
        "<h2>Classification</h2>",
        _table(
            ["accuracy", "macro recall", "macro F1", "defect recall", "ROC AUC", "PR AUC"],
            [
                [
                    _num(r.accuracy),
                    _num(r.macro_recall),
                    _num(r.macro_f1),
                    _num(r.defect_recall),
                    _num(r.roc_auc),
                    _num(r.pr_auc),
                ]
            ],
        ),
        _table(
            ["class", "support", "precision", "recall", "F1"],
            [[m.name, m.support, _num(m.precision), _num(m.recall), _num(m.f1)] for m in r.per_class],
        ),
        _table(["true \\ predicted", *r.classes], [[c, *row] for c, row in zip(r.classes, r.confusion)]),
        _img(figures, "confusion"),
        _img(figures, "roc"),
        _img(figures, "pr"),
    ]
    style = (
        "body{font-family:sans-serif;max-width:1100px;margin:2em auto;color:#222}table{border-collapse:collapse;"
        "margin:1em 0}td,th{border:1px solid #ccc;padding:4px 10px;text-align:right}th{background:#f4f4f4}"
        "table.plant td{font-size:1.3em;font-weight:bold}.band{font-size:1.15em;background:#fdf2e0;padding:.6em}"
        ".note{color:#a04000}img{max-width:100%}"
    )
    return (
        f"<!doctype html><html><head><meta charset='utf-8'><title>andon evaluation</title>"
        f"<style>{style}</style></head><body>{''.join(parts)}</body></html>"
    )


def _per_class_html(thresholds: Thresholds) -> str:
    if not thresholds.per_class:
        return ""
    bands = "; ".join(
        f"{_h(c)}: review from {b.pass_below:.4g}, reject from {b.reject_at:.4g}"
        for c, b in thresholds.per_class.items()
    )
    return f"; per-class bands (stricter only): {bands}"


def _point_row(p: OperatingPoint) -> list[str]:
    cap = "—" if p.max_false_reject is None else _pct(p.max_false_reject)
    if p.error:
        return [_pct(p.target_escape), cap, _Raw(f"<span title='{_h(p.error)}'>n/a</span>"), "", "", "", ""]
    return [
        _pct(p.target_escape),
        cap,
        f"{p.pass_below:.4g}",
        f"{p.reject_at:.4g}",
        _pct(p.escape_rate),
        _pct(p.false_reject_rate),
        _pct(p.review_rate),
    ]


class _Raw(str):
    """Markup built here (already escaped), as opposed to text from the data."""


def _table(header: Sequence[str], rows: Sequence[Sequence[object]], cls: str = "") -> str:
    head = "".join(f"<th>{_h(str(h))}</th>" for h in header)
    body = "".join(
        "<tr>" + "".join(f"<td>{c if isinstance(c, _Raw) else _h(str(c))}</td>" for c in row) + "</tr>" for row in rows
    )
    return f"<table class='{cls}'><tr>{head}</tr>{body}</table>"


def _img(figures: dict[str, str], key: str) -> str:
    return f"<p><img src='{_h(figures[key])}' alt='{key}'></p>" if key in figures else ""


def _h(text: str) -> str:
    return html.escape(text, quote=True)


def _pct(value: float | None) -> str:
    return "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.2%}"


def _num(value: float) -> str:
    return "n/a" if value is None or math.isnan(value) else f"{value:.4f}"


def jsonable(value):
    """Plain JSON types, NaN and infinities as null."""
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return None if not math.isfinite(float(value)) else float(value)
    if isinstance(value, np.ndarray):
        return jsonable(value.tolist())
    return value
