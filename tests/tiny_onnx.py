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
    return [numpy_helper.from_array(np.array(card.defect_indices, np.int64), "defect_idx"),
            numpy_helper.from_array(np.array(good, np.int64), "good_idx")]


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
        [helper.make_tensor_value_info("probs", TensorProto.FLOAT, ["batch", k]),
         helper.make_tensor_value_info("heatmap", TensorProto.FLOAT, ["batch", h // 4, w // 4])],
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
