"""Export a trained classifier to one self-describing ONNX file, and prove the file computes what torch does.

``export_model(model, card, out, verify_inputs)`` is the core; ``export_run(run_dir, out)`` feeds it from a
training run folder (``best.pt`` + ``splits.csv``: parity on the ``val`` split, falling back to ``train``)
and adds optional int8 quantization (``andon.models.quantize``): calibrated on ``train`` images, judged on
``val`` (else ``test``, else ``train``), and refused when accuracy drops more than ``max_accuracy_drop``
percentage points.

Stages: build the inspection graph (``andon.models.graph``: ``image`` -> ``probs``, ``heatmap``), trace it to
ONNX with a dynamic batch dimension, fold constants (onnxscript optimizer), embed the model card (with the
content hash), then verify before anything is written:

1. the bytes load in ``andon.inspect.Inspector`` exactly as the service will load them (card, hash,
   signature, warm-up);
2. onnxruntime and torch agree on the verification images: probabilities to ``PROBS_TOLERANCE`` (1e-4)
   max abs difference, heatmaps to ``HEATMAP_TOLERANCE``; batches of several images and a single image
   are both run, so a graph that baked in the tracing batch size fails here.

Only then is the file written, atomically (temp file in the same folder, fsync, rename): a failed export
leaves nothing behind.

Exporter: the TorchScript-based ``torch.onnx.export(dynamo=False)`` by default. It writes a native opset-17
graph (the widest runtime support) in about a second, on every torch version andon supports. The
torch.export-based exporter (``exporter="dynamo"``) is also supported and tested; it writes opset 18 or
newer (onnxscript cannot convert down to 17) and takes several seconds longer per model.
"""

from __future__ import annotations

import datetime as _dt
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import onnx
import torch

from andon import __version__, fileio
from andon.errors import AndonError, ConfigError, ExportError
from andon.inspect.card import ModelCard
from andon.inspect.onnxfile import embed_card
from andon.inspect.outputs import exported_names, output_spec
from andon.models.classifier import Classifier
from andon.models.graph import InspectionGraph
from andon.models.quantize import Int8Report

#: torch vs onnxruntime, per output (``OutputSpec.tolerance``): 1e-4 for probabilities and the anomaly score;
#: maps are for display as 8-bit colour, one level (1/255). Per-location logits are not averaged like the pooled
#: ones, so their float error is larger (up to ~5e-4 seen on a resnet50)
PROBS_TOLERANCE = output_spec("probabilities").tolerance
HEATMAP_TOLERANCE = output_spec("heatmap").tolerance
INPUT_NAME = "image"
PROBS_NAME = output_spec("probabilities").graph_name
Exporter = Literal["torchscript", "dynamo"]
Progress = Callable[[str], None]


@dataclass(frozen=True)
class Parity:
    """Largest torch-vs-onnxruntime differences over the verification images, per output key."""

    max_abs: dict[str, float]
    n_images: int
    batch_sizes: tuple[int, ...]

    @property
    def probs_max_abs(self) -> float:
        return self.max_abs["probabilities"]

    @property
    def heatmap_max_abs(self) -> float:
        return self.max_abs.get("heatmap", 0.0)

    def describe(self) -> str:
        """``probabilities 2.1e-07, heatmap 3.0e-06, ...``"""
        return ", ".join(f"{key} {value:.2e}" for key, value in self.max_abs.items())


@dataclass
class ExportReport:
    path: Path
    card: ModelCard
    opset: int
    exporter: str
    size_bytes: int
    seconds: float
    parity: Parity
    heatmap_size: tuple[int, int]
    #: fp32 against int8, for int8 exports
    int8: Int8Report | None = None
    stages: dict[str, float] = field(default_factory=dict)


