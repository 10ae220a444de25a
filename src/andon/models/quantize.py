"""Static int8 quantization of an exported graph with onnxruntime, and the measurements that judge it.

QDQ format (QuantizeLinear/DequantizeLinear pairs around int8 kernels), weights int8 per output channel in a
7-bit range (``reduce_range``, see ``quantize_int8``), activations uint8 with ranges calibrated (min/max) on
training images run through the fp32 graph. The classifier's tail (pooling, head, softmax and the heatmap)
stays fp32: it is a tiny share of the compute, and quantizing a softmax's input costs probability resolution
the thresholds depend on.

Quantization can silently cost accuracy, so export measures it on held-out images (``compare``) and
refuses a file whose accuracy drops beyond the bound the user set.
"""

from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx

from andon.errors import ExportError
from andon.inspect.card import ModelCard


@dataclass(frozen=True)
class Int8Report:
    """fp32 against int8 on the same images and the same batch, on this machine."""

    n_eval: int
    fp32_accuracy: float
    int8_accuracy: float
    #: percentage points lost (negative when int8 happens to do better)
    accuracy_drop_pp: float
    #: share of images where both predict the same class
    agreement: float
    #: share of images where both give the same pass / review / reject at the card's thresholds
    decision_agreement: float
    max_prob_diff: float
    fp32_ms_per_image: float
    int8_ms_per_image: float
    fp32_bytes: int
    int8_bytes: int
    calibration_images: int
    #: largest |fp32 - int8| of the anomaly score, for models with one (NaN otherwise)
    max_anomaly_diff: float = float("nan")

    @property
    def speedup(self) -> float:
        return self.fp32_ms_per_image / self.int8_ms_per_image

    @property
    def size_ratio(self) -> float:
        return self.int8_bytes / self.fp32_bytes


class _Calibration:
    """onnxruntime ``CalibrationDataReader`` over preprocessed images, in batches."""

    def __init__(self, images: np.ndarray, input_name: str, batch: int) -> None:
        self._batches = iter([{input_name: images[i : i + batch]} for i in range(0, len(images), batch)])

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._batches, None)


def tail_nodes(model: onnx.ModelProto) -> list[str]:
    """Names of the nodes downstream of the trunk's feature map (pooling, head, softmax, heatmap).

    The feature map is the input of the head's per-location 1x1 convolution: the Conv whose output goes
    into a Softmax.
    """
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in model.graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    heads = [
        n
        for n in model.graph.node
        if n.op_type == "Conv" and any(c.op_type == "Softmax" for o in n.output for c in consumers.get(o, []))
    ]
    if len(heads) != 1:
        raise ExportError(
            f"cannot find the classifier head in the graph ({len(heads)} candidate convolutions); "
            "int8 export needs a graph written by andon export"
        )
    tail: list[str] = []
    seen: set[int] = set()
    frontier = [heads[0].input[0]]
    while frontier:
        for node in consumers.get(frontier.pop(), []):
            if id(node) not in seen:
                seen.add(id(node))
                tail.append(node.name)
                frontier.extend(node.output)
    return [name for name in tail if name]


def quantize_int8(
    fp32: onnx.ModelProto, calibration: np.ndarray, *, input_name: str = "image", batch: int = 8
) -> onnx.ModelProto:
    """The int8 (QDQ, per-channel) version of ``fp32``, calibrated on ``calibration`` (N x 3 x H x W).

    Every setting that decides the numbers is spelled out rather than left to onnxruntime's defaults. Weights
    use ``reduce_range`` (int8 storage, values in [-64, 64]): onnxruntime runs uint8 x int8 convolutions on
    x86 CPUs without VNNI (AVX2-only parts, AMD before Zen 4) with VPMADDUBSW, which adds pairs of u8*s8
    products in int16 and saturates past 32767. With full-range per-channel weights (up to 127, so a pair
    reaches 2*255*127) a fraction of a percent of those sums clip in every layer, the error compounds through
    the network: such a machine scores the file far below what its QDQ graph computes (val accuracy 93% fp32,
    80% for the graph run unfused, 40% fused on an AVX2 EPYC, on a MobileNetV3). With 7-bit weights a pair is at most
    2*255*64 = 32640, so no sum saturates on any CPU and the int8 kernels stay the fast u8s8 ones.
    """
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    if len(calibration) == 0:
        raise ExportError("int8 quantization needs calibration images, and the training split has none")
    with tempfile.TemporaryDirectory(prefix="andon-int8-") as tmp:
        src, pre, dst = Path(tmp, "fp32.onnx"), Path(tmp, "pre.onnx"), Path(tmp, "int8.onnx")
        onnx.save(fp32, str(src))
        quant_pre_process(str(src), str(pre), skip_symbolic_shape=True)
        prepared = onnx.load(str(pre))
        quantize_static(
            str(pre),
            str(dst),
            _Calibration(calibration, input_name, batch),
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            reduce_range=True,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            calibrate_method=CalibrationMethod.MinMax,
            nodes_to_exclude=tail_nodes(prepared),
            extra_options={"WeightSymmetric": True, "ActivationSymmetric": False},
        )
        return _prune_opsets(onnx.load(str(dst)))


