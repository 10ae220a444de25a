"""The statistics behind the dashboard and the shift report: p-charts, drift, usual-value bands.

p-chart (attribute control chart for a proportion, e.g. the reject rate per hour). For subgroup i with
n_i frames of which x_i were rejected: p_i = x_i / n_i, centre line p = sum(x) / sum(n), and 3-sigma limits
that depend on the subgroup size: p +- 3 * sqrt(p (1 - p) / n_i), clipped to [0, 1]. A point outside its
limits is flagged: the process changed (a lot of bad material, a lamp failing, a drifting model).

Drift: the population stability index (PSI) of the defect scores of a window against a reference window,
over bins at the reference's deciles (so each reference bin holds about a tenth of the frames, however
skewed the scores are). PSI = sum_b (a_b - e_b) * ln(a_b / e_b) with a, e the window's and the
reference's share of frames in bin b (a share of 0 is replaced by 1e-4, the usual smoothing). Reading:
below 0.1 stable, 0.1 to 0.25 a moderate shift worth a look, above 0.25 a major shift. The two-sample
Kolmogorov-Smirnov statistic (largest gap between the two empirical CDFs) is given beside it.

Usual values (frame quality): a camera's median and its robust spread, 1.4826 * MAD (which equals the
standard deviation for normal data but ignores the outliers we are looking for); a value more than 3
robust sigmas from the median is flagged.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

PSI_MODERATE = 0.1
PSI_MAJOR = 0.25
PSI_FLOOR = 1e-4
MAD_TO_SIGMA = 1.4826


@dataclass(frozen=True)
class PChart:
    """Per subgroup: size n, count x, proportion p, limits; ``out`` flags points outside their limits."""

    n: np.ndarray
    x: np.ndarray
    p: np.ndarray
    centre: float
    lcl: np.ndarray
    ucl: np.ndarray
    out: np.ndarray

    @property
    def out_of_control(self) -> int:
        return int(self.out.sum())


def p_chart(
    x: list[int] | np.ndarray, n: list[int] | np.ndarray, *, sigmas: float = 3.0, centre: float | None = None
) -> PChart:
    """p-chart of counts ``x`` in subgroups of size ``n`` (subgroups with n = 0 get NaN and are not flagged).

    ``centre`` fixes the centre line (a standard from a reference period); by default it is estimated from
    the subgroups themselves (sum x / sum n).
    """
    x = np.asarray(x, dtype=np.float64)
    n = np.asarray(n, dtype=np.float64)
    if x.shape != n.shape:
        raise ValueError(f"x and n differ in length ({x.shape} vs {n.shape})")
    if np.any(x < 0) or np.any(x > n):
        raise ValueError("every count must be between 0 and its subgroup size")
    total = n.sum()
    pbar = float(centre) if centre is not None else (float(x.sum() / total) if total > 0 else 0.0)
    with np.errstate(divide="ignore", invalid="ignore"):
        p = np.where(n > 0, x / n, np.nan)
        sigma = np.where(n > 0, np.sqrt(pbar * (1.0 - pbar) / n), np.nan)
    ucl = np.minimum(1.0, pbar + sigmas * sigma)
    lcl = np.maximum(0.0, pbar - sigmas * sigma)
    out = (n > 0) & ((p > ucl + 1e-12) | (p < lcl - 1e-12))
    return PChart(n=n, x=x, p=p, centre=pbar, lcl=lcl, ucl=ucl, out=out)


def decile_edges(reference: np.ndarray, bins: int = 10) -> np.ndarray:
    """Inner bin edges at the reference's quantiles (duplicates removed, so ties do not make empty bins)."""
    ref = np.asarray(reference, dtype=np.float64)
    if ref.size == 0:
        raise ValueError("the reference window has no scores")
    qs = np.quantile(ref, np.linspace(0, 1, bins + 1)[1:-1])
    return np.unique(qs)


def shares(values: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Share of ``values`` in each bin (-inf, e1], (e1, e2], ..., (ek, inf)."""
    values = np.asarray(values, dtype=np.float64)
    idx = np.searchsorted(edges, values, side="left")
    counts = np.bincount(idx, minlength=len(edges) + 1).astype(np.float64)
    return counts / max(1, values.size)


def psi_from_shares(actual: np.ndarray, expected: np.ndarray, floor: float = PSI_FLOOR) -> float:
    a = np.maximum(np.asarray(actual, dtype=np.float64), floor)
    e = np.maximum(np.asarray(expected, dtype=np.float64), floor)
    return float(np.sum((a - e) * np.log(a / e)))


def psi(current: np.ndarray, reference: np.ndarray, bins: int = 10) -> float:
    """Population stability index of ``current`` against ``reference`` (bins at the reference's deciles)."""
    if np.asarray(current).size == 0:
        raise ValueError("the current window has no scores")
    edges = decile_edges(reference, bins)
    return psi_from_shares(shares(current, edges), shares(reference, edges))


def ks_statistic(a: np.ndarray, b: np.ndarray) -> float:
    """Two-sample Kolmogorov-Smirnov D: the largest gap between the empirical CDFs."""
    a = np.sort(np.asarray(a, dtype=np.float64))
    b = np.sort(np.asarray(b, dtype=np.float64))
    if a.size == 0 or b.size == 0:
        raise ValueError("both samples need at least one value")
    grid = np.concatenate([a, b])
    cdf_a = np.searchsorted(a, grid, side="right") / a.size
    cdf_b = np.searchsorted(b, grid, side="right") / b.size
    return float(np.max(np.abs(cdf_a - cdf_b)))


def drift_level(value: float) -> str:
    if value >= PSI_MAJOR:
        return "major"
    if value >= PSI_MODERATE:
        return "moderate"
    return "stable"


@dataclass(frozen=True)
class Usual:
    """A signal's usual level: median and robust sigma; ``band(k)`` is median +- k robust sigmas."""

    median: float
    sigma: float
    n: int

    def band(self, k: float = 3.0) -> tuple[float, float]:
        return self.median - k * self.sigma, self.median + k * self.sigma

    def outside(self, values: np.ndarray, k: float = 3.0) -> np.ndarray:
        low, high = self.band(k)
        values = np.asarray(values, dtype=np.float64)
        return (values < low) | (values > high)


def usual(values: np.ndarray) -> Usual | None:
    """Median and 1.4826 * MAD of the finite values; None with fewer than 5 of them."""
    v = np.asarray(values, dtype=np.float64)
    v = v[np.isfinite(v)]
    if v.size < 5:
        return None
    med = float(np.median(v))
    mad = float(np.median(np.abs(v - med)))
    sigma = MAD_TO_SIGMA * mad
    if sigma == 0.0:  # a perfectly constant signal: any change is a change
        sigma = max(abs(med) * 1e-3, 1e-6)
    return Usual(med, sigma, int(v.size))


def wilson_interval(successes: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """95% Wilson score interval of a proportion (for agreement rates over few reviews)."""
    if n <= 0:
        return (math.nan, math.nan)
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)
