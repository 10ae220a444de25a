"""A tiny, real andon ONNX model built with onnx.helper, for tests that must not need torch.

The network is a genuine classifier of the andon graph contract (input ``image`` Nx3xHxW float32,
outputs ``probs`` NxK and ``heatmap`` Nxhxw): 4x4 average pooling gives a feature map, a 1x1 convolution
gives per-location class logits, their global mean gives the logits (so the heatmap is an exact class
activation map), softmax gives probabilities. Its weights make dark regions evidence of a defect: a bright
frame passes, a frame with a dark blob is rejected, and the heatmap peaks on the blob.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from andon.inspect.card import ModelCard, PreprocessSpec, ThresholdBand, Thresholds
from andon.inspect.onnxfile import embed_card


def tiny_card(classes: tuple[str, ...] = ("ok", "defect"), size: int = 32, **changes) -> ModelCard:
    card = ModelCard(
        name="tiny",
        version="1",
        classes=list(classes),
        defect_classes=[c for c in classes if c != "ok"],
        preprocess=PreprocessSpec(input_size=(size, size), mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25)),
        thresholds=Thresholds(defect=ThresholdBand(pass_below=0.3, reject_at=0.7), source="manual"),
        backbone="tiny-avgpool",
        weights="none",
        data_fingerprint="test",
        metrics={"accuracy": 1.0},
    )
    return card.replace(**changes) if changes else card


def cam_nodes() -> list[onnx.NodeProto]:
    """From per-location logits ``local`` (NxKxhxw) to the contract's outputs: ``probs`` (softmax of their
    mean) and ``heatmap`` (sigmoid of the per-location log-odds, defect classes against good ones)."""
    return [
        helper.make_node("ReduceMean", ["local"], ["pooled"], axes=[2, 3], keepdims=0),
        helper.make_node("Softmax", ["pooled"], ["probs"], axis=1),
        helper.make_node("Gather", ["local", "defect_idx"], ["local_defect"], axis=1),
        helper.make_node("Gather", ["local", "good_idx"], ["local_good"], axis=1),
        helper.make_node("ReduceLogSumExp", ["local_defect"], ["lse_defect"], axes=[1], keepdims=0),
        helper.make_node("ReduceLogSumExp", ["local_good"], ["lse_good"], axes=[1], keepdims=0),
        helper.make_node("Sub", ["lse_defect", "lse_good"], ["log_odds"]),
        helper.make_node("Sigmoid", ["log_odds"], ["heatmap"]),
    ]


def class_index_initializers(card: ModelCard) -> list[onnx.TensorProto]:
    """The ``defect_idx`` and ``good_idx`` constants that ``cam_nodes`` gathers with."""
    good = [card.classes.index(c) for c in card.good_classes]
    return [
        numpy_helper.from_array(np.array(card.defect_indices, np.int64), "defect_idx"),
        numpy_helper.from_array(np.array(good, np.int64), "good_idx"),
    ]


def tiny_model(card: ModelCard | None = None, *, opset: int = 17) -> onnx.ModelProto:
    card = card or tiny_card()
    k = len(card.classes)
    # per-location logit of class c: w_c * mean_channel(x) + b_c; "ok" likes bright, defects like dark
    weight = np.zeros((k, 3, 1, 1), dtype=np.float32)
    bias = np.zeros((k,), dtype=np.float32)
    for i, name in enumerate(card.classes):
        sign = 1.0 if name in card.good_classes else -1.0
        weight[i, :, 0, 0] = sign * 2.0 / 3.0
        bias[i] = 0.0 if sign > 0 else -0.5 - 0.1 * i
    nodes = [
        helper.make_node("AveragePool", ["image"], ["feat"], kernel_shape=[4, 4], strides=[4, 4]),
        helper.make_node("Conv", ["feat", "W", "B"], ["local"]),
        *cam_nodes(),
    ]
    h, w = card.preprocess.input_size
    graph = helper.make_graph(
        nodes,
        "tiny",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["batch", 3, h, w])],
        [
            helper.make_tensor_value_info("probs", TensorProto.FLOAT, ["batch", k]),
            helper.make_tensor_value_info("heatmap", TensorProto.FLOAT, ["batch", h // 4, w // 4]),
        ],
        initializer=[
            numpy_helper.from_array(weight, "W"),
            numpy_helper.from_array(bias, "B"),
            *class_index_initializers(card),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], producer_name="andon-tests")
    model.ir_version = 8
    onnx.checker.check_model(model)
    embed_card(model, card)
    return model


def write_tiny_model(path: Path, card: ModelCard | None = None) -> Path:
    onnx.save(tiny_model(card), str(path))
    return path


#: how far a cell's red and blue may differ (normalised units) before the tiny anomaly detector finds it odd
ANOMALY_SCALE = 0.5


def tiny_anomaly_card(size: int = 32, *, anomaly_only: bool = False, **changes) -> ModelCard:
    """The card of ``tiny_anomaly_model``: the four outputs, an ``AnomalySpec`` and, with a classifier, the
    anomaly band ``ThresholdBand(pass_below=0.5, reject_at=1.0)`` (an anomaly only ever sends to review)."""
    from andon.inspect.card import AnomalySpec
    from andon.inspect.outputs import exported_names

    spec = AnomalySpec(
        trunk="tiny-avgpool",
        layers=[0],
        bank_size=1,
        dim=3,
        scale=ANOMALY_SCALE,
        n_good=1,
        only=anomaly_only,
        calibration="tests: colour cast",
    )
    if anomaly_only:
        card = tiny_card(
            ("anomaly", "ok"),
            size,
            name="tiny-anomaly-only",
            output_names=exported_names(("probabilities", "anomaly_score", "anomaly_map")),
            anomaly=spec.model_dump(),
            thresholds=Thresholds(defect=ThresholdBand(pass_below=0.5, reject_at=1.0), source="manual").model_dump(),
        )
        card = card.replace(defect_classes=["anomaly"])
    else:
        card = tiny_card(
            size=size,
            name="tiny-anomaly",
            output_names=exported_names(("probabilities", "heatmap", "anomaly_score", "anomaly_map")),
            anomaly=spec.model_dump(),
            thresholds=Thresholds(
                defect=ThresholdBand(pass_below=0.3, reject_at=0.7),
                anomaly=ThresholdBand(pass_below=0.5, reject_at=1.0),
                source="manual",
            ).model_dump(),
        )
    return card.replace(**changes) if changes else card


def anomaly_nodes() -> list[onnx.NodeProto]:
    """From the 4x4-pooled frame ``feat`` (Nx3xhxw) to ``anomaly_map`` (per cell d / (d + scale), d = |red -
    blue|: 0 on any grey, 0.89 on yellow) and ``anomaly_score`` (its maximum)."""
    return [
        helper.make_node("Conv", ["feat", "W_rb"], ["rb"]),
        helper.make_node("Abs", ["rb"], ["rb_abs"]),
        helper.make_node("Squeeze", ["rb_abs", "axis1"], ["dist"]),
        helper.make_node("Add", ["dist", "scale"], ["dist_plus"]),
        helper.make_node("Div", ["dist", "dist_plus"], ["anomaly_map"]),
        helper.make_node("ReduceMax", ["anomaly_map"], ["anomaly_score"], axes=[1, 2], keepdims=0),
    ]


def anomaly_initializers() -> list[onnx.TensorProto]:
    return [
        numpy_helper.from_array(np.array([1.0, 0.0, -1.0], np.float32).reshape(1, 3, 1, 1), "W_rb"),
        numpy_helper.from_array(np.array([1], np.int64), "axis1"),
        numpy_helper.from_array(np.array(ANOMALY_SCALE, np.float32), "scale"),
    ]


def tiny_anomaly_model(
    card: ModelCard | None = None, *, anomaly_only: bool = False, opset: int = 17
) -> onnx.ModelProto:
    """``tiny_model`` plus a good-only anomaly detector: outputs ``probs``, ``heatmap``, ``anomaly_score`` [N]
    and ``anomaly_map`` [N, h, w]. The classifier sees darkness (bright passes, dark rejects) and is blind to
    colour; the anomaly detector sees colour (red against blue), so a bright yellow patch on a bright grey part
    passes the classifier and is flagged by the anomaly score: an unknown defect.

    ``anomaly_only``: a good-only model without a classifier (classes anomaly/ok, probabilities (s, 1 - s) of
    the anomaly score s, no heatmap).
    """
    card = card or tiny_anomaly_card(anomaly_only=anomaly_only)
    h, w = card.preprocess.input_size
    nodes = [
        helper.make_node("AveragePool", ["image"], ["feat"], kernel_shape=[4, 4], strides=[4, 4]),
        *anomaly_nodes(),
    ]
    initializers = anomaly_initializers()
    outputs = []
    if anomaly_only:
        nodes += [
            helper.make_node("Unsqueeze", ["anomaly_score", "axis1"], ["s_col"]),
            helper.make_node("Sub", ["one", "s_col"], ["ok_col"]),
            helper.make_node("Concat", ["s_col", "ok_col"], ["probs"], axis=1),
        ]
        initializers.append(numpy_helper.from_array(np.array(1.0, np.float32), "one"))
        outputs.append(helper.make_tensor_value_info("probs", TensorProto.FLOAT, ["batch", 2]))
    else:
        k = len(card.classes)
        weight = np.zeros((k, 3, 1, 1), dtype=np.float32)
        bias = np.zeros((k,), dtype=np.float32)
        for i, name in enumerate(card.classes):
            sign = 1.0 if name in card.good_classes else -1.0
            weight[i, :, 0, 0] = sign * 2.0 / 3.0
            bias[i] = 0.0 if sign > 0 else -0.5 - 0.1 * i
        nodes += [helper.make_node("Conv", ["feat", "W", "B"], ["local"]), *cam_nodes()]
        initializers += [
            numpy_helper.from_array(weight, "W"),
            numpy_helper.from_array(bias, "B"),
            *class_index_initializers(card),
        ]
        outputs += [
            helper.make_tensor_value_info("probs", TensorProto.FLOAT, ["batch", k]),
            helper.make_tensor_value_info("heatmap", TensorProto.FLOAT, ["batch", h // 4, w // 4]),
        ]
    outputs += [
        helper.make_tensor_value_info("anomaly_score", TensorProto.FLOAT, ["batch"]),
        helper.make_tensor_value_info("anomaly_map", TensorProto.FLOAT, ["batch", h // 4, w // 4]),
    ]
    graph = helper.make_graph(
        nodes,
        "tiny-anomaly",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["batch", 3, h, w])],
        outputs,
        initializer=initializers,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], producer_name="andon-tests")
    model.ir_version = 8
    onnx.checker.check_model(model)
    embed_card(model, card)
    return model


def write_tiny_anomaly_model(path: Path, card: ModelCard | None = None, *, anomaly_only: bool = False) -> Path:
    onnx.save(tiny_anomaly_model(card, anomaly_only=anomaly_only), str(path))
    return path
