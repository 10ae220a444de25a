"""``Classifier``: a convolutional trunk, global average pooling, dropout, one linear head.

The head is linear on globally averaged features on purpose: the logit of class c is then exactly the mean
over locations of ``head(F[:, :, y, x])``, so the per-location logits (``local_logits``) are a class
activation map that explains the prediction without approximation. Export builds the heatmap from them.

The head may have more units than the model has classes (``head_groups``): after a remap that merged defect
types into ``defect``, the network is still trained on the types (``training_logits``, one unit per type),
and a class's logit is the log-sum-exp of its units' logits, so that its softmax probability is the sum of
its types' probabilities. Everything outside training (evaluation, export, the service) sees the classes.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch
from torch import nn

from andon.errors import ConfigError


class Classifier(nn.Module):
    """Image classifier with an exact class activation map.

    ``freeze_backbone()`` stops gradients into the trunk and keeps its BatchNorm statistics fixed (the
    trunk stays in eval mode even under ``train()``), for a warm-up that trains only the new head.
    """

    def __init__(
        self,
        model_name: str,
        backbone: nn.Module,
        feature_channels: int,
        num_classes: int,
        *,
        dropout: float = 0.2,
        head_groups: Sequence[int] | None = None,
    ) -> None:
        super().__init__()
        if num_classes < 2:
            raise ConfigError(f"num_classes must be at least 2, got {num_classes}")
        if not 0.0 <= dropout < 1.0:
            raise ConfigError(f"dropout must be in [0, 1), got {dropout}")
        groups = list(range(num_classes)) if head_groups is None else [int(g) for g in head_groups]
        if sorted(set(groups)) != list(range(num_classes)) or groups != sorted(groups):
            raise ConfigError(
                f"head_groups {groups} must name every class 0..{num_classes - 1}, in order, at least once"
            )
        self.model_name = model_name
        self.feature_channels = feature_channels
        self.num_classes = num_classes
        #: units of the head: one per training class (more than num_classes when classes were merged)
        self.head_units = len(groups)
        self.backbone = backbone
        self.dropout = nn.Dropout(p=dropout)
        self.head = nn.Linear(feature_channels, self.head_units)
        nn.init.normal_(self.head.weight, std=0.01)
        nn.init.zeros_(self.head.bias)
        #: added to the head's logits outside training: log of the training split's class frequencies when
        #: training balanced the classes (sampler or loss weights), so that the probabilities describe data
        #: with the training split's class mix again (post-hoc logit adjustment); zeros otherwise
        self.register_buffer("prior_shift", torch.zeros(self.head_units))
        #: the class of each head unit (not saved: it follows from the card's ``trained_as``)
        self.register_buffer("head_groups", torch.tensor(groups, dtype=torch.long), persistent=False)
        self.merged = self.head_units != num_classes
        if self.merged:
            member = torch.zeros(num_classes, self.head_units, dtype=torch.bool)
            member[groups, torch.arange(self.head_units)] = True
            self.register_buffer("_outside", ~member, persistent=False)
        self._frozen = False
        #: andon.models.weights.WeightsInfo of the trunk's weights, set by create_model
        self.weights_info = None

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The trunk's last feature map, N x C x h x w."""
        return self.backbone(x)

    def local_logits(self, feats: torch.Tensor) -> torch.Tensor:
        """Per-location head logits N x U x h x w: the head applied at every location of the feature map."""
        weight = self.head.weight[:, :, None, None]
        return nn.functional.conv2d(feats, weight, self._bias())

    def head_logits(self, feats: torch.Tensor) -> torch.Tensor:
        """Head logits N x U (one per training class): the mean of ``local_logits`` over locations."""
        return self.head(self.dropout(feats.mean(dim=(2, 3)))) + (0.0 if self.training else self.prior_shift)

    def logits(self, feats: torch.Tensor) -> torch.Tensor:
        """Class logits N x K from the trunk's feature map (the head's, or log-sum-exp over merged units)."""
        return self.merge(self.head_logits(feats))

    def merge(self, head_logits: torch.Tensor) -> torch.Tensor:
        """Class logits from head logits: each class's log-sum-exp over its units (identity when none merged)."""
        if not self.merged:
            return head_logits
        z = head_logits[:, None, :].masked_fill(self._outside, float("-inf"))  # N x K x U
        peak = z.amax(dim=2, keepdim=True).detach()
        return (z - peak).exp().sum(dim=2).log() + peak[:, :, 0]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Class logits N x K."""
        return self.logits(self.features(x))

    def training_logits(self, x: torch.Tensor) -> torch.Tensor:
        """Head logits N x U, what the training loss compares with training-class targets."""
        return self.head_logits(self.features(x))

    def _bias(self) -> torch.Tensor:
        return self.head.bias if self.training else self.head.bias + self.prior_shift

    def set_training_prior(self, counts: list[int] | torch.Tensor) -> None:
        """Shift the head logits by the log training-class frequencies of a split that was trained balanced."""
        counts = torch.as_tensor(counts, dtype=torch.float32)
        if counts.shape != (self.head_units,) or bool((counts <= 0).any()):
            raise ConfigError(f"class counts {counts.tolist()} must be {self.head_units} positive numbers")
        self.prior_shift.copy_(torch.log(counts / counts.sum()))

    #: state a checkpoint may lack (written before it existed), with what loading puts in its place
    OPTIONAL_STATE = {"prior_shift": "zeros: no shift"}

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):  # noqa: ANN001 (torch's signature)
        state_dict.setdefault(prefix + "prior_shift", torch.zeros(self.head_units))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def freeze_backbone(self) -> None:
        self._frozen = True
        for p in self.backbone.parameters():
            p.requires_grad_(False)
        self.backbone.eval()

    def unfreeze_backbone(self) -> None:
        self._frozen = False
        for p in self.backbone.parameters():
            p.requires_grad_(True)
        self.backbone.train(self.training)

    @property
    def backbone_frozen(self) -> bool:
        return self._frozen

    def train(self, mode: bool = True) -> Classifier:
        super().train(mode)
        if self._frozen:
            self.backbone.eval()
        return self

    def backbone_parameters(self) -> Iterator[nn.Parameter]:
        return self.backbone.parameters()

    def head_parameters(self) -> Iterator[nn.Parameter]:
        return self.head.parameters()

    def extra_repr(self) -> str:
        merged = f", head_units={self.head_units}" if self.merged else ""
        return (
            f"model_name={self.model_name!r}, feature_channels={self.feature_channels}, "
            f"num_classes={self.num_classes}{merged}"
        )
