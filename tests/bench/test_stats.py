"""The quality benchmark's paired statistics (bench/stats.py) on cases with known answers."""

import math

import numpy as np
import pytest

from bench.stats import compare, minimum_detectable_effect, t_interval


def test_t_interval_is_students():
    lo, hi = t_interval([1.0, 2.0, 3.0])  # mean 2, sd 1, t(0.975, 2) = 4.3027
    assert (lo, hi) == pytest.approx((2 - 4.3027 / math.sqrt(3), 2 + 4.3027 / math.sqrt(3)),
                                     abs=1e-3)
    assert all(math.isnan(x) for x in t_interval([1.0]))


def _seeds(rng, shift, n_seeds=5, n_images=400, seed_spread=0.05):
    """Per-image scores of a baseline and of an arm ``shift`` above it, with seed-level and
    image-level variation shared by both (pairing removes it)."""
    base, arm = [], []
    for _ in range(n_seeds):
        level = rng.normal(0.5, seed_spread)
        b = level + rng.normal(0, 0.3, n_images)
        base.append(b)
        arm.append(b + shift + rng.normal(0, 0.05, n_images))
    return arm, base


def test_a_clear_paired_gain_is_called_better_and_its_intervals_cover_it():
    arm, base = _seeds(np.random.default_rng(0), shift=0.05)
    got = compare(arm, base, noise=0.001)
    assert got["verdict"] == "better" and got["wins"] == 5 and got["losses"] == 0
    for lo, hi in (got["t_interval"], got["bootstrap_interval"]):
        assert lo < 0.05 < hi and lo > 0
    worse = compare(base, arm, noise=0.001)
    assert worse["verdict"] == "worse" and worse["losses"] == 5


def test_no_effect_or_an_effect_within_twice_the_noise_is_not_a_win():
    rng = np.random.default_rng(1)
    arm, base = _seeds(rng, shift=0.0)
    assert compare(arm, base)["verdict"] == "no difference shown"
    # Consistent and significant, but no larger than what a 1e-7 perturbation moved.
    arm, base = _seeds(rng, shift=0.01)
    assert compare(arm, base)["verdict"] == "better"
    assert compare(arm, base, noise=0.006)["verdict"] == "no difference shown"


def test_minimum_detectable_effect_shrinks_with_seeds_and_pairs_must_match():
    rng = np.random.default_rng(2)
    diffs = rng.normal(0, 1, 20)
    assert minimum_detectable_effect(diffs[:3]) > minimum_detectable_effect(diffs[:10]) \
        > minimum_detectable_effect(diffs)
    with pytest.raises(ValueError, match="same images"):
        compare([np.zeros(3)], [np.zeros(4)])
