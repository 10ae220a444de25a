"""Classification and plant metrics from labels and probabilities (numpy only, no torch, no sklearn).

``defect_score`` is the probability that a part is defective: the summed probability of the defect
classes. The plant figures are defined on it:

- escape rate: defective parts that were passed / defective parts
- false-reject rate: good parts that were rejected / good parts
- review rate: parts sent to an operator / all parts
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np

from andon.inspect.decision import defect_score

__all__ = ["defect_score"]  # defined with the decision it feeds; re-exported for the metrics' readers


def confusion_matrix(y_true: np.ndarray, y_pred: np.ndarray, num_classes: int) -> np.ndarray:
    """Rows: true class, columns: predicted class."""
    cm = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(cm, (np.asarray(y_true, dtype=np.int64), np.asarray(y_pred, dtype=np.int64)), 1)
    return cm


def roc_curve(is_positive: np.ndarray, score: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """False-positive rate, true-positive rate and thresholds (score >= t is positive), descending t."""
    pos = np.asarray(is_positive, dtype=bool)
    score = np.asarray(score, dtype=np.float64)
    order = np.argsort(-score, kind="mergesort")
    s, p = score[order], pos[order]
    distinct = np.r_[np.nonzero(np.diff(s))[0], len(s) - 1] if len(s) else np.array([], dtype=int)
    tps = np.cumsum(p)[distinct]
    fps = (distinct + 1) - tps
    n_pos, n_neg = max(int(pos.sum()), 1), max(int((~pos).sum()), 1)
    tpr = np.r_[0.0, tps / n_pos]
    fpr = np.r_[0.0, fps / n_neg]
    thresholds = np.r_[np.inf, s[distinct]]
    return fpr, tpr, thresholds


def roc_auc(is_positive: np.ndarray, score: np.ndarray) -> float:
    """Area under the ROC curve; NaN when only one kind of part is present."""
    pos = np.asarray(is_positive, dtype=bool)
    if pos.all() or (~pos).all():
        return float("nan")
    fpr, tpr, _ = roc_curve(pos, score)
    return float(np.trapezoid(tpr, fpr))


def pr_curve(is_positive: np.ndarray, score: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Precision, recall and thresholds (score >= t is positive), descending t."""
    pos = np.asarray(is_positive, dtype=bool)
    fpr, tpr, thresholds = roc_curve(pos, score)
    n_pos, n_neg = int(pos.sum()), int((~pos).sum())
    tp, fp = tpr[1:] * n_pos, fpr[1:] * n_neg
    precision = np.divide(tp, tp + fp, out=np.ones_like(tp), where=(tp + fp) > 0)
    return np.r_[1.0, precision], tpr, thresholds


def pr_auc(is_positive: np.ndarray, score: np.ndarray) -> float:
    """Average precision (step-wise area under the precision-recall curve)."""
    pos = np.asarray(is_positive, dtype=bool)
    if pos.all() or (~pos).all():
        return float("nan")
    precision, recall, _ = pr_curve(pos, score)
    return float(np.sum(np.diff(recall) * precision[1:]))


@dataclass
class ClassMetrics:
    name: str
    support: int
    precision: float
    recall: float
    f1: float


@dataclass
class ClassificationReport:
    """What a quality engineer reads first. Built by ``classification_report``."""

    classes: list[str]
    defect_classes: list[str]
    n: int
    accuracy: float
    macro_recall: float
    macro_f1: float
    per_class: list[ClassMetrics]
    confusion: list[list[int]]
    #: recall of "defect vs good" (any defect class predicted for a defective part); NaN without defects
    defect_recall: float
    roc_auc: float
    pr_auc: float
    extra: dict[str, float] = field(default_factory=dict)

    def as_dict(self) -> dict:
        return asdict(self)

    def headline(self) -> dict[str, float]:
        """The flat numbers that go into the model card and metrics.csv."""
        out = {
            "accuracy": self.accuracy,
            "macro_recall": self.macro_recall,
            "macro_f1": self.macro_f1,
            "defect_recall": self.defect_recall,
            "roc_auc": self.roc_auc,
            "pr_auc": self.pr_auc,
        }
        out.update(self.extra)
        return {k: float(v) for k, v in out.items()}


def classification_report(
    y_true: np.ndarray, probs: np.ndarray, classes: list[str], defect_classes: list[str]
) -> ClassificationReport:
    """Accuracy, per-class precision/recall/F1, confusion matrix, and defect-vs-good ROC/PR AUC."""
    y_true = np.asarray(y_true, dtype=np.int64)
    probs = np.asarray(probs, dtype=np.float64)
    k = len(classes)
    y_pred = probs.argmax(axis=1) if len(probs) else np.zeros(0, dtype=np.int64)
    cm = confusion_matrix(y_true, y_pred, k)
    per_class = []
    for i, name in enumerate(classes):
        tp = cm[i, i]
        support = int(cm[i].sum())
        predicted = int(cm[:, i].sum())
        precision = tp / predicted if predicted else float("nan")
        recall = tp / support if support else float("nan")
        f1 = (
            2 * precision * recall / (precision + recall)
            if support and predicted and (precision + recall) > 0
            else 0.0
            if support
            else float("nan")
        )
        per_class.append(ClassMetrics(name, support, float(precision), float(recall), float(f1)))
    present = [m for m in per_class if m.support > 0]
    defect_idx = [classes.index(c) for c in defect_classes]
    is_defect = np.isin(y_true, defect_idx)
    pred_defect = np.isin(y_pred, defect_idx)
    defect_recall = float(pred_defect[is_defect].mean()) if is_defect.any() else float("nan")
    score = defect_score(probs, defect_idx) if len(probs) else np.zeros(0)
    return ClassificationReport(
        classes=list(classes),
        defect_classes=list(defect_classes),
        n=int(len(y_true)),
        accuracy=float((y_pred == y_true).mean()) if len(y_true) else float("nan"),
        macro_recall=float(np.mean([m.recall for m in present])) if present else float("nan"),
        macro_f1=float(np.mean([m.f1 for m in present])) if present else float("nan"),
        per_class=per_class,
        confusion=cm.tolist(),
        defect_recall=defect_recall,
        roc_auc=roc_auc(is_defect, score),
        pr_auc=pr_auc(is_defect, score),
    )


@dataclass
class DecisionRates:
    """The plant's figures for three-way decisions (pass / review / reject) against the truth."""

    n: int
    n_defective: int
    n_good: int
    escape_rate: float
    false_reject_rate: float
    review_rate: float
    #: defective parts caught (rejected or sent to review) / defective parts
    catch_rate: float

    def as_dict(self) -> dict[str, float]:
        return {k: float(v) for k, v in asdict(self).items()}


def decision_rates(is_defective: np.ndarray, decisions: np.ndarray) -> DecisionRates:
    """``decisions`` holds "pass", "review" or "reject" per part."""
    d = np.asarray(decisions)
    bad = np.asarray(is_defective, dtype=bool)
    n_bad, n_good = int(bad.sum()), int((~bad).sum())
    escapes = int(((d == "pass") & bad).sum())
    false_rejects = int(((d == "reject") & ~bad).sum())
    return DecisionRates(
        n=int(len(d)),
        n_defective=n_bad,
        n_good=n_good,
        escape_rate=escapes / n_bad if n_bad else float("nan"),
        false_reject_rate=false_rejects / n_good if n_good else float("nan"),
        review_rate=float((d == "review").mean()) if len(d) else float("nan"),
        catch_rate=1 - escapes / n_bad if n_bad else float("nan"),
    )
