"""Heatmap quality against the defect masks: the class heatmap (CAM) and the anomaly map of one andon model.

    python -m bench.heatmaps --run runs/fusion/bench-mt2g-224-20      # the run's .onnx, or export it first
    python -m bench.heatmaps --run RUN --model some.onnx              # another file of that run

Protocol: the test images of the run's ``splits.csv`` (magnetic tile, the grouped split mt2g), each inspected
by ``andon.inspect.Inspector.inspect_batch(..., heatmap=True)`` (what the service shows: its own decoding and
preprocessing). Both maps of the model, ``heatmap`` (class activation map of P(defect)) and ``anomaly_map``
(the good-only PatchCore head), are bilinearly resized to the model input and compared with the defect masks
of ../shared/data/magnetic-tile-masks put through the same preprocessing resize, letterbox padding left out
(``bench.anomaly``'s mask loading and ``pixel_metrics``, imported, not copied):

- pixel AUROC over every pixel of every test image (``bench.anomaly.pixel_metrics``: every second pixel each
  way);
- AUPRO@0.3 (Bergmann et al., "The MVTec Anomaly Detection Dataset", IJCV 2021): every distinct map value is a
  threshold; at each, the false-positive rate is the share of defect-free pixels (of all test images, good ones
  included) at or above it, and the per-region overlap (PRO) the mean, over the connected components of the
  masks (8-connected, ``cv2.connectedComponents``, per image), of the share of the component's pixels at or
  above it. The PRO curve is integrated over FPR in [0, 0.3] (trapezoid, the value at 0.3 interpolated
  linearly) and divided by 0.3, so that a perfect map gives 1 and a constant map 0.15;
- the pointing game: the share of defective test images (with a non-empty mask) whose map maximum lies on the
  mask (``pixel_metrics``: ``np.argmax``, the first pixel of a tie); beside it the same with ties shared (per
  image, the share of the pixels tied at the maximum that lie on the mask: a saturated class heatmap has a
  plateau at 1.0) and with a tolerance (tied maxima within 16 pixels of the mask, one anomaly-map cell at
  224; Zhang et al.'s pointing game allows 15 px), and the chance level (the mean share of the image the mask
  covers: what a random point scores).

Per defect type, the figures use that type's test images plus every good test image (the good ones supply the
false positives); the pointing game only that type's images. The data sets are research-only: nothing of them is
copied into the repo (the JSON holds figures only).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import time
from pathlib import Path

import cv2
import numpy as np

from bench.anomaly import MASKS, Images, machine, pixel_metrics

REPO = Path(__file__).resolve().parents[1]
#: the FPR up to which the PRO curve is integrated (the MVTec AD paper's 30 %)
FPR_LIMIT = 0.3
#: the pointing game's tolerance in input pixels (Zhang et al. 2016 use 15 px; 16 = one anomaly-map cell at 224)
TOLERANCE = 16.0
#: model outputs measured, with the name the table gives them
MAPS = {"heatmap": "class heatmap (CAM)", "anomaly_map": "anomaly map (PatchCore)"}
PUBLISHED = (
    "PatchCore, MVTec AD (15 categories, good-only training, each category's own test set, "
    "WideResNet-50 features): pixel AUROC 98.1 %, AUPRO 93.5 % (Roth et al., CVPR 2022)"
)


# -- metrics ------------------------------------------------------------------------------------------------


def pro_curve(maps: np.ndarray, masks: np.ndarray, valid: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(FPR, PRO) of the threshold sweep over every distinct value of ``maps`` (N x H x W), highest first.

    ``masks`` (N x H x W bool) holds the defects; each 8-connected component of an image's mask is one region.
    Pixels outside ``valid`` (letterbox padding) count nowhere. The curve starts at (0, 0) (a threshold above
    every value) and ends at (1, 1); it is the MVTec AD definition, computed exactly: sorted once, the pixels'
    contributions (1 to the false positives for a defect-free pixel, 1 / region size to the overlap of its
    region for a defect pixel) summed cumulatively, and only the last pixel of each run of equal values kept
    (a threshold takes all of them or none). NaN curves when there is no region or no defect-free pixel.
    """
    maps = np.asarray(maps, dtype=np.float64)
    masks = np.asarray(masks, dtype=bool)
    if maps.shape != masks.shape or maps.ndim != 3:
        raise ValueError(f"maps {maps.shape} and masks {masks.shape} must both be N x H x W")
    valid = np.ones_like(masks) if valid is None else np.asarray(valid, dtype=bool)
    fp_step = np.zeros(maps.shape, dtype=np.float64)
    pro_step = np.zeros(maps.shape, dtype=np.float64)
    regions = 0
    for i, mask in enumerate(masks):
        fp_step[i][valid[i] & ~mask] = 1.0
        n, labels = cv2.connectedComponents((mask & valid[i]).astype(np.uint8), connectivity=8)
        if n <= 1:
            continue
        sizes = np.bincount(labels.ravel(), minlength=n).astype(np.float64)
        weights = np.zeros(n)
        weights[1:] = 1.0 / sizes[1:]
        pro_step[i] = weights[labels]
        regions += n - 1
    negatives = fp_step.sum()
    if regions == 0 or negatives == 0:
        return np.array([np.nan]), np.array([np.nan])
    keep = valid.ravel()
    scores, fp_step, pro_step = maps.ravel()[keep], fp_step.ravel()[keep], pro_step.ravel()[keep]
    order = np.argsort(-scores, kind="stable")
    scores = scores[order]
    fpr = np.cumsum(fp_step[order]) / negatives
    pro = np.cumsum(pro_step[order]) / regions
    last = np.append(scores[1:] != scores[:-1], True)  # the last pixel of each run of equal values
    fpr = np.concatenate(([0.0], np.clip(fpr[last], 0.0, 1.0), [1.0]))
    pro = np.concatenate(([0.0], np.clip(pro[last], 0.0, 1.0), [1.0]))
    return fpr, pro


