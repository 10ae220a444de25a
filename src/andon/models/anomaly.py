"""A good-only anomaly score (PatchCore-style): distance of each image patch to a memory bank of good patches.

PatchCore (Roth et al., "Towards Total Recall in Industrial Anomaly Detection", CVPR 2022) needs no defect
images: a frozen ImageNet trunk turns each good training image into locally-aware patch embeddings, a greedy
k-center coreset keeps a small bank of them that still covers all, and a new image's patch is as anomalous
as it is far from its nearest bank entry. Here it is a plain ``nn.Module`` that exports to ONNX in one
graph with the classifier:

- ``PatchFeatures``: the frozen trunk, cut after the deepest layer used. Its input is the classifier's input
  (normalised with the model card's mean/std) and it re-normalises to the trunk's own normalisation first.
  The features of one or two intermediate blocks are 3x3 average-pooled (stride 1), the coarser upsampled
  bilinearly to the finer's resolution, concatenated and projected to ``dim`` channels by a fixed, seeded
  Gaussian projection (a buffer).
- ``coreset_indices``: greedy k-center (minimax facility location) subsampling of the patch features.
- ``PatchCore``: the bank ``[B, D]`` and ``forward(image) -> (score [N], anomaly_map [N, h, w])``. The raw
  per-patch distance is ``sqrt(clamp(|a|^2 - 2ab + |b|^2, 0))`` minimised over the bank (MatMul +
  ReduceMin in ONNX), optionally blurred by a fixed Gaussian, and mapped into [0, 1) by ``d / (d + scale)``
  where ``scale`` is the median raw image score of good reference images that are not in the bank: a typical
  good part scores about 0.5. The image score is the maximum of the map.
- ``fit_patchcore``: builds a ``PatchCore`` from batches of good images (``build_patchcore`` from features
  already extracted).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from andon.errors import ConfigError, DatasetError

Triple = tuple[float, float, float]
Progress = Callable[[str], None]


def _blocks_of(backbone: nn.Module) -> nn.Sequential:
    """The trunk's sequence of blocks: ``features`` of torchvision-style trunks, else the trunk itself."""
    blocks = getattr(backbone, "features", backbone)
    if not isinstance(blocks, nn.Sequential):
        raise ConfigError(
            f"the trunk {type(backbone).__name__} is not a sequence of blocks; "
            "pass an andon backbone (create_model(...).backbone)"
        )
    return blocks


def gaussian_projection(channels: int, dim: int, seed: int) -> torch.Tensor:
    """A fixed ``[dim, channels]`` Gaussian random projection scaled by 1/sqrt(dim) (distances roughly kept)."""
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(dim, channels, generator=generator) / math.sqrt(dim)