def export_model(
    model: Classifier | None,
    card: ModelCard,
    out_path: str | Path,
    verify_inputs: np.ndarray,
    *,
    anomaly: torch.nn.Module | None = None,
    opset: int = 17,
    exporter: Exporter = "torchscript",
    progress: Progress | None = None,
) -> ExportReport:
    """Export ``model`` (and/or the ``anomaly`` detector) with ``card`` to ``out_path`` (fp32), verified on
    ``verify_inputs`` (N x 3 x H x W)."""
    t0 = time.perf_counter()
    out_path = _check_out_path(out_path)
    built = build(model, card, verify_inputs, anomaly=anomaly, opset=opset, exporter=exporter, progress=progress)
    _say(progress, f"writing {out_path}")
    write_atomic(out_path, built.data)
    return ExportReport(
        path=out_path,
        card=built.card,
        opset=built.opset,
        exporter=exporter,
        size_bytes=len(built.data),
        seconds=time.perf_counter() - t0,
        parity=built.parity,
        heatmap_size=built.heatmap_size,
        stages=built.stages,
    )


@dataclass
class Built:
    """A verified fp32 export in memory: the graph without card, and the file bytes with it."""

    graph: onnx.ModelProto
    data: bytes
    card: ModelCard
    opset: int
    parity: Parity
    heatmap_size: tuple[int, int]
    stages: dict[str, float]


def build(
    model: Classifier | None,
    card: ModelCard,
    verify_inputs: np.ndarray,
    *,
    anomaly: torch.nn.Module | None = None,
    opset: int = 17,
    exporter: Exporter = "torchscript",
    progress: Progress | None = None,
) -> Built:
    """Trace, optimise, card and verify; nothing is written."""
    stages: dict[str, float] = {}
    verify_inputs = _check_inputs(model, card, verify_inputs, anomaly)
    model = None if model is None else model.eval()
    graph_module = InspectionGraph(model, card.defect_indices, None if anomaly is None else anomaly.eval()).eval()
    t = time.perf_counter()
    what = " + ".join(([model.model_name] if model is not None else []) + (["anomaly detector"] if anomaly else []))
    _say(progress, f"tracing {what} to ONNX ({exporter}, opset {opset})")
    graph = to_onnx(graph_module, card.preprocess.input_size, opset=opset, exporter=exporter)
    stages["trace"] = time.perf_counter() - t
    card = export_card(card, model, graph_module.output_keys)
    data, card = with_card(graph, card)
    t = time.perf_counter()
    _say(progress, f"verifying parity with torch on {len(verify_inputs)} images")
    parity, heat_hw = verify(graph_module, data, verify_inputs)
    stages["verify"] = time.perf_counter() - t
    return Built(
        graph=graph,
        data=data,
        card=card,
        opset=graph.opset_import[0].version,
        parity=parity,
        heatmap_size=heat_hw,
        stages=stages,
    )


def export_card(
    card: ModelCard,
    model: Classifier | None,
    output_keys: tuple[str, ...] = ("probabilities", "heatmap"),
    *,
    quantization: str = "fp32",
) -> ModelCard:
    """The card as exported: the graph's names, the backbone, this andon version and the export time."""
    return card.replace(
        backbone=card.backbone if model is None else model.model_name,
        input_name=INPUT_NAME,
        output_names=exported_names(output_keys),
        quantization=quantization,
        andon_version=__version__,
        created=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        content_hash="",
    )


def with_card(graph: onnx.ModelProto, card: ModelCard) -> tuple[bytes, ModelCard]:
    """File bytes: ``graph`` plus ``card`` (its content_hash set); ``graph`` itself is left unchanged."""
    model = onnx.ModelProto()
    model.CopyFrom(graph)
    written = embed_card(model, card)
    return model.SerializeToString(), written


