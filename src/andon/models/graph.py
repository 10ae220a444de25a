"""The exported inspection graph: ``image`` -> the outputs declared in ``andon.inspect.outputs``.

Input and outputs (batch dimension dynamic; ``output_keys`` lists what a graph has, in order):

- ``image``   float32 [N, 3, H, W]: the tensor ``Preprocessor`` makes (RGB, normalised by the card).
- ``probs``   float32 [N, K]: softmax of the classifier's logits, in the card's class order.
- ``heatmap`` float32 [N, h, w] in [0, 1], at the resolution of the last feature map (H/32 x W/32).
- ``anomaly_score`` [N] and ``anomaly_map`` [N, h', w'], when the graph carries a good-only anomaly
  detector (``andon.models.anomaly``): it reads the same input tensor as the classifier.

An anomaly-only graph (a model made from good parts only) has no classifier: its ``probs`` are
(P(anomaly), P(ok)) = (a, 1 - a) from the anomaly score ``a``, so that everything that reads probabilities
(the label, P(defect), evaluation) works unchanged, and it has no class heatmap.

The heatmap is a class activation map, exact because the head is linear on globally averaged features:
with per-location logits ``z(y, x) = head(F[:, :, y, x])`` (whose spatial mean is the logits),

    heatmap(y, x) = sigmoid( logsumexp_{c in D} z_c(y, x) - logsumexp_{c in G} z_c(y, x) )
                  = sum_{c in D} softmax(z(y, x))_c

that is, the local probability that the part is defective, from defect classes D against good classes G.
The second form is what the graph computes (softmax is numerically safe in every runtime). When the head
was trained on source classes that the model merges (``Classifier.head_groups``), the sums run over the
head's units of the classes in D; the result is the same local probability.

When every class is a defect class (a defect-type classifier such as NEU steel, with no "ok" class), "is
it defective" is not a question the model answers; the heatmap then shows where the evidence for the
predicted class is: D = {the image's predicted class}, G = the other classes, i.e. the per-location softmax
probability of the predicted class. The same formula, so the Inspector reads both the same way.
"""

from __future__ import annotations

import torch
from torch import nn

from andon.models.classifier import Classifier


def trunk_with_taps(
    backbone: nn.Module, layers: tuple[int, ...], image: torch.Tensor
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """The trunk's feature map (as ``backbone(image)``) and the outputs of its blocks ``layers`` on the way."""
    blocks = getattr(backbone, "features", backbone)
    x, taps = image, []
    for i, block in enumerate(blocks):
        x = block(x)
        if i in layers:
            taps.append(x)
    if blocks is not backbone:  # Sequential(features=..., and what follows them, e.g. convnext's norm)
        for name, child in backbone.named_children():
            if name != "features":
                x = child(x)
    return x, taps


class InspectionGraph(nn.Module):
    """Wraps a trained ``Classifier`` (and/or an anomaly detector) into the graph that export writes to ONNX."""

    def __init__(self, model: Classifier | None, defect_indices: list[int], anomaly: nn.Module | None = None) -> None:
        super().__init__()
        if model is None and anomaly is None:
            raise ValueError("an inspection graph needs a classifier, an anomaly detector, or both")
        self.model = model
        self.anomaly = anomaly
        #: the outputs of ``forward``, in order (keys of ``andon.inspect.outputs``)
        self.output_keys: tuple[str, ...] = (
            ("probabilities",)
            + (("heatmap",) if model is not None else ())
            + (("anomaly_score", "anomaly_map") if anomaly is not None else ())
        )
        if model is None:
            return
        k = model.num_classes
        if not defect_indices or any(not 0 <= i < k for i in defect_indices):
            raise ValueError(f"defect indices {defect_indices} must be a non-empty subset of 0..{k - 1}")
        self.all_defect = len(set(defect_indices)) == k
        groups = model.head_groups.detach().cpu()
        mask = torch.isin(groups, torch.tensor(sorted(set(defect_indices)))).float()
        self.register_buffer("defect_mask", mask[None, :, None, None], persistent=False)
        #: the class of each head unit
        self.register_buffer("unit_class", groups[None, :], persistent=False)

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, ...]:
        if self.model is None:
            score, amap = self.anomaly(image)
            return torch.stack([score, 1.0 - score], dim=1), score, amap
        if self.anomaly is None:
            return self._classify(self.model.features(image))
        if self.anomaly.extractor.shared:  # one pass through the classifier's trunk feeds both
            feats, taps = trunk_with_taps(self.model.backbone, self.anomaly.extractor.layers, image)
            patches = self.anomaly.extractor.from_taps(taps)
            return self._classify(feats) + self.anomaly.score_features(patches)
        return self._classify(self.model.features(image)) + tuple(self.anomaly(image))

    def _classify(self, feats: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits = self.model.logits(feats)
        local = torch.softmax(self.model.local_logits(feats), dim=1)
        if self.all_defect:
            predicted = logits.argmax(dim=1, keepdim=True)
            mask = (self.unit_class == predicted).to(local.dtype)[:, :, None, None]
        else:
            mask = self.defect_mask
        heatmap = (local * mask).sum(dim=1).clamp(0.0, 1.0)
        return torch.softmax(logits, dim=1), heatmap
