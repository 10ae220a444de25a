"""Good-only anomaly score (andon.models.anomaly, PatchCore-style) on magnetic tile, grouped split.

    python -m bench.anomaly                          # the standard variant list, JSON + markdown table
    python -m bench.anomaly --variants base,size320  # some of them
    python -m bench.anomaly --list                   # the variants and what each changes

Protocol: ../shared/data/magnetic-tile (ok + 5 defect types), split exactly as bench.accuracy task mt2g
(assign_splits: val 0.15, test 0.15, seed 0, group_by near-duplicates). The bank is fitted on the ok images of
the train split only (about one in ten held out of the bank to set the scale; the k-center coreset runs on a
seeded random subset of at most MAX_PATCHES of their patches); figures are on the test split:
image AUROC (ok vs every defect), AUROC per defect type, pixel AUROC of the anomaly map (bilinearly resized to
the model input, against the mask put through the same resize; letterbox padding left out) and the pointing
game (share of defective test images whose map maximum lies on the defect mask). Every image goes through
andon's Preprocessor with the PreprocessSpec the product would use (grey, card mean = std = 0.5).

Cost: fit seconds on this machine (feature extraction of the train ok images + coreset + scale), and
onnxruntime CPU ms per frame of three exported graphs timed interleaved in one run: the classifier
(create_model(trunk, 2).eval(), same input), the classifier plus the anomaly head in one graph (what the
product would ship), and the ratio of the two. The data sets are research-only and never copied into the repo.
"""

from __future__ import annotations

import argparse
import copy
import io
import json
import os
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import cv2
import numpy as np

from bench.common import cpu_model

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
DATA = SHARED / "data" / "magnetic-tile"
MASKS = SHARED / "data" / "magnetic-tile-masks"
MV2_WEIGHTS = SHARED / "weights" / "mobilenet_v2-imagenet.pth"
CARD = (0.5, 0.5, 0.5)  # bench.accuracy's card normalisation (that of the shared mobilenet_v2 weights)
#: the coreset runs on at most this many train patches (a seeded random subset; 2 shared cores)
MAX_PATCHES = 100_000
PUBLISHED = (
    "PatchCore, MVTec AD (15 categories, good-only, own test split): image AUROC 99.1 % (Roth et al., CVPR 2022)"
)


@dataclass(frozen=True)
class Variant:
    name: str
    trunk: str = "mobilenet_v2"
    #: block indices into the trunk's features (mobilenet_v2: 6 = stride 8, 32 ch; 13 = stride 16, 96 ch;
    #: efficientnet_lite: 3 = stride 8, 40/48 ch; 5 = stride 16, 112/120 ch)
    layers: tuple[int, ...] = (6, 13)
    size: int = 224
    resize: str = "stretch"
    dim: int | None = 64
    bank: int = 1000
    blur: float = 0.0
    #: image score: "max" (the product's: the map's maximum) or "ratio" (maximum over the image's own median
    #: patch distance: a new tile that is far from the bank everywhere scores low)
    score: str = "max"
    note: str = ""


BASE = Variant("base")
VARIANTS = {
    v.name: v
    for v in (
        BASE,
        replace(BASE, name="s16", layers=(13,), note="stride-16 block only"),
        replace(BASE, name="s8", layers=(6,), note="stride-8 block only"),
        replace(BASE, name="last", layers=(18,), dim=None, note="last 1280-ch features (the plain patch-kNN)"),
        replace(BASE, name="blur1", blur=1.0, note="Gaussian blur sigma 1 cell before the max"),
        replace(BASE, name="blur2", blur=2.0, note="blur sigma 2 cells"),
        replace(BASE, name="d32", dim=32),
        replace(BASE, name="d128", dim=None, note="no projection (128 ch)"),
        replace(BASE, name="bank250", bank=250),
        replace(BASE, name="bank4000", bank=4000),
        replace(BASE, name="bank10000", bank=10000),
        replace(BASE, name="ratio", score="ratio", note="image score: max / the image's median patch distance"),
        replace(BASE, name="letterbox", resize="letterbox"),
        replace(BASE, name="size320", size=320),
        replace(BASE, name="size320lb", size=320, resize="letterbox"),
        replace(BASE, name="size448", size=448, note="56x56 map: thin cracks span more cells"),
        replace(BASE, name="size448ratio", size=448, score="ratio", note="448 px, max / median score"),
        replace(BASE, name="lite0", trunk="efficientnet_lite0", layers=(3, 5)),
        replace(BASE, name="lite1", trunk="efficientnet_lite1", layers=(3, 5), size=240),
        replace(BASE, name="lite2", trunk="efficientnet_lite2", layers=(3, 5), size=260),
    )
}


