"""andon.models: the backbone registry, pretrained weights, checkpoints and ONNX export (torch lives here)."""

from andon.models.backbones import IMAGENET_MEAN, IMAGENET_STD
from andon.models.checkpoint import Checkpoint, load_checkpoint, model_from_checkpoint, save_checkpoint
from andon.models.classifier import Classifier
from andon.models.registry import ModelInfo, create_model, list_models, model_info
from andon.models.weights import WeightsInfo, load_weights

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "Checkpoint",
    "Classifier",
    "ModelInfo",
    "WeightsInfo",
    "create_model",
    "list_models",
    "load_checkpoint",
    "load_weights",
    "model_from_checkpoint",
    "model_info",
    "save_checkpoint",
]
