"""Frame to verdict, without torch: decoding, preprocessing, the model card, decisions and the inspector."""

from andon.inspect.card import ModelCard, PreprocessSpec, ThresholdBand, Thresholds, default_defect_classes
from andon.inspect.decision import decide, decide_many
from andon.inspect.decoding import ImageHeader, decode, probe
from andon.inspect.inspector import Inspector
from andon.inspect.preprocess import Preprocessor
from andon.inspect.result import InspectionResult

__all__ = [
    "ImageHeader",
    "InspectionResult",
    "Inspector",
    "ModelCard",
    "PreprocessSpec",
    "Preprocessor",
    "ThresholdBand",
    "Thresholds",
    "decide",
    "decide_many",
    "decode",
    "default_defect_classes",
    "probe",
]