@dataclass
class Result:
    variant: str
    trunk: str
    layers: str
    size: int
    resize: str
    dim: int
    bank: int
    blur: float
    score: str
    map_hw: str
    n_train_ok: int
    n_test_ok: int
    n_test_defect: int
    image_auroc: float
    per_type_auroc: dict[str, float]
    pixel_auroc: float
    pointing_game: float
    good_score_median: float
    extract_seconds: float
    coreset_seconds: float
    knn_mmacs: float
    classifier_ms: float = float("nan")
    combined_ms: float = float("nan")
    cost_ratio: float = float("nan")
    #: image AUROC on the validation split (ok vs defective, the same bank and score rule)
    val_image_auroc: float = float("nan")
    note: str = ""


def machine() -> str:
    return f"{cpu_model()}, {len(os.sched_getaffinity(0))} cores, no GPU"


def grouped_split(cache: Path | None = None, seed: int = 0) -> list[tuple[Path, str, str]]:
    """(path, label, split) of magnetic-tile with bench.accuracy mt2g's split (near-duplicate groups, 0.15 /
    0.15, seed 0; another ``seed`` draws other groups into val and test). Grouping reads every image (minutes
    on 2 cores), so the assignment (file names only) is cached in ``cache``, keyed by the folder's file names
    and sizes (and the seed)."""
    import hashlib

    from andon.datasets import assign_splits, load_dataset

    files = sorted(p for p in DATA.rglob("*") if p.is_file() and p.suffix.lower() in (".jpg", ".png"))
    listing = "".join(f"{p.relative_to(DATA)}:{p.stat().st_size};" for p in files) + f"seed={seed}" * (seed != 0)
    key = hashlib.sha256(listing.encode()).hexdigest()
    if cache is not None and cache.is_file():
        stored = json.loads(cache.read_text())
        if stored.get("key") == key:
            return [(DATA / rel, label, split) for rel, label, split in stored["samples"]]
    ds = assign_splits(load_dataset(DATA), val=0.15, test=0.15, seed=seed, group_by="near-duplicates")
    samples = [(s.path, s.label, s.split) for s in ds.samples]
    if cache is not None:
        cache.parent.mkdir(parents=True, exist_ok=True)
        cache.write_text(
            json.dumps(
                {"key": key, "samples": [(str(Path(p).relative_to(DATA)), label, split) for p, label, split in samples]}
            )
        )
    return samples


class Images:
    """Preprocessed images (uint8 at the input size) and masks, per (size, resize), loaded once."""

    def __init__(
        self, train_ok: list[Path], test: list[tuple[Path, str]], val: list[tuple[Path, str]] | None = None
    ) -> None:
        self.train_ok, self.test, self.val = train_ok, test, val or []
        self._cache: dict[tuple[int, str], dict[str, object]] = {}

    def get(self, size: int, resize: str) -> dict[str, object]:
        if (size, resize) not in self._cache:
            self._cache.clear()  # one geometry at a time keeps memory flat
            self._cache[(size, resize)] = self._load(size, resize)
        return self._cache[(size, resize)]

    def _load(self, size: int, resize: str) -> dict[str, object]:
        from andon.inspect.card import PreprocessSpec
        from andon.inspect.preprocess import Preprocessor

        spec = PreprocessSpec(input_size=(size, size), color_mode="gray", resize=resize, mean=CARD, std=CARD)
        pre = Preprocessor(spec)
        mask_pre = Preprocessor(spec.model_copy(update={"interpolation": "linear"}))
        train = np.stack([pre.to_tensor(pre.load(p.read_bytes())) for p in self.train_ok])
        test = np.stack([pre.to_tensor(pre.load(p.read_bytes())) for p, _ in self.test])
        val = np.stack([pre.to_tensor(pre.load(p.read_bytes())) for p, _ in self.val]) if self.val else None
        masks, valid = [], []
        for path, _ in self.test:
            image = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
            mask_file = MASKS / path.parent.name / (path.stem + ".png")
            mask = cv2.imread(str(mask_file), cv2.IMREAD_GRAYSCALE) if mask_file.is_file() else None
            if mask is None or mask.shape != image.shape:
                mask = np.zeros_like(image)
            masks.append(mask_pre.resize(mask)[..., 0] > 127)
            valid.append(mask_pre.resize(np.full_like(image, 255))[..., 0] > 127)
        masks, valid = np.stack(masks), np.stack(valid)
        return {"spec": spec, "train": train, "test": test, "val": val, "masks": masks, "valid": valid}


