"""Frame to verdict, without torch: decoding, preprocessing, the model card, decisions and the inspector."""

from andon.inspect.card import ModelCard, PreprocessSpec, ThresholdBand, Thresholds, default_defect_classes
from andon.inspect.decoding import ImageHeader, decode, probe
from andon.inspect.preprocess import Preprocessor

__all__ = [
    "ImageHeader",
    "ModelCard",
    "PreprocessSpec",
    "Preprocessor",
    "ThresholdBand",
    "Thresholds",
    "decode",
    "default_defect_classes",
    "probe",
]