def to_onnx(
    graph_module: InspectionGraph, input_hw: tuple[int, int], *, opset: int = 17, exporter: Exporter = "torchscript"
) -> onnx.ModelProto:
    """Trace ``graph_module`` to a self-contained ONNX graph with a dynamic batch dimension."""
    example = torch.zeros(2, 3, *input_hw)  # batch 2: a traced batch of 1 can get specialised away
    names = list(exported_names(graph_module.output_keys).values())
    with torch.no_grad():
        shapes = {name: tuple(t.shape[1:]) for name, t in zip(names, graph_module(example))}
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer and deprecation chatter; the result is verified instead
        if exporter == "torchscript":
            if opset < 17:
                raise ConfigError(f"opset {opset} is too old; andon exports opset 17 or newer")
            import io

            buffer = io.BytesIO()
            torch.onnx.export(
                graph_module,
                (example,),
                buffer,
                dynamo=False,
                opset_version=opset,
                input_names=[INPUT_NAME],
                output_names=names,
                dynamic_axes={n: {0: "batch"} for n in (INPUT_NAME, *names)},
                do_constant_folding=True,
            )
            model = onnx.load_model_from_string(buffer.getvalue())
        elif exporter == "dynamo":
            if opset < 18:
                raise ConfigError(
                    f"the dynamo exporter writes opset 18 or newer, not {opset}; "
                    "use exporter 'torchscript' for opset 17"
                )
            batch = torch.export.Dim("batch", min=1, max=4096)
            program = torch.onnx.export(
                graph_module,
                (example,),
                dynamo=True,
                opset_version=opset,
                input_names=[INPUT_NAME],
                output_names=names,
                dynamic_shapes={"image": {0: batch}},
                external_data=False,
                verbose=False,
            )
            model = program.model_proto
        else:
            raise ConfigError(f"exporter {exporter!r} is not one of 'torchscript', 'dynamo'")
    return _finish(model, shapes)


def _finish(model: onnx.ModelProto, shapes: dict[str, tuple[int, ...]]) -> onnx.ModelProto:
    """Fold constants and drop identities, name the producer, declare every output's shape ([batch, ...], the
    rest as traced: the exporters' own inference can leave names such as 'Divanomaly_map_dim_2' there), and
    check the result."""
    import onnxscript

    model = onnxscript.optimizer.optimize(model)
    for output in model.graph.output:
        if output.name in shapes:
            dims = output.type.tensor_type.shape.dim
            del dims[:]
            dims.add().dim_param = "batch"
            for size in shapes[output.name]:
                dims.add().dim_value = int(size)
    model.producer_name, model.producer_version = "andon", __version__
    outputs = ", ".join(o.name for o in model.graph.output)
    model.doc_string = f"andon inspection model: image -> {outputs}; the model card is in metadata 'andon.card'"
    for tensor in model.graph.initializer:
        if tensor.data_location == onnx.TensorProto.EXTERNAL:
            raise ExportError(
                f"the exporter stored tensor {tensor.name} outside the graph; the file must be self-contained"
            )
    batch = model.graph.input[0].type.tensor_type.shape.dim[0]
    if not batch.dim_param:
        raise ExportError("the exported graph has a fixed batch size; it must be dynamic")
    try:
        onnx.checker.check_model(model, full_check=True)
    except onnx.checker.ValidationError as exc:
        raise ExportError(f"the exported graph is not valid ONNX: {str(exc).splitlines()[0]}") from None
    return model


def verify(
    graph_module: InspectionGraph, data: bytes, inputs: np.ndarray, *, batch: int = 16
) -> tuple[Parity, tuple[int, int]]:
    """Load ``data`` as the service will, and compare every output with torch's; ``ExportError`` if one differs
    by more than its tolerance (``OutputSpec.tolerance``). Returns the parity and the map size (h, w)."""
    from andon.inspect.session import create_session

    _check_loads(data, "the exported model")
    session = create_session(data)
    keys = graph_module.output_keys
    names = list(exported_names(keys).values())
    diffs = dict.fromkeys(keys, 0.0)
    sizes = [1] + [min(batch, len(inputs) - i) for i in range(0, len(inputs), batch)]
    starts = [0] + list(range(0, len(inputs), batch))
    map_hw = (0, 0)
    for start, size in zip(starts, sizes):
        x = np.ascontiguousarray(inputs[start : start + size])
        with torch.no_grad():
            expected = [t.double().numpy() for t in graph_module(torch.from_numpy(x))]
        got = session.run(names, {INPUT_NAME: x})
        for key, o, t in zip(keys, got, expected):
            if o.shape != t.shape:
                raise ExportError(
                    f"onnxruntime gave shape {o.shape} for output {key} on a batch of {size}; torch gave {t.shape}"
                )
            diffs[key] = max(diffs[key], float(np.abs(o.astype(np.float64) - t).max()) if o.size else 0.0)
            if key == "heatmap" or (output_spec(key).is_map and "heatmap" not in keys):
                map_hw = (int(o.shape[1]), int(o.shape[2]))
    parity = Parity(diffs, len(inputs), tuple(sorted(set(sizes))))
    failed = {k: v for k, v in diffs.items() if v > output_spec(k).tolerance}
    if failed:
        detail = ", ".join(
            f"{k} by up to {v:.3g} (tolerance {output_spec(k).tolerance:.2g})" for k, v in failed.items()
        )
        raise ExportError(
            f"parity check failed: onnxruntime and torch differ in {detail} on {len(inputs)} images; "
            "the file was not written"
        )
    return parity, map_hw