def area_to(x: np.ndarray, y: np.ndarray, limit: float) -> float:
    """Trapezoid area under the curve (x non-decreasing from 0) from x = 0 to x = ``limit``; the curve's value
    at ``limit`` is interpolated linearly between its neighbouring points."""
    i = int(np.searchsorted(x, limit, side="right"))  # x[:i] <= limit < x[i:]
    xs, ys = x[:i], y[:i]
    if i < len(x) and xs[-1] < limit:
        t = (limit - x[i - 1]) / (x[i] - x[i - 1])
        xs, ys = np.append(xs, limit), np.append(ys, y[i - 1] + t * (y[i] - y[i - 1]))
    return float(np.sum((xs[1:] - xs[:-1]) * (ys[1:] + ys[:-1]) / 2.0))


def aupro(maps: np.ndarray, masks: np.ndarray, valid: np.ndarray | None = None, limit: float = FPR_LIMIT) -> float:
    """Area under the PRO curve up to FPR ``limit``, divided by ``limit`` (1 = perfect; constant map: limit / 2)."""
    fpr, pro = pro_curve(maps, masks, valid)
    if not np.isfinite(fpr).all():
        return float("nan")
    return area_to(fpr, pro, limit) / limit


def upsample(maps: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Maps (N x h x w) bilinearly resized to ``size``, as ``bench.anomaly.pixel_metrics`` does it."""
    import torch
    import torch.nn.functional as F

    t = torch.from_numpy(np.ascontiguousarray(maps, dtype=np.float32))[:, None]
    return F.interpolate(t, size=size, mode="bilinear", align_corners=False)[:, 0].numpy()


def tied_pointing(up: np.ndarray, masks: np.ndarray, valid: np.ndarray, tolerance: float) -> tuple[float, float]:
    """The pointing game with ties shared: per image, the share of the pixels tied at the map's maximum (inside
    ``valid``) that lie on the mask, and that lie within ``tolerance`` pixels of it (the hit rate if the tie were
    broken at random); both averaged over the images (defective ones with a non-empty mask only, by the caller).
    A saturated map (a plateau at its maximum) is a tie: ``np.argmax`` would take the plateau's first pixel."""
    on, near = [], []
    for u, m, v in zip(up, masks, valid):
        u = np.where(v, u, -np.inf)
        top = u == u.max()
        distance = cv2.distanceTransform((~m).astype(np.uint8), cv2.DIST_L2, cv2.DIST_MASK_PRECISE)
        on.append(m[top].mean())
        near.append((distance[top] <= tolerance).mean())
    return (float(np.mean(on)), float(np.mean(near))) if on else (float("nan"), float("nan"))


