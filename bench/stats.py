"""Paired statistics for the quality benchmark: can this arm be said to beat FedAvg?

Every arm of a seed is scored on the same held-out images, so comparisons are paired: per seed,
the difference of an arm's mean from FedAvg's; per image, the difference of the two arms'
scores on that image. Two intervals for the mean difference:

- ``t``: Student's t over the per-seed differences (the seeds are the independent replicates:
  each has its own split, held-out set, warm start and initialisation);
- ``bootstrap``: a two-level percentile bootstrap that resamples seeds, then images within
  each drawn seed, so both sources of variation (which seeds, which test images) are in it.

The verdict rule: an arm beats (or loses to) FedAvg only when both intervals exclude 0 and the
effect is larger than twice what the numerical-noise control moved (FedAvg with every
aggregate perturbed by 1e-7: an effect that size is what chaos alone produces). The minimum
detectable effect is the true difference a paired t-test of this many seeds detects with 80 %
power at the observed spread of differences.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
from scipy import stats


def t_interval(diffs: Sequence[float], level: float = 0.95) -> tuple[float, float]:
    """Student's t interval for the mean of ``diffs`` (nan, nan with fewer than 2)."""
    d = np.asarray(diffs, dtype=float)
    if d.size < 2:
        return math.nan, math.nan
    half = stats.t.ppf(0.5 + level / 2, d.size - 1) * d.std(ddof=1) / math.sqrt(d.size)
    return float(d.mean() - half), float(d.mean() + half)


def bootstrap_interval(per_image: Sequence[np.ndarray], level: float = 0.95,
                       resamples: int = 2000, seed: int = 0) -> tuple[float, float]:
    """Percentile interval of the mean paired difference: seeds resampled with replacement,
    then images within each drawn seed. ``per_image[s]`` holds seed s's per-image paired
    differences (arm − FedAvg)."""
    rng = np.random.default_rng(seed)
    arrays = [np.asarray(a, dtype=float) for a in per_image]
    n = len(arrays)
    means = np.empty(resamples)
    for b in range(resamples):
        drawn = rng.integers(0, n, size=n)
        means[b] = np.mean([arrays[s][rng.integers(0, arrays[s].size, size=arrays[s].size)]
                            .mean() for s in drawn])
    lo, hi = np.quantile(means, [0.5 - level / 2, 0.5 + level / 2])
    return float(lo), float(hi)


def minimum_detectable_effect(diffs: Sequence[float], power: float = 0.8,
                              level: float = 0.95) -> float:
    """The true mean difference a two-sided paired t-test of len(diffs) seeds detects with
    ``power`` at the observed standard deviation of the differences (normal approximation of
    the noncentral t with t quantiles)."""
    d = np.asarray(diffs, dtype=float)
    if d.size < 2:
        return math.nan
    df = d.size - 1
    return float((stats.t.ppf(0.5 + level / 2, df) + stats.t.ppf(power, df))
                 * d.std(ddof=1) / math.sqrt(d.size))


def compare(arm: Sequence[np.ndarray], baseline: Sequence[np.ndarray],
            noise: float | None = None, higher_is_better: bool = True) -> dict[str, Any]:
    """``arm[s]`` and ``baseline[s]``: seed s's per-image scores of the two arms on the same
    images. ``noise``: the mean |difference| the noise control made on this metric (the
    verdict needs an effect above twice it)."""
    if len(arm) != len(baseline):
        raise ValueError(f"{len(arm)} seeds against {len(baseline)}")
    per_image = []
    for a, b in zip(arm, baseline, strict=True):
        a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
        if a.shape != b.shape:
            raise ValueError(f"paired scores need the same images: {a.shape} against {b.shape}")
        per_image.append(a - b)
    diffs = [float(d.mean()) for d in per_image]
    mean = float(np.mean(diffs))
    t_lo, t_hi = t_interval(diffs)
    b_lo, b_hi = bootstrap_interval(per_image)
    better = [d > 0 if higher_is_better else d < 0 for d in diffs]
    worse = [d < 0 if higher_is_better else d > 0 for d in diffs]
    excludes_zero = all(not math.isnan(x) for x in (t_lo, b_lo)) and (
        (t_lo > 0 and b_lo > 0) or (t_hi < 0 and b_hi < 0))
    above_noise = noise is None or abs(mean) > 2 * noise
    verdict = "no difference shown"
    if excludes_zero and above_noise:
        verdict = "better" if (mean > 0) == higher_is_better else "worse"
    return {"per_seed_difference": diffs, "mean_difference": mean,
            "t_interval": [t_lo, t_hi], "bootstrap_interval": [b_lo, b_hi],
            "wins": int(sum(better)), "losses": int(sum(worse)), "seeds": len(diffs),
            "minimum_detectable_effect": minimum_detectable_effect(diffs),
            "twice_noise": None if noise is None else 2 * noise, "verdict": verdict}