def write_atomic(path: Path, data: bytes) -> None:
    """Write the model file atomically (``andon.fileio``), creating its folder."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fileio.write_atomic(path, data)


def _check_out_path(out_path: str | Path) -> Path:
    out_path = Path(out_path).expanduser()
    if out_path.suffix.lower() != ".onnx":
        raise ConfigError(f"output file {out_path} must end in .onnx")
    if out_path.is_dir():
        raise ConfigError(f"output {out_path} is a folder; give a file name ending in .onnx")
    return out_path


def _check_inputs(
    model: Classifier | None, card: ModelCard, inputs: np.ndarray, anomaly: torch.nn.Module | None = None
) -> np.ndarray:
    if (card.anomaly is None) != (anomaly is None):
        raise ExportError(
            "the card describes an anomaly detector but none was given"
            if anomaly is None
            else "an anomaly detector was given but the card does not describe one (card.anomaly)"
        )
    if model is None:
        if not card.anomaly_only:
            raise ExportError("only an anomaly-only model (card.anomaly.only) is exported without a classifier")
        return _check_shape(card, inputs)
    if len(card.classes) != model.num_classes:
        raise ExportError(
            f"the card lists {len(card.classes)} classes {card.classes} but the model has {model.num_classes} outputs"
        )
    if card.head_groups != model.head_groups.tolist():
        raise ExportError(
            f"the card's training classes {card.training_classes} do not match the model's head of "
            f"{model.head_units} units"
        )
    return _check_shape(card, inputs)


def _check_shape(card: ModelCard, inputs: np.ndarray) -> np.ndarray:
    h, w = card.preprocess.input_size
    inputs = np.asarray(inputs, dtype=np.float32)
    if inputs.ndim != 4 or inputs.shape[1:] != (3, h, w):
        raise ExportError(f"verification inputs of shape {inputs.shape} do not fit the card's input (N, 3, {h}, {w})")
    if len(inputs) == 0:
        raise ExportError("export needs at least one verification image to check parity with torch")
    return np.ascontiguousarray(inputs)


def _say(progress: Progress | None, message: str) -> None:
    if progress is not None:
        progress(message)


def export_run(
    run_dir: str | Path,
    out_path: str | Path,
    *,
    int8: bool = False,
    max_accuracy_drop: float = 1.0,
    calibration_images: int = 128,
    verify_images: int = 64,
    eval_images: int | None = None,
    opset: int = 17,
    exporter: Exporter = "torchscript",
    progress: Progress | None = None,
) -> ExportReport:
    """Export a training run's ``best.pt`` to ``out_path``; see the module docstring for the checks."""
    from andon.inspect.preprocess import Preprocessor
    from andon.models.rundata import load_run, load_tensors, pick

    t0 = time.perf_counter()
    out_path = _check_out_path(out_path)
    _say(progress, f"reading run {run_dir}")
    run = load_run(run_dir)
    preprocessor = Preprocessor(run.card.preprocess)
    classes = run.card.classes
    split, samples = run.split("val", "train")
    _say(progress, f"preprocessing {min(len(samples), verify_images)} {split} images for the parity check")
    verify_x, _ = load_tensors(pick(samples, verify_images), preprocessor, classes)
    built = build(run.model, run.card, verify_x, anomaly=run.anomaly, opset=opset, exporter=exporter, progress=progress)
    data, card, int8_report = built.data, built.card, None
    if int8:
        data, card, int8_report = _int8(
            run,
            built,
            preprocessor,
            max_accuracy_drop=max_accuracy_drop,
            calibration_images=calibration_images,
            eval_images=eval_images,
            progress=progress,
        )
    _say(progress, f"writing {out_path}")
    write_atomic(out_path, data)
    return ExportReport(
        path=out_path,
        card=card,
        opset=built.opset,
        exporter=exporter,
        size_bytes=len(data),
        seconds=time.perf_counter() - t0,
        parity=built.parity,
        heatmap_size=built.heatmap_size,
        int8=int8_report,
        stages=built.stages,
    )