def map_metrics(
    maps: np.ndarray, masks: np.ndarray, valid: np.ndarray, bad: np.ndarray, tolerance: float = TOLERANCE
) -> dict[str, float]:
    """Pixel AUROC, AUPRO@FPR_LIMIT and the pointing game (strict, ties shared, within ``tolerance`` pixels) of
    ``maps`` (N x h x w, any resolution) against the masks at the model input (N x H x W); ``bad``: which images
    are defective."""
    import torch

    images = {"masks": masks, "valid": valid}
    pixel_auroc, pointing = pixel_metrics(torch.from_numpy(np.ascontiguousarray(maps, np.float32)), images, bad)
    up = upsample(maps, masks.shape[1:])
    pointed = [i for i in np.nonzero(bad)[0] if masks[i].any()]
    counted = len(pointed)
    on, near = tied_pointing(up[pointed], masks[pointed], valid[pointed], tolerance)
    regions = int(sum(cv2.connectedComponents(m.astype(np.uint8), connectivity=8)[0] - 1 for m in masks))
    return {
        "pixel_auroc": float(pixel_auroc),
        "aupro": aupro(up, masks, valid),
        "pointing_game": float(pointing),
        "pointing_ties_shared": on,
        "pointing_within_tolerance": near,
        "pointing_chance": float(np.mean([masks[i][valid[i]].mean() for i in pointed])) if pointed else float("nan"),
        "images": int(len(maps)),
        "defective_images": int(bad.sum()),
        "pointing_images": counted,
        "regions": regions,
    }


# -- the run ------------------------------------------------------------------------------------------------


def test_images(run: Path) -> list[tuple[Path, str]]:
    """(path, defect type) of the run's test split; the type is the image's folder (``ok`` for good parts)."""
    with open(run / "splits.csv", newline="") as f:
        rows = [r for r in csv.DictReader(f) if r["split"] == "test"]
    if not rows:
        raise SystemExit(f"{run / 'splits.csv'} lists no test images")
    return [(Path(r["path"]), Path(r["path"]).parent.name) for r in rows]


def model_file(run: Path, model: Path | None, say=print) -> Path:
    """``model``, else the one .onnx in the run folder, else the run exported (fp32, with its anomaly head) to
    runs/heatmaps/<run>.onnx (reused while newer than the run's best.pt)."""
    if model is not None:
        return model
    found = sorted(run.rglob("*.onnx"))
    if len(found) == 1:
        return found[0]
    if len(found) > 1:
        raise SystemExit(f"{run} holds several .onnx files ({', '.join(map(str, found))}); pick one with --model")
    out = REPO / "runs" / "heatmaps" / f"{run.name}.onnx"
    if out.is_file() and out.stat().st_mtime > (run / "best.pt").stat().st_mtime:
        return out
    from andon.models.export import export_run

    out.parent.mkdir(parents=True, exist_ok=True)
    say(f"exporting {run} to {out}")
    export_run(run, out)
    return out


def infer(inspector, paths: list[Path], batch: int = 16) -> dict[str, np.ndarray]:
    """Each map output (and P(defect), the anomaly score) of every image, through ``inspect_batch``."""
    out: dict[str, list] = {"heatmap": [], "anomaly_map": [], "defect_score": [], "anomaly_score": []}
    for start in range(0, len(paths), batch):
        for r in inspector.inspect_batch([p.read_bytes() for p in paths[start : start + batch]], heatmap=True):
            out["heatmap"].append(r.heatmap)
            out["anomaly_map"].append(r.anomaly_map)
            out["defect_score"].append(r.defect_score)
            out["anomaly_score"].append(r.anomaly_score)
    return {k: np.stack(v) if v and v[0] is not None else None for k, v in out.items()}


