"""Non-IID partitioning for experiments: Dirichlet label skew (Hsu et al., 2019).

For each class, the share that goes to each silo is drawn from Dir(α·1): small α gives each
silo a few dominant classes (α=0.1 is near-pathological), large α approaches IID.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def dirichlet_partition(labels: Sequence[int], n_silos: int, alpha: float, seed: int = 0,
                        min_size: int = 1, max_tries: int = 100) -> list[list[int]]:
    """Indices per silo. Redraws until every silo holds at least ``min_size`` samples."""
    if n_silos < 1:
        raise ValueError("n_silos must be >= 1")
    if alpha <= 0:
        raise ValueError("alpha must be > 0")
    y = np.asarray(labels)
    if len(y) < n_silos * min_size:
        raise ValueError(f"{len(y)} samples cannot give {n_silos} silos {min_size} each")
    rng = np.random.default_rng(seed)
    for _ in range(max_tries):
        parts: list[list[int]] = [[] for _ in range(n_silos)]
        for c in np.unique(y):
            idx = rng.permutation(np.flatnonzero(y == c))
            shares = rng.dirichlet(np.full(n_silos, alpha))
            cuts = (np.cumsum(shares)[:-1] * len(idx)).astype(int)
            for silo, chunk in enumerate(np.split(idx, cuts)):
                parts[silo].extend(int(i) for i in chunk)
        if min(len(p) for p in parts) >= min_size:
            return [sorted(p) for p in parts]
    raise ValueError(f"no Dirichlet(alpha={alpha}) draw gave every silo {min_size} samples")


def iid_partition(n: int, n_silos: int, seed: int = 0) -> list[list[int]]:
    perm = np.random.default_rng(seed).permutation(n)
    return [sorted(int(i) for i in part) for part in np.array_split(perm, n_silos)]


def label_skew_equal(labels: Sequence[int], n_silos: int, alpha: float, seed: int = 0
                     ) -> list[list[int]]:
    """Every sample to one of ``n_silos`` silos of equal size (±1), with Dirichlet label skew.

    ``dirichlet_partition`` gives silos very unequal sizes at small α, which makes "equal local
    steps per silo" and "one pass over the data" contradict each other. Here each silo draws its
    class mix from Dir(α·1) as usual, then the silo × class matrix is Sinkhorn-scaled so rows
    match the equal silo sizes and columns the class counts (the mixes keep their zeros and
    their dominant classes), and rounded without breaking either margin. The pooled data is
    exactly ``labels``, so a centralized baseline sees the same samples under any split.
    """
    if n_silos < 1 or alpha <= 0:
        raise ValueError("n_silos must be >= 1 and alpha > 0")
    y = np.asarray(labels)
    classes, counts = np.unique(y, return_counts=True)
    rng = np.random.default_rng(seed)
    sizes = np.full(n_silos, len(y) // n_silos)
    sizes[: len(y) % n_silos] += 1
    mix = rng.dirichlet(np.full(len(classes), alpha), size=n_silos) + 1e-9
    for _ in range(500):
        mix *= (sizes / mix.sum(1))[:, None]
        mix *= (counts / mix.sum(0))[None, :]
    take = np.floor(mix).astype(int)
    room, left = sizes - take.sum(1), counts - take.sum(0)
    # Hand out the remaining samples by largest fractional part, within both margins.
    for flat in np.argsort(-(mix - take), axis=None):
        s, c = divmod(int(flat), len(classes))
        if room[s] > 0 and left[c] > 0:
            take[s, c] += 1
            room[s] -= 1
            left[c] -= 1
    for s, c in zip(*np.nonzero((room[:, None] > 0) & (left[None, :] > 0)), strict=False):
        n = min(room[s], left[c])  # only if fractional parts ran out (pathological mixes)
        take[s, c] += n
        room[s] -= n
        left[c] -= n
    parts: list[list[int]] = [[] for _ in range(n_silos)]
    for j, c in enumerate(classes):
        idx = rng.permutation(np.flatnonzero(y == c))
        for s, chunk in enumerate(np.split(idx, np.cumsum(take[:, j])[:-1])):
            parts[s].extend(int(i) for i in chunk)
    return [sorted(p) for p in parts]