def trunk_for(name: str):
    from andon.models import create_model

    weights = MV2_WEIGHTS if name == "mobilenet_v2" else "imagenet"
    return create_model(name, 2, weights=weights).eval()


def extractor_for(v: Variant, classifier, dim: int | None):
    from andon.models.anomaly import PatchFeatures

    info = classifier.weights_info
    return PatchFeatures(
        classifier.backbone,
        v.layers,
        card_mean=CARD,
        card_std=CARD,
        trunk_mean=info.mean,
        trunk_std=info.std,
        dim=dim,
        seed=0,
    ).eval()


def features_of(extractor, images: np.ndarray, batch: int = 16):
    import torch

    with torch.no_grad():
        return torch.cat([extractor(torch.from_numpy(images[i : i + batch])) for i in range(0, len(images), batch)])


def project(features, extractor):
    import torch

    return torch.einsum("dc,nchw->ndhw", extractor.projection, features)


def evaluate(
    v: Variant,
    images: dict[str, object],
    full_train,
    full_test,
    extract_seconds: float,
    classifier,
    test_labels: list[str],
    full_val=None,
    val_labels: list[str] | None = None,
) -> tuple[Result, object]:
    import torch

    from andon.evaluation.metrics import roc_auc
    from andon.models.anomaly import build_patchcore

    extractor = extractor_for(v, classifier, v.dim)
    train, test = project(full_train, extractor), project(full_test, extractor)
    order = torch.randperm(len(train), generator=torch.Generator().manual_seed(0))
    n_ref = max(1, len(train) // 10)
    bank_part, references = train[order[n_ref:]], train[order[:n_ref]]
    patches = bank_part.permute(0, 2, 3, 1).reshape(-1, train.shape[1])
    if len(patches) > MAX_PATCHES:  # a seeded random subset first: the coreset's time is linear in it
        keep = torch.randperm(len(patches), generator=torch.Generator().manual_seed(1))[:MAX_PATCHES]
        patches = patches[keep]
    patches = patches.contiguous()
    started = time.perf_counter()
    model = build_patchcore(extractor, patches, list(references.split(32)), bank_size=v.bank, seed=0, blur_sigma=v.blur)
    coreset_seconds = time.perf_counter() - started
    maps, scores = image_scores(model, test, v.score)
    val_auroc = float("nan")
    if full_val is not None and val_labels:
        val_auroc = roc_auc(np.array(val_labels) != "ok", image_scores(model, project(full_val, extractor), v.score)[1])
    labels = np.array(test_labels)
    bad = labels != "ok"
    per_type = {
        t: roc_auc(labels[(labels == t) | ~bad] != "ok", scores[(labels == t) | ~bad]) for t in sorted(set(labels[bad]))
    }
    pixel_auroc, pointing = pixel_metrics(maps, images, bad)
    h, w = maps.shape[1:]
    result = Result(
        variant=v.name,
        trunk=v.trunk,
        layers="+".join(map(str, v.layers)),
        size=v.size,
        resize=v.resize,
        dim=extractor.dim,
        bank=int(model.bank.shape[0]),
        blur=v.blur,
        score=v.score,
        map_hw=f"{h}x{w}",
        n_train_ok=len(train),
        n_test_ok=int((~bad).sum()),
        n_test_defect=int(bad.sum()),
        image_auroc=roc_auc(bad, scores),
        val_image_auroc=val_auroc,
        per_type_auroc=per_type,
        pixel_auroc=pixel_auroc,
        pointing_game=pointing,
        good_score_median=float(np.median(scores[~bad])),
        extract_seconds=extract_seconds,
        coreset_seconds=coreset_seconds,
        knn_mmacs=h * w * extractor.dim * int(model.bank.shape[0]) / 1e6,
        note=v.note,
    )
    return result, model


def image_scores(model, features, score: str):
    """(anomaly maps ``[N, h, w]`` in [0, 1), image scores) of projected features, by the variant's score rule."""
    import torch

    with torch.no_grad():
        raw = torch.cat([model.distance_map(f) for f in features.split(32)])
        maps = raw / (raw + model.scale)
        if score == "ratio":
            return maps, (raw.flatten(1).amax(1) / raw.flatten(1).median(1).values.clamp(min=1e-12)).numpy()
        return maps, maps.flatten(1).amax(1).numpy()


def pixel_metrics(maps, images: dict[str, object], bad: np.ndarray) -> tuple[float, float]:
    """Pixel AUROC over every test image (inside the valid region), and the pointing game over defects."""
    import torch.nn.functional as F

    from andon.evaluation.metrics import roc_auc

    masks, valid = images["masks"], images["valid"]
    size = masks.shape[1:]
    up = F.interpolate(maps[:, None], size=size, mode="bilinear", align_corners=False)[:, 0].numpy()
    step = 2  # every second pixel each way: the same AUROC to ~1e-3, a quarter of the sort
    sub = (slice(None), slice(None, None, step), slice(None, None, step))
    keep = valid[sub]
    pixel_auroc = roc_auc(masks[sub][keep], up[sub][keep])
    hits, counted = 0, 0
    for i in np.nonzero(bad)[0]:
        if not masks[i].any():
            continue
        counted += 1
        at = np.unravel_index(np.argmax(np.where(valid[i], up[i], -np.inf)), up[i].shape)
        hits += bool(masks[i][at])
    return pixel_auroc, hits / counted if counted else float("nan")


def onnx_bytes(module, example) -> bytes:
    import torch

    buffer = io.BytesIO()
    torch.onnx.export(
        module,
        (example,),
        buffer,
        dynamo=False,
        opset_version=17,
        input_names=["image"],
        dynamic_axes={"image": {0: "batch"}},
    )
    return buffer.getvalue()


def cost(classifier, model, size: int, rounds: int = 30) -> tuple[float, float]:
    """onnxruntime CPU ms per frame: classifier alone, classifier + anomaly head (one graph); interleaved."""
    import onnxruntime as ort
    import torch
    from torch import nn

    class Both(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.classifier = copy.deepcopy(classifier)
            self.anomaly = model

        def forward(self, x):
            score, anomaly_map = self.anomaly(x)
            return self.classifier(x), score, anomaly_map

    example = torch.zeros(1, 3, size, size)
    options = ort.SessionOptions()
    options.intra_op_num_threads = 2
    sessions = [
        ort.InferenceSession(onnx_bytes(m, example), options, providers=["CPUExecutionProvider"])
        for m in (classifier, Both().eval())
    ]
    x = np.random.default_rng(0).normal(size=(1, 3, size, size)).astype(np.float32)
    times: list[list[float]] = [[], []]
    for r in range(rounds + 3):
        for k, session in enumerate(sessions):
            t = time.perf_counter()
            session.run(None, {"image": x})
            if r >= 3:
                times[k].append((time.perf_counter() - t) * 1000)
    return float(np.median(times[0])), float(np.median(times[1]))


def run(variants: list[Variant], *, with_cost: bool, split_seed: int = 0, say=print) -> list[Result]:
    started = time.perf_counter()
    cache = (
        REPO / "runs" / ("bench-anomaly-split.json" if split_seed == 0 else f"bench-anomaly-split-{split_seed}.json")
    )
    samples = grouped_split(cache, split_seed)
    say(f"grouped split in {time.perf_counter() - started:.0f} s")
    train_ok = [Path(p) for p, label, split in samples if split == "train" and label == "ok"]
    test = [(Path(p), label) for p, label, split in samples if split == "test"]
    val = [(Path(p), label) for p, label, split in samples if split == "val"]
    images = Images(train_ok, test, val)
    results: list[Result] = []
    # group variants sharing a geometry and a trunk's feature layers: extract once, vary D / bank / blur
    keyed: dict[tuple, list[Variant]] = {}
    for v in variants:
        keyed.setdefault((v.size, v.resize, v.trunk, v.layers), []).append(v)
    for (size, resize, trunk, layers), group in sorted(keyed.items(), key=lambda kv: (kv[0][0], kv[0][1])):
        data = images.get(size, resize)
        say(f"images at {size} {resize} ({time.perf_counter() - started:.0f} s)")
        classifier = trunk_for(trunk)
        full = extractor_for(group[0], classifier, None)
        t = time.perf_counter()
        full_train = features_of(full, data["train"])
        extract_seconds = time.perf_counter() - t
        full_test = features_of(full, data["test"])
        full_val = features_of(full, data["val"]) if data["val"] is not None else None
        say(
            f"{trunk} {layers} {size} {resize}: features in {extract_seconds:.0f} s "
            f"({time.perf_counter() - started:.0f} s)"
        )
        for v in group:
            result, model = evaluate(
                v,
                data,
                full_train,
                full_test,
                extract_seconds,
                classifier,
                [label for _, label in test],
                full_val,
                [label for _, label in val],
            )
            if with_cost:
                result.classifier_ms, result.combined_ms = cost(classifier, model, size)
                result.cost_ratio = result.combined_ms / result.classifier_ms
            say(
                f"{v.name}: image AUROC {100 * result.image_auroc:.2f} % (val {100 * result.val_image_auroc:.2f} %), "
                f"pixel {100 * result.pixel_auroc:.2f} %, "
                f"cost x{result.cost_ratio:.2f} ({time.perf_counter() - started:.0f} s)"
            )
            results.append(result)
    order = {v.name: i for i, v in enumerate(variants)}
    return sorted(results, key=lambda r: order[r.variant])


def render(results: list[Result], command: str) -> str:
    types = sorted({t for r in results for t in r.per_type_auroc})
    r0 = results[0]
    lines = [
        f"Command: `{command}`  ",
        f"Machine: {machine()}. Test split: {r0.n_test_ok} ok, {r0.n_test_defect} defective; bank fitted on "
        f"{r0.n_train_ok} train ok images (one in ten of them held out for the scale).",
        "",
        "| variant | trunk | layers | input | D | bank | blur | score | map | image AUROC | val image AUROC | "
        + " | ".join(types)
        + " | pixel AUROC | pointing game | good median score | extract s | coreset s "
        "| kNN MMAC | classifier ms | + anomaly ms | ratio | note |",
        "|" + "---|" * (21 + len(types)),
    ]
    for r in results:
        per = " | ".join(f"{100 * r.per_type_auroc.get(t, float('nan')):.1f}" for t in types)
        lines.append(
            f"| {r.variant} | {r.trunk} | {r.layers} | {r.size} {r.resize} | {r.dim} | {r.bank} | {r.blur:g} "
            f"| {r.score} | {r.map_hw} | **{100 * r.image_auroc:.2f} %** | {100 * r.val_image_auroc:.2f} % "
            f"| {per} | {100 * r.pixel_auroc:.2f} % "
            f"| {100 * r.pointing_game:.1f} % | {r.good_score_median:.3f} | {r.extract_seconds:.0f} "
            f"| {r.coreset_seconds:.1f} | {r.knn_mmacs:.0f} | {r.classifier_ms:.1f} | {r.combined_ms:.1f} "
            f"| {r.cost_ratio:.2f} | {r.note} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.anomaly", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--variants", default=",".join(VARIANTS), help="comma-separated variant names (see --list); default: all"
    )
    parser.add_argument("--list", action="store_true", help="print the variants and exit")
    parser.add_argument("--no-cost", action="store_true", help="skip the ONNX export and onnxruntime timing")
    parser.add_argument(
        "--split-seed", type=int, default=0, help="seed of the grouped split (0: bench.accuracy mt2g's split)"
    )
    parser.add_argument("--threads", type=int, default=2, help="torch threads for extraction and the coreset")
    parser.add_argument("--json", type=Path, default=REPO / "runs" / "bench-anomaly.json", help="where the results go")
    args = parser.parse_args(argv)
    if args.list:
        for v in VARIANTS.values():
            print(
                f"{v.name}: {v.trunk} layers {v.layers} {v.size} {v.resize} D {v.dim} bank {v.bank} "
                f"blur {v.blur:g} score {v.score} {v.note}"
            )
        return 0
    unknown = [n for n in args.variants.split(",") if n not in VARIANTS]
    if unknown:
        parser.error(f"unknown variants {', '.join(unknown)}; known: {', '.join(VARIANTS)}")
    import torch

    torch.set_num_threads(args.threads)
    results = run(
        [VARIANTS[n] for n in args.variants.split(",")], with_cost=not args.no_cost, split_seed=args.split_seed
    )
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(
        json.dumps({"machine": machine(), "published": PUBLISHED, "results": [asdict(r) for r in results]}, indent=2)
    )
    command = "python -m bench.anomaly" + (
        f" --variants {args.variants}" if argv or args.variants != ",".join(VARIANTS) else ""
    )
    if args.split_seed:
        command += f" --split-seed {args.split_seed}"
    print(render(results, command))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
