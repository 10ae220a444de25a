"""The backbone registry: every backbone builds, the head is linear on pooled features, freezing works."""

from __future__ import annotations

import pytest
import torch

from andon.errors import ConfigError, UnknownModelError
from andon.models import Classifier, create_model, list_models, model_info

EXPECTED = {
    "mobilenet_v3_small",
    "mobilenet_v3_large",
    "mobilenet_v2",
    "efficientnet_b0",
    "efficientnet_lite0",
    "resnet18",
    "resnet50",
    "convnext_tiny",
}


def test_registry_lists_the_backbones() -> None:
    assert EXPECTED <= set(list_models())
    assert list_models() == sorted(list_models())


def test_unknown_name_lists_the_known_ones() -> None:
    with pytest.raises(UnknownModelError) as err:
        create_model("resnet19", 2, weights="none")
    assert "resnet19" in str(err.value)
    for name in EXPECTED:
        assert name in str(err.value)
    with pytest.raises(UnknownModelError):
        model_info("vgg16")


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_every_backbone_builds_and_gives_logits(name: str) -> None:
    torch.manual_seed(0)
    model = create_model(name, 5, weights="none").eval()
    info = model_info(name)
    assert isinstance(model, Classifier)
    assert model.model_name == name
    assert model.feature_channels == info.feature_channels
    assert model.head.in_features == info.feature_channels and model.head.out_features == 5
    assert model.weights_info is not None and model.weights_info.source == "none"
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        feats = model.features(x)
        logits = model(x)
    assert feats.shape == (2, info.feature_channels, 64 // info.stride, 64 // info.stride)
    assert logits.shape == (2, 5)
    assert torch.isfinite(logits).all()


@pytest.mark.parametrize("name", ["mobilenet_v3_small", "resnet18", "convnext_tiny", "efficientnet_lite0"])
def test_class_activation_map_is_exact(name: str) -> None:
    """The mean of the per-location logits is the logits: the heatmap explains the score exactly."""
    torch.manual_seed(1)
    model = create_model(name, 4, weights="none").eval()
    torch.nn.init.normal_(model.head.weight, std=0.5)  # make the head matter
    x = torch.randn(3, 3, 96, 128)
    with torch.no_grad():
        local = model.local_logits(model.features(x))
        logits = model(x)
    assert local.shape == (3, 4, 3, 4)
    torch.testing.assert_close(local.mean(dim=(2, 3)), logits, rtol=1e-5, atol=1e-5)
    # and a location's logits are the head applied to that location's feature vector
    with torch.no_grad():
        feats = model.features(x)
        torch.testing.assert_close(local[1, :, 2, 3], model.head(feats[1, :, 2, 3]), rtol=1e-5, atol=1e-5)


def test_model_info_has_normalisation_and_size() -> None:
    info = model_info("resnet18")
    assert info.input_size == (224, 224)
    assert info.mean == pytest.approx((0.485, 0.456, 0.406)) and info.std == pytest.approx((0.229, 0.224, 0.225))
    assert "ResNet18_Weights" in info.imagenet_weights
    lite = model_info("efficientnet_lite0")
    assert lite.mean == pytest.approx((127 / 255,) * 3) and lite.std == pytest.approx((128 / 255,) * 3)


def test_freeze_keeps_trunk_fixed_and_head_trainable() -> None:
    torch.manual_seed(2)
    model = create_model("mobilenet_v3_small", 3, weights="none", dropout=0.3)
    assert model.dropout.p == 0.3
    model.freeze_backbone()
    model.train()
    assert not any(p.requires_grad for p in model.backbone_parameters())
    assert all(p.requires_grad for p in model.head_parameters())
    assert not model.backbone.training and model.head.training
    bn = next(m for m in model.backbone.modules() if isinstance(m, torch.nn.BatchNorm2d))
    before = bn.running_mean.clone()
    loss = model(torch.randn(4, 3, 64, 64)).logsumexp(1).mean()
    loss.backward()
    assert torch.equal(bn.running_mean, before), "frozen BatchNorm statistics must not move"
    assert model.head.weight.grad is not None
    model.unfreeze_backbone()
    assert all(p.requires_grad for p in model.backbone_parameters())
    assert model.backbone.training
    model(torch.randn(4, 3, 64, 64))
    assert not torch.equal(bn.running_mean, before)


def test_head_and_backbone_parameters_partition_the_model() -> None:
    model = create_model("resnet18", 2, weights="none")
    ids = {id(p) for p in model.backbone_parameters()} | {id(p) for p in model.head_parameters()}
    assert ids == {id(p) for p in model.parameters()}


def test_bad_head_settings_are_config_errors() -> None:
    with pytest.raises(ConfigError, match="num_classes"):
        create_model("resnet18", 1, weights="none")
    with pytest.raises(ConfigError, match="dropout"):
        create_model("resnet18", 2, weights="none", dropout=1.5)


def test_training_prior_shifts_the_logits_outside_training_only() -> None:
    torch.manual_seed(0)
    model = create_model("resnet18", 3, weights="none", progress=False)
    x = torch.randn(2, 3, 64, 64)
    model.eval()
    with torch.no_grad():
        plain = model(x)
        model.set_training_prior([80, 15, 5])
        shifted = model(x)
        cam = model.local_logits(model.features(x)).mean(dim=(2, 3))
    expected = torch.log(torch.tensor([0.80, 0.15, 0.05]))
    assert torch.allclose(shifted - plain, expected.expand_as(plain), atol=1e-5)
    assert torch.allclose(cam, shifted, atol=1e-4)  # the heatmap still explains the (shifted) prediction
    model.train()
    model.backbone.eval()  # batch statistics aside: only the head's mode matters here
    model.dropout.p = 0.0
    with torch.no_grad():
        assert torch.allclose(model(x), plain, atol=1e-5)  # the loss sees the balanced logits
    with pytest.raises(ConfigError, match="3 positive numbers"):
        model.set_training_prior([10, 0, 5])


def test_state_dict_without_prior_shift_loads_as_no_shift() -> None:
    model = create_model("resnet18", 3, weights="none", progress=False)
    model.set_training_prior([1, 2, 3])
    state = {k: v for k, v in model.state_dict().items() if k != "prior_shift"}  # an older checkpoint
    model.load_state_dict(state)
    assert torch.equal(model.prior_shift, torch.zeros(3))
