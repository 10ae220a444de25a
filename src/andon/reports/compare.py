"""A candidate model against another (usually the active one) on the same images, side by side.

``andon evaluate CANDIDATE DATA --compare active`` uses it: each model is evaluated with its own card (its
classes, defect classes and thresholds) on exactly the same samples, and the plant figures and the
classification figures are put next to each other with the difference. Run it on the reviewed frames'
test split (``OUT/reviewed.csv``) and on the original test split (the run's ``splits.csv``) before
promoting the candidate, or put it in shadow first (``andon models shadow``).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING

from andon.errors import ConfigError, NotFoundError

if TYPE_CHECKING:
    from andon.service.settings import Settings

#: (label, how to read it from an Evaluation, True when higher is better)
ROWS = (
    ("escape rate", lambda e: e.rates.escape_rate, False),
    ("false-reject rate", lambda e: e.rates.false_reject_rate, False),
    ("review rate", lambda e: e.rates.review_rate, False),
    ("accuracy", lambda e: e.report.accuracy, True),
    ("macro recall", lambda e: e.report.macro_recall, True),
    ("defect recall", lambda e: e.report.defect_recall, True),
    ("ROC AUC", lambda e: e.report.roc_auc, True),
)


def model_path(ref: str) -> Path:
    """``--compare`` given a model file or run folder (``active`` is ``active_model``)."""
    path = Path(ref)
    if not path.exists():
        raise ConfigError(
            f"--compare {ref!r}: no such file or run folder; give an .onnx file, a run folder "
            "or 'active' (the service's active model)"
        )
    return path


def active_model(settings: Settings) -> Path:
    """The model file of the active version in the registry of the service ``settings`` describe (the
    command's --config / --data-dir over ANDON_* and ./andon-data)."""
    from andon.service.domain import open_service

    with open_service(settings) as service:
        registry = service.registry
        active = registry.state().active
        if active is None:
            raise NotFoundError(f"--compare active: the registry in {settings.registry_dir} has no active model")
        return registry.get(active).path


def evaluate_on(
    model: Path, samples, data: Path, split_name: str | None, defect_option: str | None, batch: int, progress: bool
):
    """The Evaluation of ``model`` on ``samples`` with the model's own card."""
    from andon.evaluation.evaluate import defect_classes_for, evaluate_probs, labels_for, model_outputs, thresholds_for

    outputs, card, info = model_outputs(model, [s.path for s in samples], batch_size=batch, progress=progress)
    defects = defect_classes_for(card.classes, card.defect_classes, defect_option)
    y = labels_for([s.label for s in samples], card.classes, source=str(data))
    return evaluate_probs(
        y,
        outputs,
        card.classes,
        defects,
        thresholds_for(card.thresholds, defects),
        model=info,
        data={"path": str(data), "split": split_name, "n": len(samples)},
        anomaly_only=card.anomaly_only,
    )


def comparison(a, b) -> list[dict]:
    out = []
    for name, get, higher_better in ROWS:
        va, vb = get(a), get(b)
        delta = None if _missing(va) or _missing(vb) else va - vb
        better = None if delta is None or delta == 0 else (delta > 0) == higher_better
        out.append({"figure": name, "candidate": va, "other": vb, "difference": delta, "candidate_better": better})
    return out


def _missing(v) -> bool:
    return v is None or (isinstance(v, float) and math.isnan(v))


def print_comparison(a, b, console) -> None:
    from rich.markup import escape
    from rich.table import Table

    def name(e) -> str:
        return f"{e.model.get('name', '?')} v{e.model.get('version', '?')}"

    table = Table(
        title=f"Side by side on {escape(str(a.data.get('path')))} split {a.data.get('split') or 'all'} "
        f"({a.report.n} images)",
        title_justify="left",
    )
    for col in ("", f"candidate {escape(name(a))}", f"compared {escape(name(b))}", "difference"):
        table.add_column(col, justify="right")
    for row in comparison(a, b):
        rate = row["figure"].endswith("rate")
        fmt = (
            (lambda v: "n/a" if _missing(v) else f"{v:.2%}")
            if rate
            else (lambda v: "n/a" if _missing(v) else f"{v:.4f}")
        )
        diff = (
            "n/a"
            if row["difference"] is None
            else (f"{row['difference']:+.2%}" if rate else f"{row['difference']:+.4f}")
        )
        if row["candidate_better"] is not None:
            diff = f"[{'green' if row['candidate_better'] else 'red'}]{diff}[/]"
        table.add_row(row["figure"], fmt(row["candidate"]), fmt(row["other"]), diff)
    console.print(table)