def _prune_opsets(model: onnx.ModelProto) -> onnx.ModelProto:
    """Drop the opset imports of domains no node uses (onnxruntime's pre-processing declares a dozen)."""
    used = {n.domain for n in model.graph.node} | {""}
    keep = [o for o in model.opset_import if o.domain in used or (o.domain == "ai.onnx" and "" in used)]
    del model.opset_import[:]
    model.opset_import.extend(keep)
    onnx.checker.check_model(model)
    return model


def compare(
    fp32_session: object,
    int8_session: object,
    images: np.ndarray,
    labels: np.ndarray,
    card: ModelCard,
    *,
    input_name: str,
    probs_name: str,
    fp32_bytes: int,
    int8_bytes: int,
    calibration_images: int,
    batch: int = 16,
    timing_batch: int = 8,
    repeats: int = 10,
) -> Int8Report:
    """Accuracy and decisions of both sessions on ``images``, and their speed on one batch of ``timing_batch``."""
    from andon.inspect.decision import DecisionPolicy

    policy = DecisionPolicy.from_card(card)
    o32 = _predict(fp32_session, images, input_name, card.output_names, batch)
    o8 = _predict(int8_session, images, input_name, card.output_names, batch)
    p32, p8 = o32.probs, o8.probs
    d32, d8 = (policy.decide(o).decisions for o in (o32, o8))
    a32, a8 = o32.get("anomaly_score"), o8.get("anomaly_score")
    acc32 = float((p32.argmax(1) == labels).mean())
    acc8 = float((p8.argmax(1) == labels).mean())
    sample = images[:timing_batch]
    ms32 = _time_per_image(fp32_session, sample, input_name, probs_name, repeats)
    ms8 = _time_per_image(int8_session, sample, input_name, probs_name, repeats)
    return Int8Report(
        n_eval=len(images),
        fp32_accuracy=acc32,
        int8_accuracy=acc8,
        accuracy_drop_pp=(acc32 - acc8) * 100.0,
        agreement=float((p32.argmax(1) == p8.argmax(1)).mean()),
        decision_agreement=float((d32 == d8).mean()),
        max_prob_diff=float(np.abs(p32 - p8).max()),
        max_anomaly_diff=float("nan") if a32 is None else float(np.abs(a32 - a8).max()),
        fp32_ms_per_image=ms32,
        int8_ms_per_image=ms8,
        fp32_bytes=fp32_bytes,
        int8_bytes=int8_bytes,
        calibration_images=calibration_images,
    )


def _predict(
    session: object, images: np.ndarray, input_name: str, output_names: dict[str, str], batch: int
):  # -> ModelOutputs
    """Every output the decision reads (not the maps), in batches."""
    from andon.inspect.outputs import ModelOutputs, output_spec

    keys = [k for k in output_names if not output_spec(k).is_map]
    runs = [
        session.run([output_names[k] for k in keys], {input_name: images[i : i + batch]})  # type: ignore[attr-defined]
        for i in range(0, len(images), batch)
    ]
    return ModelOutputs({k: np.concatenate([r[j] for r in runs]).astype(np.float64) for j, k in enumerate(keys)})


def _time_per_image(session: object, sample: np.ndarray, input_name: str, probs_name: str, repeats: int) -> float:
    """Median wall time of one batch call, per image, after a warm-up call."""
    feed = {input_name: np.ascontiguousarray(sample)}
    session.run([probs_name], feed)  # type: ignore[attr-defined]
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        session.run([probs_name], feed)  # type: ignore[attr-defined]
        times.append(time.perf_counter() - t0)
    return float(np.median(times)) * 1000.0 / len(sample)
