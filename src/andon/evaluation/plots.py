"""Report figures as PNG files: data in, path out (matplotlib's Agg canvas, no pyplot state, torch-free).

Used by the training report and by ``andon evaluate``. Every function takes plain numbers (numpy arrays,
lists), writes one PNG at ``out`` and returns its path. matplotlib is imported when a plot is drawn, so
importing this module costs nothing.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from andon.evaluation.metrics import pr_auc, pr_curve, roc_auc, roc_curve
from andon.evaluation.tradeoff import TradeoffCurve
from andon.inspect.card import ThresholdBand

if TYPE_CHECKING:
    from matplotlib.figure import Figure

_DPI = 110


def require() -> None:
    """Fail before anything is computed or written where matplotlib (the [data] extra) is not installed:
    ``andon.cli.main`` turns the ModuleNotFoundError into one line naming the extra."""
    import matplotlib  # noqa: F401


def _figure(width: float, height: float) -> Figure:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=_DPI, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _save(fig: Figure, out: str | Path) -> Path:
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")  # written whole, then renamed: never a half-written figure
    fig.savefig(tmp, format="png")
    tmp.replace(out)
    return out


def plot_training_curves(
    rows: Sequence[Mapping[str, float | str]],
    out: str | Path,
    metrics: Sequence[str] = ("val_accuracy", "val_macro_recall", "val_macro_f1"),
    best_epoch: int | None = None,
) -> Path:
    """Loss (train, val) and validation metrics per epoch, from metrics.csv rows; dashed line: best epoch."""
    epochs = np.array([float(r["epoch"]) for r in rows])
    fig = _figure(10, 3.6)
    ax_loss, ax_metric = fig.subplots(1, 2)
    for key, label in (("train_loss", "train loss"), ("val_loss", "val loss")):
        ax_loss.plot(epochs, [float(r[key]) for r in rows], marker="o", ms=3, label=label)
    ax_loss.set(xlabel="epoch", ylabel="cross-entropy", title="loss")
    for key in metrics:
        if rows and key in rows[0]:
            ax_metric.plot(epochs, [float(r[key]) for r in rows], marker="o", ms=3, label=key.removeprefix("val_"))
    if best_epoch is not None:
        ax_metric.axvline(best_epoch, color="grey", ls="--", lw=1, label=f"best epoch {best_epoch}")
    ax_metric.set(xlabel="epoch", ylabel="validation", title="validation metrics", ylim=(0, 1.02))
    from matplotlib.ticker import MaxNLocator

    for ax in (ax_loss, ax_metric):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    return _save(fig, out)


def plot_confusion(
    cm: np.ndarray | Sequence[Sequence[int]], classes: Sequence[str], out: str | Path, title: str = "confusion matrix"
) -> Path:
    """Counts and row-normalised rates (recall on the diagonal); rows are the truth."""
    cm = np.asarray(cm, dtype=np.int64)
    rates = cm / np.maximum(cm.sum(axis=1, keepdims=True), 1)
    k = len(classes)
    side = max(4.0, 0.55 * k + 2.0)
    fig = _figure(2 * side + 1, side)
    axes = fig.subplots(1, 2)
    for ax, values, fmt, name in ((axes[0], cm, "d", "counts"), (axes[1], rates, ".2f", "row-normalised")):
        ax.imshow(rates, cmap="Blues", vmin=0, vmax=1)
        for i in range(k):
            for j in range(k):
                ax.text(
                    j,
                    i,
                    format(values[i, j], fmt),
                    ha="center",
                    va="center",
                    fontsize=8,
                    color="white" if rates[i, j] > 0.5 else "black",
                )
        ax.set_xticks(range(k), classes, rotation=45, ha="right", fontsize=8)
        ax.set_yticks(range(k), classes, fontsize=8)
        ax.set(xlabel="predicted", ylabel="true", title=f"{title} ({name})")
    return _save(fig, out)


def plot_per_class(
    names: Sequence[str],
    precision: Sequence[float],
    recall: Sequence[float],
    out: str | Path,
    support: Sequence[int] | None = None,
    title: str = "per-class precision and recall",
) -> Path:
    """Grouped bars per class; the support (images) under each name."""
    x = np.arange(len(names))
    fig = _figure(max(5.0, 0.9 * len(names) + 2), 3.6)
    ax = fig.subplots()
    ax.bar(x - 0.2, np.nan_to_num(np.asarray(precision, float)), 0.4, label="precision")
    ax.bar(x + 0.2, np.nan_to_num(np.asarray(recall, float)), 0.4, label="recall")
    labels = [f"{n}\n(n={s})" for n, s in zip(names, support)] if support is not None else list(names)
    ax.set_xticks(x, labels, fontsize=8)
    ax.set(ylim=(0, 1.05), title=title)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    return _save(fig, out)


def plot_roc(
    curves: Mapping[str, tuple[np.ndarray, np.ndarray]], out: str | Path, title: str = "ROC: defect vs good"
) -> Path:
    """One ROC curve per entry: name -> (is_positive, score), with its AUC in the legend."""
    fig = _figure(4.6, 4.2)
    ax = fig.subplots()
    for name, (positive, score) in curves.items():
        fpr, tpr, _ = roc_curve(positive, score)
        ax.plot(fpr, tpr, label=f"{name} (AUC {roc_auc(positive, score):.3f})")
    ax.plot([0, 1], [0, 1], color="grey", ls=":", lw=1)
    ax.set(
        xlabel="false-positive rate (good parts flagged)",
        ylabel="true-positive rate (defects caught)",
        title=title,
        xlim=(0, 1),
        ylim=(0, 1.02),
    )
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    return _save(fig, out)


def plot_pr(
    curves: Mapping[str, tuple[np.ndarray, np.ndarray]],
    out: str | Path,
    title: str = "precision-recall: defect vs good",
) -> Path:
    """One precision-recall curve per entry: name -> (is_positive, score), with its average precision."""
    fig = _figure(4.6, 4.2)
    ax = fig.subplots()
    for name, (positive, score) in curves.items():
        precision, recall, _ = pr_curve(positive, score)
        ax.step(recall, precision, where="post", label=f"{name} (AP {pr_auc(positive, score):.3f})")
    ax.set(xlabel="recall (defects caught)", ylabel="precision", title=title, xlim=(0, 1), ylim=(0, 1.02))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower left")
    return _save(fig, out)


def plot_image_grid(
    images: Sequence[np.ndarray],
    captions: Sequence[str],
    out: str | Path,
    columns: int = 6,
    title: str = "worst mistakes",
) -> Path:
    """uint8 RGB images in a grid with a caption each (e.g. true / predicted / score)."""
    n = max(1, len(images))
    cols = min(columns, n)
    rows = (n + cols - 1) // cols
    fig = _figure(max(2.1 * cols, 4.2), 2.4 * rows + 0.4)  # wide enough for the title over one image
    fig.suptitle(title, wrap=True)
    axes = np.atleast_1d(fig.subplots(rows, cols)).ravel()
    for ax in axes:
        ax.axis("off")
    if not images:
        axes[0].text(0.5, 0.5, "none", ha="center", va="center")
    for ax, image, caption in zip(axes, images, captions):
        ax.imshow(image, cmap="gray" if image.ndim == 2 else None, vmin=0, vmax=255)
        ax.set_title(caption, fontsize=7)
    return _save(fig, out)


def plot_tradeoff(
    curve: TradeoffCurve,
    path: str | Path,
    *,
    band: ThresholdBand | None = None,
    target_escape: float | None = None,
    title: str = "Escape / false-reject / review trade-off",
) -> Path:
    """PNG with two panels: the rates over the threshold (chosen band shaded), and review vs false reject."""
    fig = _figure(13, 4.8)
    left, right = fig.subplots(1, 2)
    _sweep_panel(left, curve, band, target_escape)
    _band_panel(right, curve, band)
    fig.suptitle(title)
    return _save(fig, Path(path))


def _sweep_panel(ax, curve: TradeoffCurve, band: ThresholdBand | None, target: float | None) -> None:
    t = curve.thresholds
    keep = t <= 1.0
    # each rate at grid point t_i holds for thresholds in (t_{i-1}, t_i]: a step drawn "pre"
    ax.plot(
        t[keep], curve.escape[keep], color="#c0392b", lw=2, drawstyle="steps-pre", label="escape rate if pass_below = t"
    )
    ax.plot(
        t[keep],
        curve.false_reject[keep],
        color="#2471a3",
        lw=2,
        drawstyle="steps-pre",
        label="false-reject rate if reject_at = t",
    )
    ax.plot(
        t[keep],
        curve.below[keep],
        color="#7f8c8d",
        lw=1,
        ls=":",
        drawstyle="steps-pre",
        label="parts with P(defect) < t",
    )
    if target is not None:
        ax.axhline(target, color="#c0392b", ls="--", lw=1, label=f"target escape {target:.2%}")
    if band is not None:
        rates = curve.rates(band)
        ax.axvspan(
            band.pass_below,
            max(band.reject_at, band.pass_below + 1e-3),
            color="#f5b041",
            alpha=0.35,
            label=f"review band: {rates['review_rate']:.1%} of parts",
        )
        ax.axvline(band.pass_below, color="#c0392b", lw=1)
        ax.axvline(band.reject_at, color="#2471a3", lw=1)
        ax.plot([band.pass_below], [rates["escape_rate"]], "o", color="#c0392b", ms=8)
        ax.plot([band.reject_at], [rates["false_reject_rate"]], "o", color="#2471a3", ms=8)
    ax.set_yscale("symlog", linthresh=1e-3)
    ax.set_ylim(0, 1.05)
    ax.set_xlim(0, 1)
    ax.set_xlabel("threshold t on P(defect)")
    ax.set_ylabel("rate")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="center right")


def _band_panel(ax, curve: TradeoffCurve, band: ThresholdBand | None) -> None:
    """For fixed pass_below (fixed escape rate), moving reject_at up trades false rejects for review."""
    t = curve.thresholds[curve.thresholds <= 1.0]
    pass_belows = _panel_pass_belows(curve, band)
    colours = ["#1abc9c", "#8e44ad", "#e67e22", "#34495e"]
    for colour, pb in zip(colours, pass_belows):
        i = int(np.searchsorted(curve.thresholds, pb))
        ra = t[t >= pb]
        j = np.searchsorted(curve.thresholds, ra)
        review = curve.below[j] - curve.below[i]
        ax.plot(
            review,
            curve.false_reject[j],
            color=colour,
            lw=2,
            label=f"pass_below {pb:.3g} (escape {curve.escape[i]:.2%})",
        )
    if band is not None:
        rates = curve.rates(band)
        ax.plot(
            [rates["review_rate"]],
            [rates["false_reject_rate"]],
            marker="*",
            color="#c0392b",
            ms=16,
            ls="none",
            label=f"chosen: escape {rates['escape_rate']:.2%}, false reject {rates['false_reject_rate']:.2%}, "
            f"review {rates['review_rate']:.2%}",
        )
    ax.set_xscale("symlog", linthresh=1e-2)
    ax.set_yscale("symlog", linthresh=1e-3)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.05)
    ax.set_xlabel("review rate (parts sent to an operator)")
    ax.set_ylabel("false-reject rate (good parts rejected)")
    ax.set_title("widening the band: reject_at moves up from pass_below", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper right")


def _panel_pass_belows(curve: TradeoffCurve, band: ThresholdBand | None) -> list[float]:
    """pass_below values for the right panel: the chosen one and a few giving round escape rates."""
    chosen = [band.pass_below] if band is not None else []
    others = []
    if curve.n_defective:
        t = curve.thresholds
        for rate in (0.005, 0.02, 0.05):
            ok = np.nonzero(curve.escape <= rate)[0]
            if len(ok):
                others.append(float(t[ok[-1]]))
    seen, out = set(), []
    for pb in chosen + others:
        if round(pb, 4) not in seen:
            seen.add(round(pb, 4))
            out.append(pb)
    return out[:4]
