"""Example phone photos for the tutorial: a few dozen shots of good and bad parts, sorted into a folder per kind.

Layout (``load_folder`` reads it as is; hidden entries are skipped)::

    OUT/ok/IMG_0003.jpg        good parts
    OUT/scratch/IMG_0001.jpg   a scratch on the part's face
    OUT/dent/IMG_0002.jpg      a dent: a dark pit with a bright rim on one side
    OUT/.photos.json           the settings, the counts and which files are the mistakes (mistake_files)

Each photo shows one round machined part (a flange: centre bore, bolt holes, a raised hub, chamfered edges,
turning marks and the radial highlight of a turned face) lying on one bench for the whole set (a grey rubber
mat by default, or wood, or a green cutting mat), shot by hand from about the same height: position, rotation
and size (68-82 % of the short side), a slight
perspective tilt, uneven light (a gradient towards the lamp, vignetting, a soft hot spot), exposure and
white balance, mild sensor noise, defocus on about a third, JPEG quality 88-92. Good parts differ only in
these nuisances. Defects are drawn on the part's metal, never on the bench or in a hole, and are sized to
stay visible when the whole frame is reduced to 224 pixels: a scratch is 20-40 % of the part's diameter
long and ~3 % wide, a dent 14-20 % long.

The photos are numbered ``IMG_0001.jpg`` up, in shooting order, shuffled across the classes by the seed, as
a camera roll sorted into folders by hand. With ``mistakes`` (the default) the folder has what such a folder
has, for ``andon data check`` to find: an exact copy of one photo (``IMG_0012-copy.jpg`` beside it), one
photo cut to half its bytes (an interrupted copy from the phone), and two bursts: two consecutive, nearly
identical shots of the same part (a hand's tremor of shift and tilt, a slightly different exposure, fresh
sensor noise), one of a good part and one of a defective part.

Photo ``k`` draws from generators seeded by ``(seed, k)``, so the same settings give the same bytes whatever
order the threads finish in; the folder appears complete or not at all (written beside OUT, then renamed).
Per photo, everything outside the part is rendered at no more than 640 pixels on the short side and scaled
up; the part is drawn flat in its own square canvas and warped into the frame by the camera's homography.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from statistics import NormalDist

import cv2
import numpy as np

from andon import __version__
from andon.datasets.progress import Progress, progress_bar
from andon.datasets.synth.defects import Canvas, _draw_strokes, _thin_boost
from andon.datasets.synth.generate import OK_CLASS
from andon.datasets.synth.noise import fbm, grain, grid_noise, smoothstep
from andon.errors import ConfigError, DatasetError
from andon.fileio import folder_atomic

CLASSES: tuple[str, ...] = (OK_CLASS, "scratch", "dent")
BENCHES: tuple[str, ...] = ("wood", "rubber", "mat")
DEFAULT_SIZE = (1600, 1200)  # width, height: a phone held sideways
META_FILE = ".photos.json"
#: the bench and the part's shadow are rendered at most this many pixels on the short side
_WORK_SIDE = 560
#: photos the mistakes need: two bursts of two, a photo to copy and one to cut
_MIN_WITH_MISTAKES = 6
#: rounds of shooting again the scenes that look like another one (one round is almost always enough)
_MAX_RESHOOTS = 20


def parse_wxh(size) -> tuple[int, int]:
    """``"1600x1200"`` or ``(1600, 1200)`` (width x height, as a phone states it) as ``(w, h)``."""
    if isinstance(size, str):
        parts = size.lower().replace(" ", "").split("x")
        try:
            size = tuple(int(p) for p in parts)
        except ValueError:
            raise ConfigError(f"size {size!r} is not WxH in pixels, e.g. 1600x1200") from None
    if not (
        isinstance(size, (tuple, list))
        and len(size) == 2
        and all(isinstance(v, int) and not isinstance(v, bool) for v in size)
    ):
        raise ConfigError(f"size {size!r} is not WxH in pixels, e.g. 1600x1200")
    w, h = size
    if not (64 <= w <= 8192 and 64 <= h <= 8192):
        raise ConfigError(f"size {w}x{h} is outside 64-8192 pixels per side")
    return int(w), int(h)


@dataclass(frozen=True)
class PhotosConfig:
    """What to generate: ``count`` photos of ``size`` (width, height); ``ok_fraction`` of them good parts, the
    rest split between scratch and dent; ``mistakes`` adds a copy, a truncated file and two bursts."""

    count: int = 120
    size: tuple[int, int] = DEFAULT_SIZE
    seed: int = 0
    ok_fraction: float = 0.5
    mistakes: bool = True
    bench: str = "rubber"

    def __post_init__(self) -> None:
        object.__setattr__(self, "size", parse_wxh(self.size))
        if isinstance(self.count, bool) or not isinstance(self.count, int) or not 1 <= self.count <= 9999:
            raise ConfigError(f"count {self.count!r} must be a whole number from 1 to 9,999 (IMG_0001-IMG_9999)")
        if self.mistakes and self.count < _MIN_WITH_MISTAKES:
            raise ConfigError(
                f"count {self.count} is too few for the mistakes (two bursts of two, a copy, a truncated file): "
                f"give at least {_MIN_WITH_MISTAKES}, or --no-mistakes"
            )
        if not isinstance(self.ok_fraction, (int, float)) or not 0.0 <= self.ok_fraction <= 1.0:
            raise ConfigError(f"ok fraction {self.ok_fraction!r} must be between 0 and 1")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise ConfigError(f"seed {self.seed!r} must be a non-negative integer")
        object.__setattr__(self, "mistakes", bool(self.mistakes))
        if self.bench not in BENCHES:
            raise ConfigError(f"bench {self.bench!r} is not one of {', '.join(BENCHES)}")

    def class_counts(self) -> dict[str, int]:
        """Photos per class (bursts' second shots included, the copy not): ok, scratch, dent; empty ones left out."""
        n_ok = round(self.count * self.ok_fraction)
        rest = self.count - n_ok
        counts = {OK_CLASS: n_ok, "scratch": rest - rest // 2, "dent": rest // 2}
        return {k: v for k, v in counts.items() if v > 0}


@dataclass(frozen=True)
class Shot:
    """One photo: ``IMG_<number>.jpg`` in folder ``label``, rendered from scene ``scene``; a burst's second
    shot (``shot=1``) shares its scene with the photo numbered just before it."""

    number: int
    label: str
    scene: int
    shot: int = 0

    @property
    def name(self) -> str:
        return f"IMG_{self.number:04d}.jpg"

    @property
    def path(self) -> str:
        """Relative to OUT: ``<label>/IMG_<number>.jpg``."""
        return f"{self.label}/{self.name}"


@dataclass(frozen=True)
class Mistakes:
    """Which files are the mistakes, as paths relative to OUT (all empty without mistakes)."""

    duplicate: tuple[str, str] | None = None  # (original, copy)
    truncated: str | None = None
    bursts: tuple[tuple[str, str], ...] = ()

    @property
    def present(self) -> bool:
        return bool(self.duplicate or self.truncated or self.bursts)


@dataclass(frozen=True)
class PhotoSet:
    """What ``generate_photos`` wrote: the folder, photos per class, and the mistakes in it."""

    root: Path
    counts: dict[str, int]
    mistakes: Mistakes = field(default_factory=Mistakes)

    @property
    def n_photos(self) -> int:
        return sum(self.counts.values())

    @property
    def n_files(self) -> int:
        return self.n_photos + (1 if self.mistakes.duplicate else 0)


def plan(config: PhotosConfig) -> tuple[list[Shot], Mistakes]:
    """Which photo shows what, in shooting order, and which are the mistakes."""
    rng = np.random.default_rng([config.seed, 0x9407])
    counts = dict(config.class_counts())
    bursts: list[str] = []
    if config.mistakes:  # one burst of a good part and one of a defective part, where the counts allow
        for want_ok in (True, False):
            options = [c for c, n in counts.items() if n >= 2 and (c == OK_CLASS) == want_ok]
            options = options or [c for c, n in counts.items() if n >= 2]
            label = options[int(rng.integers(len(options)))]
            counts[label] -= 2
            bursts.append(label)
    scenes = [(label, 1) for label, n in counts.items() for _ in range(n)] + [(label, 2) for label in bursts]
    order = rng.permutation(len(scenes))
    shots: list[Shot] = []
    for scene, k in enumerate(order):
        label, n = scenes[k]
        shots += [Shot(len(shots) + 1 + i, label, scene, i) for i in range(n)]
    if not config.mistakes:
        return shots, Mistakes()
    pairs = tuple((a.path, b.path) for a, b in zip(shots, shots[1:]) if b.shot == 1)
    singles = [s for s in shots if s.shot == 0 and s.path not in {p for pair in pairs for p in pair}]
    copied, cut = (singles[int(i)] for i in rng.choice(len(singles), 2, replace=False))
    copy = f"{copied.label}/{Path(copied.name).stem}-copy.jpg"
    return shots, Mistakes(duplicate=(copied.path, copy), truncated=cut.path, bursts=pairs)


def generate_photos(
    out: Path | str,
    config: PhotosConfig | None = None,
    *,
    progress: Progress = False,
    overwrite: bool = False,
    **overrides,
) -> PhotoSet:
    """Write the photos into ``out`` and say what was written.

    ``overrides`` are ``PhotosConfig`` fields (``generate_photos(out, count=12, size=(320, 240))``). An
    existing non-empty ``out`` is refused unless ``overwrite``, which replaces it once the new one is complete.
    """
    names = [f.name for f in fields(PhotosConfig)]
    unknown = sorted(set(overrides) - set(names))
    if unknown:
        raise ConfigError(f"unknown photos setting(s) {', '.join(unknown)}; settings are {', '.join(names)}")
    config = replace(config, **overrides) if config is not None else PhotosConfig(**overrides)
    out = Path(out).expanduser()
    shots, mistakes = plan(config)
    with folder_atomic(out, overwrite=overwrite, error=DatasetError) as staging:
        _write_all(staging, config, shots, mistakes, progress)
    return PhotoSet(root=out, counts=config.class_counts(), mistakes=mistakes)


def _write_all(folder: Path, config: PhotosConfig, shots: list[Shot], mistakes: Mistakes, progress: Progress) -> None:
    for label in config.class_counts():
        (folder / label).mkdir()
    attempts = _shoot(config, shots, progress)
    for shot in shots:
        data = attempts[shot.scene][1][shot.shot]
        if shot.path == mistakes.truncated:  # an interrupted copy from the phone: the first half arrived
            data = data[: len(data) // 2]
        (folder / shot.path).write_bytes(data)
    if mistakes.duplicate:
        original, copy = mistakes.duplicate
        shutil.copyfile(folder / original, folder / copy)
    meta = {
        "generator": f"andon {__version__}",
        **asdict(config),
        "classes": config.class_counts(),
        "mistake_files": asdict(mistakes),
        "reshot_scenes": {str(scene): attempt for scene, (attempt, _) in sorted(attempts.items()) if attempt},
    }
    (folder / META_FILE).write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")


def _shoot(config: PhotosConfig, shots: list[Shot], progress: Progress) -> dict[int, tuple[int, list[bytes]]]:
    """Render every scene: ``{scene: (attempt, [JPEG bytes per shot])}``.

    Scenes are checked the way ``andon data check`` checks them (the same decoder, hashes and thresholds):
    two different scenes that happen to look alike, or a burst whose two shots do not, are shot again with
    the next attempt's seed, so the near-duplicates the check reports are exactly the bursts. Deterministic:
    conflicts are resolved in scene order.
    """
    from andon.datasets.check import DEFAULT_NEAR_DUPLICATE_DISTANCE, confirmed_pairs

    by_scene: dict[int, list[Shot]] = {}
    for shot in shots:
        by_scene.setdefault(shot.scene, []).append(shot)
    attempts: dict[int, tuple[int, list[bytes]]] = {}
    workers = max(1, min(8, os.cpu_count() or 1))

    def take(job: tuple[int, int]) -> tuple[int, int, list[bytes]]:
        scene, attempt = job
        return (
            scene,
            attempt,
            [encode_photo(config.seed, s, config.size, attempt=attempt, bench=config.bench) for s in by_scene[scene]],
        )

    todo = [(scene, 0) for scene in sorted(by_scene)]
    with progress_bar(len(shots), "taking photos", progress) as advance, ThreadPoolExecutor(workers) as pool:
        for _ in range(_MAX_RESHOOTS):
            for scene, attempt, data in pool.map(take, todo):
                if scene not in attempts:
                    advance(len(data))
                attempts[scene] = (attempt, data)
            order = [(scene, i) for scene in sorted(attempts) for i in range(len(attempts[scene][1]))]
            infos = list(pool.map(lambda key: _as_checked(attempts[key[0]][1][key[1]]), order))
            found = {(order[a], order[b]) for a, b, _ in confirmed_pairs(infos, DEFAULT_NEAR_DUPLICATE_DISTANCE)}
            again = {max(x[0], y[0]) for x, y in found if x[0] != y[0]}  # look-alikes: shoot the later again
            again |= {s for s, (_, data) in attempts.items() if len(data) == 2 and ((s, 0), (s, 1)) not in found}
            if not again:
                break
            todo = [(scene, attempts[scene][0] + 1) for scene in sorted(again)]
    return attempts


def _as_checked(data: bytes):
    """What ``andon data check`` sees of a photo: its digest and hashes, from the same decoder."""
    from andon.datasets.check import ImageInfo
    from andon.datasets.phash import detail_hash, phash
    from andon.inspect.decoding import decode

    pixels = decode(data, target_hw=(64, 64), gray=True)
    return ImageInfo(hashlib.sha256(data).hexdigest(), phash=phash(pixels), detail=detail_hash(pixels))


def encode_photo(seed: int, shot: Shot, size=DEFAULT_SIZE, *, attempt: int = 0, bench: str = "rubber") -> bytes:
    """The JPEG bytes of one photo (quality 88-92, fixed per scene: a burst shares it); ``attempt`` > 0
    shoots the scene again (another part, pose and light)."""
    scene_seed = [seed, shot.scene] if attempt == 0 else [seed, shot.scene, attempt]
    rgb, _ = render_photo(scene_seed, shot.label, size, shot=shot.shot, bench=bench)
    quality = int(np.random.default_rng([*scene_seed, 0x4A]).integers(88, 93))
    ok, data = cv2.imencode(".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise DatasetError(f"could not encode {shot.name} as JPEG")
    return data.tobytes()


# --- one photo ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Part:
    """A flange in its own canvas: radii as fractions of the outer radius ``radius`` (pixels)."""

    radius: float
    bore: float
    hub: float
    pitch: float
    hole: float
    holes: int
    first_hole: float  # angle of the first bolt hole, radians

    def hole_centres(self) -> np.ndarray:
        a = self.first_hole + 2 * math.pi * np.arange(self.holes) / self.holes
        return self.pitch * self.radius * np.stack([np.cos(a), np.sin(a)], axis=1)


def render_photo(
    seed, label: str, size=DEFAULT_SIZE, *, shot: int = 0, bench: str = "rubber"
) -> tuple[np.ndarray, np.ndarray]:
    """Render one photo: ``(uint8 HxWx3 RGB, uint8 HxW mask)``, the mask 255 on the defect, all 0 for ok.

    ``seed`` (an int or a sequence of ints) fixes the scene: the same seed renders the same part, pose, bench,
    light and camera with any label, so an ok photo and its defective twin differ only on the defect.
    ``shot=1, 2, ...`` are burst shots of the same scene: shifted and tilted by a hand's tremor, exposed a
    little differently, with their own sensor noise.
    """
    if label not in CLASSES:
        raise ConfigError(f"unknown class {label!r}; classes are {', '.join(CLASSES)}")
    if bench not in BENCHES:
        raise ConfigError(f"bench {bench!r} is not one of {', '.join(BENCHES)}")
    w, h = parse_wxh(size)
    s = min(w, h)
    streams = np.random.default_rng(seed).spawn(7)
    bench_rng, part_rng, pose_rng, light_rng, camera_rng, defect_rng, burst_rng = streams
    tremor = burst_rng.spawn(shot)[-1] if shot else None

    # pose: where the part lies (plane coordinates, frame pixels) and how the phone looks at the bench
    diameter = s * pose_rng.uniform(0.68, 0.82)  # held at about the same distance, as the tutorial asks
    radius = diameter / 2
    margin = 0.03 * s + 1.1 * radius
    cx = pose_rng.uniform(min(margin, w / 2), max(w - margin, w / 2))
    cy = pose_rng.uniform(min(margin, h / 2), max(h - margin, h / 2))
    theta = pose_rng.uniform(0, 2 * math.pi)
    tilt = pose_rng.uniform(-0.12, 0.12, 2)
    light_dir = pose_rng.uniform(0, 2 * math.pi)  # towards the lamp, in plane coordinates
    homography = _camera(w, h, tilt, tremor)

    part = _flange(part_rng, radius)
    value, alpha = _shade(part_rng, part, light_dir - theta)
    mask = np.zeros(value.shape, np.float32)
    if label != OK_CLASS:
        _DEFECTS[label](defect_rng, part, value, alpha, mask, light_dir - theta)

    # canvas -> plane: rotate by theta about the canvas centre and put that centre at (cx, cy)
    c0 = (value.shape[0] - 1) / 2.0
    ct, st = math.cos(theta), math.sin(theta)
    to_plane = np.array([[ct, -st, cx - (ct - st) * c0], [st, ct, cy - (st + ct) * c0], [0, 0, 1]])

    # the light over the frame (towards the lamp, vignetting, a hot spot), exposure and white balance
    field, colour = _light(light_rng, camera_rng, tremor, w, h, light_dir)
    bench = _bench_and_shadow(bench_rng, light_rng, w, h, homography, to_plane, alpha, light_dir, diameter, bench)
    bench *= cv2.resize(field, bench.shape[1::-1], interpolation=cv2.INTER_CUBIC)[:, :, None] * colour
    noise_rng = tremor if tremor is not None else camera_rng
    luma_sigma, chroma_sigma = camera_rng.uniform(1.2, 3.0), camera_rng.uniform(0.6, 1.5)
    bench += _normal(noise_rng, bench.shape, chroma_sigma)  # colour noise: coarser than a pixel
    rgb = bench if bench.shape[:2] == (h, w) else cv2.resize(bench, (w, h), interpolation=cv2.INTER_LINEAR)
    box, warped = _warp_part(np.dstack([value * alpha, alpha, mask]), homography @ to_plane, w, h)
    frame_mask = np.zeros((h, w), np.uint8)
    if box is not None:
        y0, y1, x0, x1 = box
        gain = _resized_window(field, w, h, box)
        region = rgb[y0:y1, x0:x1]
        region *= 1.0 - warped[:, :, 1:2]
        region += (warped[:, :, 0] * gain)[:, :, None] * (colour * _metal_tint(part_rng))
        if label != OK_CLASS:
            frame_mask[y0:y1, x0:x1] = (warped[:, :, 2] > 0.5).astype(np.uint8) * 255

    if camera_rng.random() < 0.35:  # the phone focused on the bench behind, or the hand moved
        cv2.GaussianBlur(rgb, (0, 0), s / 1200 * camera_rng.uniform(1.2, 2.6), dst=rgb)
    rgb += _normal(noise_rng, (h, w), luma_sigma)[:, :, None]  # luminance grain, per pixel
    np.clip(rgb, 0, 255, out=rgb)
    return rgb.astype(np.uint8), frame_mask


def _camera(w: int, h: int, tilt: np.ndarray, tremor: np.random.Generator | None) -> np.ndarray:
    """Plane -> frame: a slight perspective tilt about the frame's centre; a burst shot adds a tremor."""
    s = min(w, h)
    centre = np.array([[s, 0, w / 2], [0, s, h / 2], [0, 0, 1]], dtype=np.float64)
    tilt_m = np.array([[1, 0, 0], [0, 1, 0], [tilt[0], tilt[1], 1]], dtype=np.float64)
    m = centre @ tilt_m @ np.linalg.inv(centre)
    if tremor is not None:  # a few pixels of shift and a fraction of a degree of roll
        dx, dy = tremor.uniform(0.002, 0.005, 2) * s * tremor.choice([-1, 1], 2)
        roll = math.radians(tremor.uniform(-0.3, 0.3))
        shake = cv2.getRotationMatrix2D((w / 2, h / 2), math.degrees(roll), 1.0)
        shake = np.vstack([shake, [0, 0, 1]])
        shake[0, 2] += dx
        shake[1, 2] += dy
        m = shake @ m
    return m


def _flange(rng: np.random.Generator, radius: float) -> _Part:
    bore = rng.uniform(0.22, 0.34)
    hub = bore + rng.uniform(0.12, 0.2)
    hole = rng.uniform(0.055, 0.085)
    pitch = rng.uniform(hub + hole + 0.07, 0.92 - hole - 0.04)
    holes = int(rng.choice([3, 4, 4, 6, 6, 8]))
    return _Part(radius, bore, hub, pitch, hole, holes, rng.uniform(0, 2 * math.pi))


def _shade(rng: np.random.Generator, part: _Part, light: float) -> tuple[np.ndarray, np.ndarray]:
    """The part's grey value and alpha (bore and bolt holes open) in its own square canvas, lit from ``light``."""
    R = part.radius
    n = int(math.ceil(2 * R)) + 6
    c0 = (n - 1) / 2.0
    axis = np.arange(n, dtype=np.float32) - np.float32(c0)
    u, v = axis[None, :], axis[:, None]
    r = np.sqrt(u * u + v * v)
    inv_r = 1.0 / np.maximum(r, 1.0)
    lx, ly = math.cos(light), math.sin(light)
    facing = (u * lx + v * ly) * inv_r  # cos of the angle between the radial direction and the lamp
    alpha = np.clip(R + 0.5 - r, 0, 1)  # the outer edge, antialiased over a pixel

    level = rng.uniform(120, 180)
    # turning: concentric bands of slightly different sheen and fine grooves, looked up by the radius
    steps = 4  # table entries per pixel of radius
    radii = np.arange((n + 8) * steps, dtype=np.float32) / steps
    bands = cv2.GaussianBlur(rng.standard_normal((1, n + 8)).astype(np.float32), (0, 0), max(1.0, R / 60)).ravel()
    bands /= float(bands.std()) or 1.0
    rings = rng.uniform(0.02, 0.05) * np.repeat(bands, steps)
    rings += rng.uniform(0.01, 0.03) * np.sin(radii * (2 * math.pi / max(2.5, R / 90)))
    value = rings[(r * steps).astype(np.int32)]
    value += 1.0
    # the radial highlight of a turned face: a bright bow-tie through the centre, along the lamp's direction
    band_dir = light + rng.normal(0, 0.25)
    across = (v * math.cos(band_dir) - u * math.sin(band_dir)) * inv_r
    width = rng.uniform(0.15, 0.32)
    value += rng.uniform(0.15, 0.45) * np.exp(-(across * across) / (2 * width * width)) * (0.4 + (0.6 / R) * r)
    # a soft hot spot (the lamp's reflection) somewhere on the face: separable, an outer product
    sx, sy = rng.uniform(-0.5, 0.5, 2) * R
    sigma = rng.uniform(0.2, 0.45) * R
    spot = rng.uniform(0.05, 0.2)
    value += np.outer(spot * np.exp(-((axis - sy) ** 2) / (2 * sigma**2)), np.exp(-((axis - sx) ** 2) / (2 * sigma**2)))
    value *= level
    # bevels: lit on the lamp's side, dark on the other (an outer edge faces out, a bore's edge faces in)
    chamfer = rng.uniform(0.025, 0.04)
    shade = rng.uniform(0.35, 0.6) * level
    edge = (1 - chamfer) * R
    value += shade * facing * np.clip((r - edge) / (chamfer * 0.5 * R), 0, 1)
    # the hub, its step and the bore, inside a box around the centre
    k = int(min(c0, math.ceil((part.hub + 0.03) * R)))
    inner = (slice(int(c0) - k, int(c0) + k + 2),) * 2
    ri, fi, vi = r[inner] / R, facing[inner], value[inner]
    vi *= 1.0 + rng.uniform(-0.08, 0.08) * smoothstep((part.hub - ri) / 0.01)
    vi += 0.7 * shade * fi * np.exp(-(((ri - part.hub) / 0.008) ** 2))
    vi -= shade * fi * smoothstep((part.bore + chamfer - ri) / (chamfer * 0.5))
    alpha[inner] *= np.clip(ri * R - part.bore * R + 0.5, 0, 1)
    # bolt holes, each in its own small box: open, with a chamfer lit on the side away from the lamp
    hole_r = part.hole * R
    reach = hole_r + chamfer * 0.6 * R + 2
    for hx, hy in part.hole_centres():
        x0, x1 = max(0, int(c0 + hx - reach)), min(n, int(c0 + hx + reach) + 2)
        y0, y1 = max(0, int(c0 + hy - reach)), min(n, int(c0 + hy + reach) + 2)
        du = axis[None, x0:x1] - np.float32(hx)
        dv = axis[y0:y1, None] - np.float32(hy)
        dh = np.sqrt(du * du + dv * dv)
        hole_facing = (du * lx + dv * ly) / np.maximum(dh, 1.0)
        bevel = smoothstep((hole_r + chamfer * 0.6 * R - dh) / (chamfer * 0.3 * R))
        value[y0:y1, x0:x1] -= shade * hole_facing * bevel
        alpha[y0:y1, x0:x1] *= np.clip(dh - hole_r + 0.5, 0, 1)
    return value.astype(np.float32, copy=False), alpha.astype(np.float32, copy=False)


def _metal_tint(rng: np.random.Generator) -> np.ndarray:
    base = [(0.99, 1.0, 1.03), (1.0, 1.0, 1.0), (1.02, 1.0, 0.97), (1.05, 1.02, 0.9)]  # steel, alu, ..., zinc
    tint = np.asarray(base[int(rng.choice(4, p=[0.4, 0.35, 0.15, 0.1]))], np.float32)
    return tint * (1.0 + rng.uniform(-0.015, 0.015, 3).astype(np.float32))


def _on_metal(rng: np.random.Generator, part: _Part, reach: float) -> tuple[float, float]:
    """A point of the part's face (canvas coordinates from its centre) at least ``reach`` (x R) from any edge."""
    centres = part.hole_centres() / part.radius
    lo, hi = part.bore + 0.05 + reach, 0.93 - reach
    if lo > hi:  # a large defect on a narrow face: centred on the face, reaching past it a little
        lo = hi = (part.bore + 0.05 + 0.93) / 2
    for _ in range(200):
        rho = math.sqrt(rng.uniform(lo * lo, hi * hi))
        phi = rng.uniform(0, 2 * math.pi)
        p = np.array([rho * math.cos(phi), rho * math.sin(phi)])
        if np.min(np.hypot(*(centres - p).T)) > part.hole + 0.05 + reach:
            return p[0] * part.radius, p[1] * part.radius
    return 0.0, -(part.hub + 1.0) / 2 * part.radius  # between the hub and the edge, where no hole is


def _scratch(rng, part: _Part, value, alpha, mask, light: float) -> None:
    """A thin, gently curved line 20-40 % of the diameter long: bright where it catches the light, else dark."""
    D = 2 * part.radius
    c0 = (value.shape[0] - 1) / 2.0
    length = D * rng.uniform(0.20, 0.40)
    for _ in range(50):  # most of its length on metal: a scratch across a hole is mostly hidden
        cx, cy = _on_metal(rng, part, 0.05)
        phi = rng.uniform(0, math.pi)
        t = np.linspace(0.0, 1.0, 24)
        direction, normal = np.array([math.cos(phi), math.sin(phi)]), np.array([-math.sin(phi), math.cos(phi)])
        bend = length * rng.uniform(-0.15, 0.15) * (1 - (2 * t - 1) ** 2)
        points = np.array([cx, cy]) + np.outer(t - 0.5, direction) * length + np.outer(bend, normal)
        points += rng.normal(0, D * 0.001, points.shape)
        ix = np.clip(np.round(points + c0).astype(int), 0, value.shape[0] - 1)
        if alpha[ix[:, 1], ix[:, 0]].mean() > 0.85:
            break
    fade = np.sin(np.pi * (t[:-1] + t[1:]) / 2) ** 0.5 * rng.uniform(0.7, 1.0, len(t) - 1)
    thickness = max(1, int(round(D * rng.uniform(0.025, 0.035))))
    canvas = Canvas(value)
    layer, box = _draw_strokes(canvas, [(points + c0, fade)], thickness)
    if layer is None:
        return
    layer *= alpha[box]
    local = float(np.median(value[box][layer > 0.3])) if (layer > 0.3).any() else 150.0
    dark = local > 150  # the way it shows most: dark on a bright face, bright on a dull one
    contrast = rng.uniform(80, 120) * _thin_boost(thickness)
    value[box] += (-1.0 if dark else 1.0) * contrast * layer
    # the mask covers every pixel the scratch changes by more than 2 grey levels, its soft edge included
    mask[box] = np.maximum(mask[box], (layer * contrast > 2.0).astype(np.float32))


def _dent(rng, part: _Part, value, alpha, mask, light: float) -> None:
    """An elliptical pit 14-20 % of the diameter long: dark inside, a bright rim on the lamp's side."""
    D = 2 * part.radius
    c0 = (value.shape[0] - 1) / 2.0
    a = D * rng.uniform(0.07, 0.10)
    b = a * rng.uniform(0.6, 0.9)
    cx, cy = _on_metal(rng, part, 1.6 * a / part.radius)
    cx, cy = cx + c0, cy + c0
    pad = 1.6 * a + 2
    y0, y1 = max(0, int(cy - pad)), min(value.shape[0], int(cy + pad) + 2)
    x0, x1 = max(0, int(cx - pad)), min(value.shape[1], int(cx + pad) + 2)
    box = (slice(y0, y1), slice(x0, x1))
    yy, xx = np.mgrid[y0:y1, x0:x1].astype(np.float32)
    dx, dy = xx - cx, yy - cy
    phi = rng.uniform(0, math.pi)
    p = (dx * math.cos(phi) + dy * math.sin(phi)) / a
    q = (-dx * math.sin(phi) + dy * math.cos(phi)) / b
    rho = np.sqrt(p * p + q * q)
    pit = smoothstep((1.0 - rho) / 0.4)
    side = np.clip((dx * math.cos(light) + dy * math.sin(light)) / np.maximum(np.hypot(dx, dy), 1.0), 0, None)
    rim = np.exp(-(((rho - 1.12) / 0.16) ** 2)) * side**0.7
    on = alpha[box]
    local = value[box]
    before = local.copy()
    local *= 1.0 - rng.uniform(0.55, 0.8) * pit * on
    local += rng.uniform(80, 120) * rim * on
    # the mask covers every pixel the dent changes by more than 2 grey levels, its soft rim included
    mask[box] = np.maximum(mask[box], (np.abs(local - before) > 2.0).astype(np.float32))


_DEFECTS = {"scratch": _scratch, "dent": _dent}


def _warp_part(canvas: np.ndarray, to_frame: np.ndarray, w: int, h: int):
    """Warp the part's canvas into its box in the frame: ``((y0, y1, x0, x1), pixels)`` or ``(None, None)``."""
    n = canvas.shape[0]
    corners = np.array([[0, 0, 1], [n, 0, 1], [n, n, 1], [0, n, 1]], dtype=np.float64).T
    projected = to_frame @ corners
    xs, ys = projected[0] / projected[2], projected[1] / projected[2]
    x0, x1 = max(0, int(math.floor(xs.min()))), min(w, int(math.ceil(xs.max())) + 1)
    y0, y1 = max(0, int(math.floor(ys.min()))), min(h, int(math.ceil(ys.max())) + 1)
    if x0 >= x1 or y0 >= y1:
        return None, None
    shift = np.array([[1, 0, -x0], [0, 1, -y0], [0, 0, 1]], dtype=np.float64)
    warped = cv2.warpPerspective(
        canvas, shift @ to_frame, (x1 - x0, y1 - y0), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT
    )
    return (y0, y1, x0, x1), warped


def _bench_and_shadow(
    bench_rng, light_rng, w: int, h: int, homography, to_plane, alpha, light_dir: float, diameter: float, kind: str
) -> np.ndarray:
    """The bench with the part's shadow, as the camera sees it, at <= ``_WORK_SIDE`` pixels (float32 RGB)."""
    f = min(1.0, _WORK_SIDE / min(w, h))
    wl, hl = max(16, round(w * f)), max(16, round(h * f))
    pad = max(4, round(0.08 * min(wl, hl)))  # the bench reaches past the frame: the tilt shows no mirrored edge
    scale = np.array([[wl / w, 0, pad], [0, hl / h, pad], [0, 0, 1]])
    bench = _BENCH_RENDERERS[kind](bench_rng, hl + 2 * pad, wl + 2 * pad)
    # the part's shadow on the bench, away from the lamp: a soft one and a tight contact shadow
    shade = np.zeros(bench.shape[:2], np.float32)
    for offset, blur, depth in (
        (light_rng.uniform(0.015, 0.04), light_rng.uniform(0.01, 0.03), light_rng.uniform(0.25, 0.5)),
        (0.004, 0.004, light_rng.uniform(0.2, 0.35)),
    ):
        move = np.eye(3)
        move[0, 2] = -math.cos(light_dir) * offset * diameter
        move[1, 2] = -math.sin(light_dir) * offset * diameter
        m = (scale @ move @ to_plane)[:2]
        cast = cv2.warpAffine(alpha, m, shade.shape[::-1], flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT)
        cv2.GaussianBlur(cast, (0, 0), max(0.6, blur * diameter * f), dst=cast)
        shade += depth * cast
    bench *= (1.0 - np.minimum(shade, 0.8))[:, :, None]
    to_frame = np.diag([wl / w, hl / h, 1.0]) @ homography @ np.linalg.inv(scale)
    return cv2.warpPerspective(bench, to_frame, (wl, hl), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)


def _light(light_rng, camera_rng, tremor, w: int, h: int, light_dir: float) -> tuple[np.ndarray, np.ndarray]:
    """Uneven light as a coarse grid over the frame (brighter towards the lamp, vignetting, a soft hot spot),
    and the RGB gain of exposure and white balance. A burst shot is exposed a few per cent differently."""
    gh, gw = max(2, round(24 * h / max(w, h))), max(2, round(24 * w / max(w, h)))
    gx = (np.arange(gw, dtype=np.float32)[None, :] / (gw - 1) - 0.5) * (w / max(w, h))
    gy = (np.arange(gh, dtype=np.float32)[:, None] / (gh - 1) - 0.5) * (h / max(w, h))
    phi = light_dir + light_rng.normal(0, 0.4)
    field = 1.0 + light_rng.uniform(0.3, 0.9) * (gx * math.cos(phi) + gy * math.sin(phi))
    field -= light_rng.uniform(0.2, 0.8) * (gx * gx + gy * gy)
    hx, hy = light_rng.uniform(-0.35, 0.35, 2)
    spread = light_rng.uniform(0.15, 0.35)
    field += light_rng.uniform(0.08, 0.25) * np.exp(-((gx - hx) ** 2 + (gy - hy) ** 2) / (2 * spread * spread))
    exposure = camera_rng.uniform(0.85, 1.1)
    if tremor is not None:
        exposure *= 1.0 + tremor.choice([-1, 1]) * tremor.uniform(0.02, 0.05)
    warm, green = camera_rng.uniform(-0.035, 0.035), camera_rng.uniform(-0.01, 0.01)
    balance = np.array([1.0 + warm, 1.0 + green, 1.0 - warm])  # the phone's white balance
    return field.astype(np.float32), (exposure * balance).astype(np.float32)


#: unit normal values at the 256 quantiles: noise from random bytes costs a fifth of standard_normal's
_NORMAL_TABLE = np.array([NormalDist().inv_cdf((i + 0.5) / 256) for i in range(256)], np.float32)
_NORMAL_TABLE /= float(_NORMAL_TABLE.std())


def _normal(rng: np.random.Generator, shape: tuple[int, ...], sigma: float) -> np.ndarray:
    """Gaussian noise of std ``sigma`` quantised to 256 levels (float32)."""
    index = np.frombuffer(rng.bytes(math.prod(shape)), np.uint8).reshape(shape)
    return (_NORMAL_TABLE * np.float32(sigma))[index]


def _resized_window(field: np.ndarray, w: int, h: int, box: tuple[int, int, int, int]) -> np.ndarray:
    """``cv2.resize(field, (w, h), INTER_CUBIC)[y0:y1, x0:x1]`` without resizing the rest of the frame."""
    y0, y1, x0, x1 = box
    sx, sy = field.shape[1] / w, field.shape[0] / h
    m = np.array([[sx, 0, (x0 + 0.5) * sx - 0.5], [0, sy, (y0 + 0.5) * sy - 0.5]], np.float64)
    flags = cv2.INTER_CUBIC | cv2.WARP_INVERSE_MAP
    return cv2.warpAffine(field, m, (x1 - x0, y1 - y0), flags=flags, borderMode=cv2.BORDER_REPLICATE)


# --- benches -----------------------------------------------------------------------------------------------


def _along(rng: np.random.Generator, h: int, w: int, angle: float, cell_along: float, cell_across: float):
    """Unit noise that varies every ``cell_along`` pixels along ``angle`` and every ``cell_across`` across it."""
    d = math.hypot(h, w)
    rows, cols = int(math.ceil(d / cell_across)) + 3, int(math.ceil(d / cell_along)) + 3
    grid = rng.standard_normal((rows, cols)).astype(np.float32)
    ca, sa = math.cos(angle), math.sin(angle)
    cx, cy = (w - 1) / 2, (h - 1) / 2
    m = np.array(
        [
            [ca / cell_along, sa / cell_along, (cols - 1) / 2 - (ca * cx + sa * cy) / cell_along],
            [-sa / cell_across, ca / cell_across, (rows - 1) / 2 - (-sa * cx + ca * cy) / cell_across],
        ],
        np.float32,
    )
    flags = (cv2.INTER_LINEAR if cell_across <= 2 else cv2.INTER_CUBIC) | cv2.WARP_INVERSE_MAP
    return cv2.warpAffine(grid, m, (w, h), flags=flags, borderMode=cv2.BORDER_REFLECT)


def _wood(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """Planks of a workbench: growth lines meandering along the boards, fibres, a seam or two."""
    s = min(h, w)
    period = s * rng.uniform(0.025, 0.07)
    alpha = math.radians(float(rng.choice([0.0, 90.0]) + rng.normal(0, 6)))  # the boards' direction
    ca, sa = math.cos(alpha), math.sin(alpha)
    x, y = np.arange(w, dtype=np.float32)[None, :], np.arange(h, dtype=np.float32)[:, None]
    across = -x * sa + y * ca  # distance across the boards
    # growth lines: long gentle meanders along the boards, changing over a few lines across them
    phase = _along(rng, h, w, alpha, s * rng.uniform(0.5, 1.2), period * rng.uniform(2, 5))
    phase *= np.float32(period * rng.uniform(0.4, 0.9))
    phase += across
    phase *= np.float32(math.pi / period)
    late = np.sin(phase, out=phase)
    late *= late
    late *= late
    late *= late  # sin^8: thin dark latewood lines
    tex = rng.uniform(-0.35, -0.2) * late
    tex += rng.uniform(0.03, 0.06) * _along(rng, h, w, alpha, s * rng.uniform(0.1, 0.3), 1.0)  # fibres
    tex += rng.uniform(0.03, 0.07) * grid_noise(rng, h, w, rng.uniform(2, 4))
    tex += 1.0
    plank = s * rng.uniform(0.35, 0.9)
    seam = np.abs(((across + rng.uniform(0, plank)) % plank) - plank / 2) - (plank / 2 - max(1.0, s / 500))
    tex *= 1.0 - 0.45 * np.clip(seam + 1, 0, 1)
    palette = [(176, 130, 88), (150, 104, 66), (198, 162, 118), (122, 84, 54)]  # oak, beech, birch, walnut
    base = np.asarray(palette[int(rng.integers(len(palette)))], np.float32) * rng.uniform(0.9, 1.1)
    base *= rng.uniform(0.98, 1.02, 3)
    return tex[:, :, None] * base.astype(np.float32)


def _rubber(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """A grey rubber bench mat: mottled, fine grained, sometimes with a pattern of small anti-slip studs."""
    s = min(h, w)
    grey = rng.uniform(3, 6) * fbm(rng, h, w, cells=rng.uniform(4, 8), octaves=3)
    grey += rng.uniform(2.5, 5) * grain(rng, h, w)
    grey += rng.uniform(60, 100)
    if rng.random() < 0.5:  # one stud, lit from one side, repeated over the mat (a wrapped tile)
        pitch = s * rng.uniform(0.03, 0.05)
        n = 32
        a = np.cos(np.arange(n, dtype=np.float32) * np.float32(2 * math.pi / n))
        studs = smoothstep((np.outer(a, a) - 0.5) / 0.4)
        tile = rng.uniform(5, 10) * (studs - np.roll(studs, 4, axis=0))
        phi = math.radians(rng.uniform(-10, 10))
        k = n / pitch
        m = np.array([[k * math.cos(phi), k * math.sin(phi), 0], [-k * math.sin(phi), k * math.cos(phi), 0]])
        grey += cv2.warpAffine(
            tile.astype(np.float32),
            m,
            (w, h),
            flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
            borderMode=cv2.BORDER_WRAP,
        )
    tint = np.asarray((1.0, 1.0, 1.03), np.float32) * rng.uniform(0.98, 1.02, 3).astype(np.float32)
    return grey[:, :, None] * tint


def _mat(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """A self-healing cutting mat: green or blue-grey, with a printed grid (every fifth line thicker)."""
    s = min(h, w)
    palette = [(52, 110, 80), (44, 96, 88), (64, 74, 90)]
    base = np.asarray(palette[int(rng.integers(len(palette)))], np.float32) * rng.uniform(0.9, 1.1)
    pitch = s * rng.uniform(0.05, 0.09)
    phi = math.radians(rng.uniform(-12, 12))
    width = max(1, round(s / 500))
    lines = np.zeros((h, w), np.float32)
    centre, reach = np.array([w / 2, h / 2]), math.hypot(w, h)
    for normal in (np.array([math.cos(phi), math.sin(phi)]), np.array([-math.sin(phi), math.cos(phi)])):
        along = np.array([-normal[1], normal[0]])
        offset = rng.uniform(0, 5)
        for i in range(-int(reach / pitch) - 6, int(reach / pitch) + 7):
            middle = centre + normal * (i + offset % 1) * pitch
            p0, p1 = (np.round((middle + k * reach * along) * 16).astype(np.int64) for k in (-1, 1))
            thick = 2 * width if (i + int(offset)) % 5 == 0 else width
            cv2.line(lines, (int(p0[0]), int(p0[1])), (int(p1[0]), int(p1[1])), 1.0, thick, cv2.LINE_AA, 4)
    tex = 1.0 + 0.04 * fbm(rng, h, w, cells=rng.uniform(3, 6), octaves=3) + 0.03 * grain(rng, h, w)
    rgb = tex[:, :, None] * base.astype(np.float32)
    rgb += lines[:, :, None] * (np.asarray((70, 80, 72), np.float32) * rng.uniform(0.6, 1.0))
    return rgb.astype(np.float32)


_BENCH_RENDERERS = {"wood": _wood, "rubber": _rubber, "mat": _mat}