def run(run_dir: Path, model: Path | None, threads: int, say=print) -> dict:
    from andon.evaluation.metrics import roc_auc
    from andon.inspect import Inspector

    started = time.perf_counter()
    path = model_file(run_dir, model, say)
    inspector = Inspector.load(path, threads=threads)
    spec = inspector.card.preprocess
    h, w = spec.input_size
    if h != w:
        raise SystemExit(f"{path}: input {h}x{w}; bench.anomaly's mask loading handles square inputs only")
    test = test_images(run_dir)
    paths = [p for p, _ in test]
    types = np.array([t for _, t in test])
    bad = types != "ok"
    missing = [str(p) for p, t in test if t != "ok" and not (MASKS / t / (p.stem + ".png")).is_file()]
    # bench.anomaly.Images: the masks through the preprocessing resize (linear, > 127) and the valid region;
    # it also preprocesses a train set, which this needs none of: one image stands in
    loaded = Images(paths[:1], [(p, t) for p, t in test]).get(h, spec.resize)
    masks, valid = loaded["masks"], loaded["valid"]
    say(f"{len(test)} test images, masks at {h}x{w} ({time.perf_counter() - started:.0f} s)")
    t = time.perf_counter()
    outputs = infer(inspector, paths)
    infer_s = time.perf_counter() - t
    say(f"inference in {infer_s:.0f} s")
    results: dict[str, dict] = {}
    for key in MAPS:
        maps = outputs[key]
        if maps is None:
            say(f"{path.name} has no {key} output: skipped")
            continue
        per_type = {}
        for kind in ["all", *sorted(set(types[bad]))]:
            keep = np.ones(len(types), bool) if kind == "all" else (types == kind) | ~bad
            per_type[kind] = map_metrics(maps[keep], masks[keep], valid[keep], bad[keep])
        results[key] = {"map_hw": f"{maps.shape[1]}x{maps.shape[2]}", "per_type": per_type}
        say(f"{key}: {per_type['all']} ({time.perf_counter() - started:.0f} s)")
    image = {}
    for key in ("defect_score", "anomaly_score"):
        if outputs[key] is not None:
            image[key] = float(roc_auc(bad, outputs[key]))
    card = inspector.card
    return {
        "run": str(run_dir),
        "model": str(path),
        "model_version": card.version,
        "model_hash": inspector.model_hash,
        "input": f"{h}x{w} {spec.resize} {spec.color_mode}",
        "anomaly": None if card.anomaly is None else card.anomaly.model_dump(mode="json"),
        "machine": machine(),
        "threads": threads,
        "test_images": len(test),
        "test_defective": int(bad.sum()),
        "defective_without_mask_file": missing,
        "image_auroc": image,
        "fpr_limit": FPR_LIMIT,
        "tolerance_px": TOLERANCE,
        "maps": results,
        "inference_seconds": infer_s,
        "seconds": time.perf_counter() - started,
        "published": PUBLISHED,
    }


def pct(v: float) -> str:
    return "nan" if not np.isfinite(v) else f"{100 * v:.1f} %"


def render(result: dict, command: str) -> str:
    n_bad = result["test_defective"]
    lines = [
        f"Command: `{command}`  ",
        f"Model: `{result['model']}` ({result['input']}); machine: {result['machine']}. Test split: "
        f"{result['test_images']} images, {n_bad} defective. Image AUROC of P(defect) "
        f"{pct(result['image_auroc'].get('defect_score', float('nan')))}, of the anomaly score "
        f"{pct(result['image_auroc'].get('anomaly_score', float('nan')))}.",
        "",
        f"| map | resolution | defect type | images (defective + good) | mask regions | pixel AUROC "
        f"| AUPRO@{FPR_LIMIT:g} | pointing game | pointing, ties shared | pointing within {TOLERANCE:g} px "
        "| pointing by chance |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for key, entry in result["maps"].items():
        for kind, m in entry["per_type"].items():
            bold = "**" if kind == "all" else ""
            hits = round(m["pointing_game"] * m["pointing_images"]) if np.isfinite(m["pointing_game"]) else 0
            lines.append(
                f"| {MAPS[key]} | {entry['map_hw']} | {bold}{kind}{bold} "
                f"| {m['defective_images']} + {m['images'] - m['defective_images']} | {m['regions']} "
                f"| {bold}{pct(m['pixel_auroc'])}{bold} | {bold}{pct(m['aupro'])}{bold} "
                f"| {bold}{pct(m['pointing_game'])}{bold} ({hits}/{m['pointing_images']}) "
                f"| {pct(m['pointing_ties_shared'])} | {pct(m['pointing_within_tolerance'])} "
                f"| {pct(m['pointing_chance'])} |"
            )
    lines += ["", f"Published for comparison: {result['published']}."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.heatmaps", description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, required=True, help="run folder (splits.csv, best.pt)")
    parser.add_argument("--model", type=Path, help="the .onnx to measure (default: the run's, or export it)")
    parser.add_argument("--threads", type=int, default=min(2, len(os.sched_getaffinity(0))), help="onnxruntime")
    parser.add_argument("--json", type=Path, help="where the results go (default runs/heatmaps/<run>.json)")
    args = parser.parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    result = run(args.run, args.model, args.threads)
    out = args.json or REPO / "runs" / "heatmaps" / f"{args.run.name}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    command = f"python -m bench.heatmaps --run {args.run}" + (f" --model {args.model}" if args.model else "")
    print(render(result, command))
    print(f"\nJSON: {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
