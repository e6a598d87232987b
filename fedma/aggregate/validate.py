"""Checks every update must pass before any strategy sees it.

A silo is another organisation: its update may be stale, broken or hostile. Each failed check
becomes a rejection with a reason (reported in the round's status); the round goes on without
that silo if the quorum still holds.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch

from fedma.aggregate.base import Tensors


def check_update(silo: str, base: Tensors, weights: Mapping[str, torch.Tensor], samples: int,
                 max_delta_norm: float = 0.0) -> str:
    """Empty string if acceptable, else the reason for rejecting it."""
    if set(weights) != set(base):
        return f"tensors {sorted(weights)} do not match the global projector's {sorted(base)}"
    for k, v in base.items():
        w = weights[k]
        if tuple(w.shape) != tuple(v.shape):
            return f"tensor {k!r} has shape {tuple(w.shape)}, expected {tuple(v.shape)}"
        if w.dtype != v.dtype:
            return f"tensor {k!r} has dtype {w.dtype}, expected {v.dtype}"
        if not torch.isfinite(w).all():
            return f"tensor {k!r} holds NaN or infinite values"
    if samples <= 0:
        return f"reports {samples} samples"
    if max_delta_norm > 0:
        sq = sum(float((weights[k].double() - base[k].double()).pow(2).sum()) for k in base)
        norm = math.sqrt(sq)
        if norm > max_delta_norm:
            return f"update norm {norm:.4g} exceeds the bound {max_delta_norm:.4g}"
    return ""
