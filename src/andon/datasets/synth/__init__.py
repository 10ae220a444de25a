"""The project's own sample data set, license-free: industrial surfaces with realistic defects.

``generate(out, count=600, size=128)`` writes ``out/<class>/*.png`` (``ok`` plus one class per defect type)
and a mask per defect image under ``out/.masks``; ``render_sample(rng, surface, defect, size)`` renders one
image (the camera simulator uses it for full-size frames).
"""

from andon.datasets.synth.defects import DEFECTS
from andon.datasets.synth.generate import MASKS_DIR, OK_CLASS, SynthConfig, generate, mask_path, plan
from andon.datasets.synth.render import parse_size, render_sample
from andon.datasets.synth.surfaces import SURFACES

__all__ = [
    "DEFECTS",
    "MASKS_DIR",
    "OK_CLASS",
    "SURFACES",
    "SynthConfig",
    "generate",
    "mask_path",
    "parse_size",
    "plan",
    "render_sample",
]
