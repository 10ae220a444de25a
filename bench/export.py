"""Export on real data: time, torch/onnxruntime parity, and fp32 against int8 (accuracy, size, speed).

    python -m bench.export [--data ../shared/data/neu-cls] [--backbone mobilenet_v2]
                           [--weights ../shared/weights/mobilenet_v2-imagenet.pth] [--per-class 60]
                           [--size 224] [--out bench-export.json]

1. Data: ``--per-class`` images of every class of a class-folder data set (default NEU steel, 6 defect
   types), two thirds train and one third val, picked in file-name order.
2. Model: ``--backbone`` with ``--weights`` (default the shared ImageNet MobileNetV2, normalised as its
   weights require), trunk frozen, head fitted on the pooled features of the train images (a linear
   probe: a real, accurate model in seconds, with the same graph and cost as a fine-tuned one).
3. A run folder as training writes it (best.pt, splits.csv), then ``export_run`` twice: fp32, and int8
   with the accuracy gate off (``--max-accuracy-drop 100``) so that the drop is measured, not refused.
4. Reported: export wall time per stage, the parity figures, and the int8 report: accuracy on val, share
   of equal predictions, size ratio and speed ratio (both sessions timed on the same batch of 8, median of
   10 calls, one onnxruntime thread per physical core) on this machine.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np

SHARED = Path(__file__).resolve().parents[1].parent / "shared"


def _samples(data: Path, per_class: int):
    from andon.datasets import load_folder

    dataset = load_folder(data)
    chosen = []
    for name in dataset.classes:
        samples = sorted((s for s in dataset.samples if s.label == name), key=lambda s: s.path.name)[:per_class]
        n_train = (2 * len(samples)) // 3
        chosen += [(s, "train" if i < n_train else "val") for i, s in enumerate(samples)]
    return dataset.classes, chosen


def _probe(model, x, y, num_classes: int) -> None:
    """Fit the head on frozen pooled features (L-BFGS, light L2)."""
    import torch

    model.eval()
    with torch.no_grad():
        feats = torch.cat([model.features(x[i : i + 32]).mean(dim=(2, 3)) for i in range(0, len(x), 32)])
    head = torch.nn.Linear(feats.shape[1], num_classes)
    opt = torch.optim.LBFGS(head.parameters(), max_iter=200)

    def closure():
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(head(feats), y) + 1e-4 * head.weight.square().sum()
        loss.backward()
        return loss

    opt.step(closure)
    model.head.load_state_dict(head.state_dict())


def make_run(run: Path, data: Path, backbone: str, weights: str, per_class: int, size: int) -> dict:
    import torch

    from andon.datasets import Dataset, Sample, write_manifest
    from andon.inspect.card import ModelCard, PreprocessSpec, default_defect_classes
    from andon.inspect.preprocess import Preprocessor
    from andon.models import Checkpoint, create_model, save_checkpoint

    classes, chosen = _samples(data, per_class)
    model = create_model(backbone, len(classes), weights=weights)
    info = model.weights_info
    spec = PreprocessSpec(input_size=(size, size), resize="stretch", mean=info.mean, std=info.std)
    pre = Preprocessor(spec)
    train = [s for s, split in chosen if split == "train"]
    t0 = time.perf_counter()
    x = torch.from_numpy(np.stack([pre(s.path.read_bytes()) for s in train]))
    y = torch.tensor([classes.index(s.label) for s in train])
    _probe(model, x, y, len(classes))
    fit_s = time.perf_counter() - t0
    card = ModelCard(
        name=f"bench-{data.name}",
        classes=classes,
        defect_classes=default_defect_classes(classes),
        preprocess=spec,
        backbone=backbone,
        weights=info.source,
    )
    save_checkpoint(run / "best.pt", Checkpoint(backbone, len(classes), model.state_dict(), card))
    write_manifest(
        Dataset(samples=tuple(Sample(s.path, s.label, split) for s, split in chosen), root=data), run / "splits.csv"
    )
    return {"classes": classes, "train": len(train), "val": len(chosen) - len(train), "probe_fit_s": fit_s}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=SHARED / "data" / "neu-cls")
    parser.add_argument("--backbone", default="mobilenet_v2")
    parser.add_argument("--weights", default=str(SHARED / "weights" / "mobilenet_v2-imagenet.pth"))
    parser.add_argument("--per-class", type=int, default=60)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)

    from andon.models.export import export_run
    from andon.models.quantize import Int8Report

    with tempfile.TemporaryDirectory(prefix="andon-bench-export-") as tmp:
        run = Path(tmp) / "run"
        run.mkdir()
        setup = make_run(run, args.data, args.backbone, args.weights, args.per_class, args.size)
        fp32 = export_run(run, Path(tmp) / "fp32.onnx", verify_images=64)
        int8 = export_run(run, Path(tmp) / "int8.onnx", int8=True, max_accuracy_drop=100.0, verify_images=8)
    q: Int8Report = int8.int8  # type: ignore[assignment]
    result = {
        "data": str(args.data),
        "backbone": args.backbone,
        "input": args.size,
        **setup,
        "fp32": {
            "export_s": round(fp32.seconds, 2),
            "stages_s": {k: round(v, 2) for k, v in fp32.stages.items()},
            "size_mb": round(fp32.size_bytes / 1e6, 2),
            "parity_probs": fp32.parity.probs_max_abs,
            "parity_heatmap": fp32.parity.heatmap_max_abs,
            "parity_images": fp32.parity.n_images,
        },
        "int8": {
            "export_s": round(int8.seconds, 2),
            "stages_s": {k: round(v, 2) for k, v in int8.stages.items()},
            "size_mb": round(q.int8_bytes / 1e6, 2),
            "size_ratio": round(q.size_ratio, 3),
            "fp32_accuracy": q.fp32_accuracy,
            "int8_accuracy": q.int8_accuracy,
            "accuracy_drop_pp": round(q.accuracy_drop_pp, 2),
            "agreement": q.agreement,
            "decision_agreement": q.decision_agreement,
            "max_prob_diff": round(q.max_prob_diff, 4),
            "fp32_ms_per_image": round(q.fp32_ms_per_image, 2),
            "int8_ms_per_image": round(q.int8_ms_per_image, 2),
            "speedup": round(q.speedup, 2),
            "eval_images": q.n_eval,
            "calibration_images": q.calibration_images,
        },
    }
    print(json.dumps(result, indent=2))
    if args.out:
        args.out.write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