def _int8(
    run,
    built: Built,
    preprocessor,
    *,
    max_accuracy_drop: float,
    calibration_images: int,
    eval_images: int | None,
    progress: Progress | None,
) -> tuple[bytes, ModelCard, Int8Report]:
    """Quantize, measure against fp32, and refuse past the accuracy bound; returns the int8 file bytes."""
    from andon.inspect.session import create_session
    from andon.models.quantize import compare, quantize_int8

    calib_x, eval_split, eval_x, eval_y = _int8_images(run, preprocessor, calibration_images, eval_images, progress)
    _say(progress, f"quantizing to int8 (QDQ, per-channel), calibrating on {len(calib_x)} images")
    t = time.perf_counter()
    quantized = quantize_int8(built.graph, calib_x, input_name=INPUT_NAME)
    quantized.producer_name, quantized.producer_version = "andon", __version__
    built.stages["quantize"] = time.perf_counter() - t
    _say(progress, f"comparing fp32 and int8 on {len(eval_x)} {eval_split} images")
    t = time.perf_counter()
    graph8 = quantized.SerializeToString()
    report = compare(
        create_session(built.data),
        create_session(graph8),
        eval_x,
        eval_y,
        built.card,
        input_name=INPUT_NAME,
        probs_name=PROBS_NAME,
        fp32_bytes=len(built.data),
        int8_bytes=len(graph8),
        calibration_images=len(calib_x),
    )
    built.stages["compare"] = time.perf_counter() - t
    if report.accuracy_drop_pp > max_accuracy_drop:
        raise ExportError(
            f"int8 accuracy {report.int8_accuracy:.2%} is {report.accuracy_drop_pp:.2f} points below fp32 "
            f"{report.fp32_accuracy:.2%} on {report.n_eval} {eval_split} images, beyond --max-accuracy-drop "
            f"{max_accuracy_drop:g}; no file written (export without --int8 for fp32)"
        )
    card = built.card.replace(
        quantization=f"int8 (onnxruntime static QDQ, per-channel int8 weights, uint8 activations, "
        f"{len(calib_x)} calibration images)",
        metrics={
            **built.card.metrics,
            f"fp32_{eval_split}_accuracy": report.fp32_accuracy,
            f"int8_{eval_split}_accuracy": report.int8_accuracy,
        },
    )
    data, card = with_card(quantized, card)
    _check_loads(data, "the int8 file")
    return data, card, report


def _int8_images(
    run, preprocessor, calibration_images: int, eval_images: int | None, progress: Progress | None
) -> tuple[np.ndarray, str, np.ndarray, np.ndarray]:
    """Calibration tensors from train (else val), and labelled tensors to judge on from val (else test, train)."""
    from andon.models.rundata import load_tensors, pick

    classes = run.card.classes
    _, train = run.split("train", "val")
    calib_x, _ = load_tensors(pick(train, calibration_images), preprocessor, classes)
    eval_split, eval_samples = run.split("val", "test", "train")
    eval_samples = pick(eval_samples, eval_images)
    _say(progress, f"preprocessing {len(eval_samples)} {eval_split} images to judge int8 accuracy")
    eval_x, eval_y = load_tensors(eval_samples, preprocessor, classes)
    return calib_x, eval_split, eval_x, eval_y


def _check_loads(data: bytes, what: str) -> None:
    """The file must load in the Inspector exactly as the service will load it (card, hash, signature)."""
    from andon.inspect.inspector import Inspector

    try:
        Inspector.from_bytes(data, source=what, warmup=True)
    except AndonError as exc:
        raise ExportError(f"{what} does not load in the inspector: {exc}") from None
