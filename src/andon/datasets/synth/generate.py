"""Write the synthetic sample data set: ``OUT/<class>/<surface>_<index>.png`` plus defect masks.

Layout (``load_folder`` reads it as is; hidden entries are skipped)::

    OUT/ok/brushed_00003.png            good parts
    OUT/scratch/cast_00000.png          one class per defect type
    OUT/.masks/scratch/cast_00000.png   255 where the defect is (defect images only)
    OUT/.synth.json                     the settings that made it

The same settings give byte-identical files: image ``i`` draws from its own generator seeded by
``(seed, i)``, whatever the order threads finish in. The folder appears complete or not at all (written
beside OUT, then renamed).
"""

from __future__ import annotations

import json
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path

import cv2
import numpy as np

from andon import __version__
from andon.datasets.dataset import Dataset
from andon.datasets.folder import load_folder
from andon.datasets.progress import Progress, progress_bar
from andon.datasets.synth.defects import DEFECTS
from andon.datasets.synth.render import parse_size, render_sample
from andon.datasets.synth.surfaces import SURFACES
from andon.errors import ConfigError, DatasetError
from andon.fileio import folder_atomic

OK_CLASS = "ok"
MASKS_DIR = ".masks"
FORMATS = ("png", "jpg")


@dataclass(frozen=True)
class SynthConfig:
    """What to generate. ``size`` is ``H`` or ``(H, W)``; ``ok_fraction`` of ``count`` are good parts and the
    rest are spread evenly over ``defects``; surfaces are spread evenly over every class."""

    count: int = 600
    size: tuple[int, int] = (128, 128)
    defects: tuple[str, ...] = DEFECTS
    surfaces: tuple[str, ...] = SURFACES
    ok_fraction: float = 0.5
    seed: int = 0
    image_format: str = "png"
    jpeg_quality: int = field(default=92, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "size", parse_size(self.size))
        object.__setattr__(self, "defects", _names(self.defects, DEFECTS, "defect"))
        object.__setattr__(self, "surfaces", _names(self.surfaces, SURFACES, "surface"))
        if isinstance(self.count, bool) or not isinstance(self.count, int) or not 1 <= self.count <= 1_000_000:
            raise ConfigError(f"count {self.count!r} must be a whole number from 1 to 1,000,000")
        if not isinstance(self.ok_fraction, (int, float)) or not 0.0 <= self.ok_fraction <= 1.0:
            raise ConfigError(f"ok fraction {self.ok_fraction!r} must be between 0 and 1")
        if not self.surfaces:
            raise ConfigError(f"give at least one surface; surfaces are {', '.join(SURFACES)}")
        if not self.defects and self.ok_fraction < 1.0:
            raise ConfigError(f"give at least one defect (defects are {', '.join(DEFECTS)}) or --ok-fraction 1")
        fmt = str(self.image_format).lower().lstrip(".")
        fmt = "jpg" if fmt == "jpeg" else fmt
        if fmt not in FORMATS:
            raise ConfigError(f"image format {self.image_format!r} is not one of {', '.join(FORMATS)}")
        object.__setattr__(self, "image_format", fmt)
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise ConfigError(f"seed {self.seed!r} must be a non-negative integer")

    def class_counts(self) -> dict[str, int]:
        """Images per class: ``ok`` first, then the defects in the order given."""
        n_ok = round(self.count * self.ok_fraction) if self.defects else self.count
        rest = self.count - n_ok
        counts = {OK_CLASS: n_ok}
        for i, name in enumerate(self.defects):
            counts[name] = rest // len(self.defects) + (1 if i < rest % len(self.defects) else 0)
        return {k: v for k, v in counts.items() if v > 0}


def _names(values, allowed: tuple[str, ...], what: str) -> tuple[str, ...]:
    if isinstance(values, str):
        values = [v.strip() for v in values.split(",") if v.strip()]
    values = tuple(dict.fromkeys(values))
    unknown = [v for v in values if v not in allowed]
    if unknown:
        raise ConfigError(f"unknown {what}(s) {', '.join(map(repr, unknown))}; {what}s are {', '.join(allowed)}")
    return values


