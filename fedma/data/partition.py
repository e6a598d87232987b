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