class PatchFeatures(nn.Module):
    """Frozen trunk -> locally-aware patch embeddings ``N x D x h x w`` (PatchCore's feature extractor).

    ``layers`` are indices into the trunk's blocks (``backbone.features`` for mobilenet/efficientnet); the
    finest of them sets the map resolution. ``dim=None`` keeps all concatenated channels.
    """

    def __init__(
        self,
        backbone: nn.Module,
        layers: Sequence[int],
        *,
        card_mean: Triple,
        card_std: Triple,
        trunk_mean: Triple,
        trunk_std: Triple,
        dim: int | None = 128,
        seed: int = 0,
        shared: bool = False,
    ) -> None:
        super().__init__()
        #: the trunk is the classifier's own (fine-tuned) trunk: an inspection graph computes it once for both
        #: (``andon.models.graph``), so the detector adds only the nearest-patch search
        self.shared = bool(shared)
        blocks = _blocks_of(backbone)
        self.layers = tuple(sorted({int(i) for i in layers}))
        if not self.layers or not 1 <= len(self.layers) <= 2:
            raise ConfigError(f"layers {tuple(layers)} must name one or two blocks of the trunk")
        if self.layers[0] < 0 or self.layers[-1] >= len(blocks):
            raise ConfigError(f"layers {tuple(layers)} must be block indices in 0..{len(blocks) - 1}")
        self.blocks = nn.Sequential(*list(blocks)[: self.layers[-1] + 1])
        self.blocks.eval().requires_grad_(False)
        self._set_normalisation(card_mean, card_std, trunk_mean, trunk_std)
        channels = self._channels()
        if dim is not None and dim < 1:
            raise ConfigError(f"dim {dim} must be at least 1 (or None to keep all {channels} channels)")
        self.in_channels = channels
        self.dim = channels if dim is None else int(dim)
        projection = torch.eye(channels) if dim is None else gaussian_projection(channels, self.dim, seed)
        self.register_buffer("projection", projection)

    def _set_normalisation(self, card_mean: Triple, card_std: Triple, trunk_mean: Triple, trunk_std: Triple) -> None:
        # x_trunk = (x * card_std + card_mean - trunk_mean) / trunk_std = x * gain + shift, per channel
        c_mean, c_std = torch.tensor(card_mean), torch.tensor(card_std)
        t_mean, t_std = torch.tensor(trunk_mean), torch.tensor(trunk_std)
        self.register_buffer("gain", (c_std / t_std).view(1, 3, 1, 1))
        self.register_buffer("shift", ((c_mean - t_mean) / t_std).view(1, 3, 1, 1))

    def _channels(self) -> int:
        with torch.no_grad():
            taps = self._taps(torch.zeros(1, 3, 64, 64))
        return sum(t.shape[1] for t in taps)

    def train(self, mode: bool = True) -> PatchFeatures:
        super().train(mode)
        self.blocks.eval()  # frozen: BatchNorm keeps its ImageNet statistics
        return self

    def _taps(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The outputs of the chosen blocks, in order."""
        taps = []
        for i, block in enumerate(self.blocks):
            x = block(x)
            if i in self.layers:
                taps.append(x)
        return taps

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.from_taps(self._taps(image * self.gain + self.shift))

    def from_taps(self, taps: list[torch.Tensor]) -> torch.Tensor:
        """Patch embeddings from the chosen blocks' outputs (computed elsewhere, e.g. by the classifier)."""
        taps = [F.avg_pool2d(t, 3, stride=1, padding=1) for t in taps]
        size = taps[0].shape[-2:]
        taps = [taps[0]] + [F.interpolate(t, size=size, mode="bilinear", align_corners=False) for t in taps[1:]]
        features = torch.cat(taps, dim=1)
        return torch.einsum("dc,nchw->ndhw", self.projection, features)


def coreset_indices(features: torch.Tensor, n: int, seed: int = 0, *, project_dim: int = 128) -> torch.Tensor:
    """Greedy k-center subsampling: ``n`` rows of ``features [M, D]`` such that every row is near a chosen one.

    Start at a seeded random row, then repeatedly take the row farthest from everything chosen (PatchCore's
    minimax facility location). Distances are computed on a seeded Gaussian projection to ``project_dim``
    dimensions (Johnson-Lindenstrauss), one matrix-vector product per pick. Stops early when every row
    coincides with a chosen one (up to float32 rounding), so the picked points are distinct. Deterministic
    for a seed.
    """
    if n < 1:
        raise ConfigError(f"coreset size {n} must be at least 1")
    m = features.shape[0]
    if m == 0:
        raise DatasetError("no features to subsample (0 patches)")
    generator = torch.Generator().manual_seed(seed)
    z = features.float()
    if z.shape[1] > project_dim:
        z = z @ (torch.randn(z.shape[1], project_dim, generator=generator) / math.sqrt(project_dim))
    n = min(n, m)
    sq = (z * z).sum(1)
    chosen = torch.empty(n, dtype=torch.long)
    chosen[0] = int(torch.randint(m, (1,), generator=generator))
    nearest = torch.full((m,), float("inf"))
    tolerance = 1e-5 * float(sq.max())  # float32 rounding of |a|^2 - 2ab + |b|^2: below this, a duplicate
    for k in range(1, n + 1):
        c = chosen[k - 1]
        distance = sq - 2.0 * (z @ z[c]) + sq[c]
        torch.minimum(nearest, distance, out=nearest)
        nearest[c] = -1.0  # chosen rows never win again (rounding can leave them a tiny positive distance)
        if k == n:
            break
        best = int(torch.argmax(nearest))
        if nearest[best] <= tolerance:
            return chosen[:k]
        chosen[k] = best
    return chosen


def gaussian_kernel(sigma: float) -> torch.Tensor:
    """A normalised 2-D Gaussian ``[1, 1, k, k]`` with k = 2 * ceil(2 sigma) + 1."""
    radius = max(1, math.ceil(2 * sigma))
    t = torch.arange(-radius, radius + 1, dtype=torch.float32)
    g = torch.exp(-(t * t) / (2 * sigma * sigma))
    g = g / g.sum()
    return (g[:, None] * g[None, :])[None, None]


class PatchCore(nn.Module):
    """``forward(image) -> (score [N], anomaly_map [N, h, w])``, both in [0, 1); about 0.5 for a typical good part."""

    def __init__(
        self, extractor: PatchFeatures, bank: torch.Tensor, scale: float = 1.0, *, blur_sigma: float = 0.0
    ) -> None:
        super().__init__()
        if bank.ndim != 2 or bank.shape[0] < 1 or bank.shape[1] != extractor.dim:
            raise ConfigError(f"bank of shape {tuple(bank.shape)} must be [B >= 1, {extractor.dim}]")
        if blur_sigma < 0:
            raise ConfigError(f"blur_sigma {blur_sigma} must be >= 0 (0: no blur)")
        self.extractor = extractor
        bank = bank.detach().float().contiguous()
        self.register_buffer("bank", bank)
        self.register_buffer("bank_sq", (bank * bank).sum(1))
        self.register_buffer("scale", torch.tensor(float(scale)))
        self.blur_sigma = float(blur_sigma)
        self.register_buffer("blur", gaussian_kernel(blur_sigma) if blur_sigma > 0 else torch.zeros(0))

    def raw_map(self, image: torch.Tensor) -> torch.Tensor:
        """Distance of each patch to its nearest bank entry, ``[N, h, w]`` (blurred when ``blur_sigma > 0``)."""
        return self.distance_map(self.extractor(image))

    def distance_map(self, features: torch.Tensor) -> torch.Tensor:
        """``raw_map`` from patch features ``N x D x h x w`` already extracted (benchmarks reuse them)."""
        n, d, h, w = features.shape
        patches = features.permute(0, 2, 3, 1).reshape(-1, d)
        squared = (patches * patches).sum(1, keepdim=True) - 2.0 * (patches @ self.bank.t()) + self.bank_sq
        distance = torch.sqrt(torch.clamp(squared.amin(dim=1), min=0.0)).reshape(n, 1, h, w)
        if self.blur_sigma > 0:
            pad = self.blur.shape[-1] // 2
            distance = F.conv2d(F.pad(distance, (pad, pad, pad, pad), mode="replicate"), self.blur)
        return distance[:, 0]

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.score_features(self.extractor(image))

    def score_features(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(score, anomaly map) from patch features ``N x D x h x w`` (``PatchFeatures`` output)."""
        raw = self.distance_map(features)
        anomaly_map = raw / (raw + self.scale)
        return anomaly_map.flatten(1).amax(dim=1), anomaly_map


def extract_patches(extractor: PatchFeatures, batches: Iterable[torch.Tensor]) -> torch.Tensor:
    """Patch features ``[M, D]`` of every image in ``batches`` (each ``N x 3 x H x W``)."""
    rows = []
    with torch.no_grad():
        for batch in batches:
            features = extractor(batch)
            rows.append(features.permute(0, 2, 3, 1).reshape(-1, features.shape[1]))
    return torch.cat(rows) if rows else torch.zeros(0, extractor.dim)


def raw_scores(model: PatchCore, batches: Iterable[torch.Tensor]) -> torch.Tensor:
    """Raw image scores (maximum patch distance, before ``d / (d + scale)``) of every image in ``batches``."""
    with torch.no_grad():
        scores = [model.raw_map(batch).flatten(1).amax(dim=1) for batch in batches]
    return torch.cat(scores) if scores else torch.zeros(0)


def _split_off_references(batches: list[torch.Tensor], seed: int) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Every image into the bank's share or the reference share (about one in ten, at least one, seeded)."""
    images = torch.cat(batches)
    if len(images) < 2:
        raise DatasetError(
            f"{len(images)} good image(s): scale needs reference images that are not in the bank; "
            "give reference_batches or at least 2 good images"
        )
    order = torch.randperm(len(images), generator=torch.Generator().manual_seed(seed))
    n_ref = max(1, len(images) // 10)
    return list(images[order[n_ref:]].split(16)), list(images[order[:n_ref]].split(16))


def fit_patchcore(
    extractor: PatchFeatures,
    good_batches: Iterable[torch.Tensor],
    *,
    bank_size: int,
    reference_batches: Iterable[torch.Tensor] | None = None,
    seed: int = 0,
    blur_sigma: float = 0.0,
    progress: Progress | None = None,
) -> PatchCore:
    """Fit PatchCore on good images: patch features, a k-center coreset of ``bank_size`` patches, ``scale``.

    ``scale`` is the median raw score of ``reference_batches`` (good images not in the bank); without them,
    about one good image in ten (seeded) is held out of the bank for it.
    """
    say = progress or (lambda _message: None)
    if not isinstance(bank_size, int) or isinstance(bank_size, bool) or bank_size < 1:
        raise ConfigError(f"bank_size {bank_size!r} must be an integer >= 1")
    extractor.eval()
    good = [b for b in good_batches if len(b)]
    if not good:
        raise DatasetError("no good images to fit the anomaly model on (good_batches is empty)")
    references = [b for b in reference_batches if len(b)] if reference_batches is not None else None
    if references is None:
        good, references = _split_off_references(good, seed)
    if not references:
        raise DatasetError("no reference images to set the scale on (reference_batches is empty)")
    n_good = sum(len(b) for b in good)
    say(f"extracting patch features of {n_good} good images")
    patches = extract_patches(extractor, good)
    with torch.no_grad():
        reference_features = [extractor(batch) for batch in references]
    return build_patchcore(
        extractor, patches, reference_features, bank_size=bank_size, seed=seed, blur_sigma=blur_sigma, progress=say
    )


def build_patchcore(
    extractor: PatchFeatures,
    patches: torch.Tensor,
    reference_features: list[torch.Tensor],
    *,
    bank_size: int,
    seed: int = 0,
    blur_sigma: float = 0.0,
    progress: Progress | None = None,
) -> PatchCore:
    """``fit_patchcore`` from features already extracted: good patches ``[M, D]`` and reference feature maps."""
    say = progress or (lambda _message: None)
    if len(patches) == 0:
        raise DatasetError("no good patches to build the bank from")
    size = min(bank_size, len(patches))
    say(f"coreset: {size} of {len(patches)} patches ({100 * size / len(patches):.2f} %)")
    bank = patches[coreset_indices(patches, size, seed)]
    model = PatchCore(extractor, bank, 1.0, blur_sigma=blur_sigma).eval()
    with torch.no_grad():
        scores = torch.cat([model.distance_map(f).flatten(1).amax(dim=1) for f in reference_features])
    scale = float(scores.median())
    if scale <= 0:  # every reference patch is in the bank: any positive scale keeps the map monotone
        scale = float(scores.max()) or 1.0
    model.scale.fill_(scale)
    say(f"scale {scale:.4g}: median raw score of {len(scores)} reference good images")
    return model