@dataclass(frozen=True)
class Job:
    index: int
    label: str
    surface: str

    @property
    def defect(self) -> str | None:
        return None if self.label == OK_CLASS else self.label

    def name(self, ext: str) -> str:
        return f"{self.surface}_{self.index:05d}.{ext}"


def plan(config: SynthConfig) -> list[Job]:
    """Which image gets which class and surface: surfaces even within each class, names shuffled by seed."""
    rng = np.random.default_rng([config.seed, 0x5EED])
    pairs = []
    for label, n in config.class_counts().items():
        offset = int(rng.integers(len(config.surfaces)))
        pairs += [(label, config.surfaces[(offset + k) % len(config.surfaces)]) for k in range(n)]
    order = rng.permutation(len(pairs))
    return [Job(index=int(i), label=pairs[k][0], surface=pairs[k][1]) for i, k in enumerate(order)]


def generate(
    out: Path | str,
    config: SynthConfig | None = None,
    *,
    progress: Progress = False,
    overwrite: bool = False,
    **overrides,
) -> Dataset:
    """Generate the data set into ``out`` and return it (loaded like any class folder).

    ``overrides`` are ``SynthConfig`` fields (``generate(out, count=60, size=64)``). An existing non-empty
    ``out`` is refused unless ``overwrite``, which replaces it once the new one is complete.
    """
    unknown = sorted(set(overrides) - set(config_fields()))
    if unknown:
        raise ConfigError(f"unknown synth setting(s) {', '.join(unknown)}; settings are {', '.join(config_fields())}")
    config = replace(config, **overrides) if config is not None else SynthConfig(**overrides)
    out = Path(out).expanduser()
    with folder_atomic(out, overwrite=overwrite, error=DatasetError) as staging:
        _write_all(staging, config, progress)
    return load_folder(out)


def _write_all(folder: Path, config: SynthConfig, progress: Progress) -> None:
    jobs = plan(config)
    for label in config.class_counts():
        (folder / label).mkdir()
        if label != OK_CLASS:
            (folder / MASKS_DIR / label).mkdir(parents=True)
    workers = max(1, min(8, os.cpu_count() or 1))
    with progress_bar(len(jobs), "generating images", progress) as advance, ThreadPoolExecutor(workers) as pool:
        for _ in pool.map(lambda job: _write_one(folder, config, job), jobs, chunksize=8):
            advance(1)
    meta = {"generator": f"andon {__version__}", **asdict(config), "classes": config.class_counts()}
    (folder / ".synth.json").write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")


def _write_one(folder: Path, config: SynthConfig, job: Job) -> None:
    rng = np.random.default_rng([config.seed, job.index])
    image, mask = render_sample(rng, job.surface, job.defect, config.size)
    bgr = cv2.cvtColor(image, cv2.COLOR_RGB2BGR)
    if config.image_format == "jpg":
        ok, data = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, config.jpeg_quality])
    else:
        ok, data = cv2.imencode(".png", bgr, [cv2.IMWRITE_PNG_COMPRESSION, 1])
    if not ok:
        raise DatasetError(f"could not encode image {job.index} as {config.image_format}")
    (folder / job.label / job.name(config.image_format)).write_bytes(data.tobytes())
    if job.defect is not None:
        ok, data = cv2.imencode(".png", mask, [cv2.IMWRITE_PNG_COMPRESSION, 1])
        (folder / MASKS_DIR / job.label / job.name("png")).write_bytes(data.tobytes())


def mask_path(image_path: Path | str) -> Path:
    """Where the mask of a generated defect image is: ``OUT/.masks/<class>/<stem>.png``."""
    image_path = Path(image_path)
    return image_path.parent.parent / MASKS_DIR / image_path.parent.name / f"{image_path.stem}.png"


def config_fields() -> list[str]:
    return [f.name for f in fields(SynthConfig)]
