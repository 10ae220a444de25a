"""Labelled image data sets, without torch: class folders and CSV manifests, class remapping, stable
splits, data checks, and the synthetic sample data set (``andon.datasets.synth``)."""

from andon.datasets.check import check_dataset
from andon.datasets.dataset import IMAGE_EXTENSIONS, SPLITS, Dataset, Sample
from andon.datasets.folder import load_folder
from andon.datasets.manifest import load_dataset, load_manifest, write_manifest
from andon.datasets.remap import parse_remap
from andon.datasets.report import CheckReport
from andon.datasets.splits import assign_splits

__all__ = [
    "IMAGE_EXTENSIONS",
    "SPLITS",
    "CheckReport",
    "Dataset",
    "Sample",
    "assign_splits",
    "check_dataset",
    "load_dataset",
    "load_folder",
    "load_manifest",
    "parse_remap",
    "write_manifest",
]
