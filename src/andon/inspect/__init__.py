"""Frame to verdict, without torch: decoding, preprocessing, the model card, decisions and the inspector."""

from andon.inspect.card import AnomalySpec, ModelCard, PreprocessSpec, ThresholdBand, Thresholds, default_defect_classes
from andon.inspect.decision import DecisionPolicy, Verdicts, defect_score
from andon.inspect.decoding import ImageHeader, decode, probe
from andon.inspect.inspector import Inspector
from andon.inspect.outputs import OUTPUTS, ModelOutputs, OutputSpec
from andon.inspect.preprocess import Preprocessor
from andon.inspect.result import InspectionResult

__all__ = [
    "OUTPUTS",
    "AnomalySpec",
    "DecisionPolicy",
    "ImageHeader",
    "InspectionResult",
    "Inspector",
    "ModelCard",
    "ModelOutputs",
    "OutputSpec",
    "PreprocessSpec",
    "Preprocessor",
    "ThresholdBand",
    "Thresholds",
    "Verdicts",
    "decode",
    "default_defect_classes",
    "defect_score",
    "probe",
]
