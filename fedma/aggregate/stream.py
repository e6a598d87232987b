"""The weighted mean of silo deltas, one cache-sized block at a time.

Aggregation is memory-bound: every update is read once and little is computed per byte. The
plain form (``Σᵢ pᵢ·(wᵢ − x)`` over whole tensors) keeps K float64 deltas alive and streams a
model-sized accumulator through memory once per silo. Here each tensor is cut into blocks that
stay in cache; for each block every silo's slice is read once (zero-copy from a memory-mapped
update, fedma.aggregate.mapped) and folded into the block's float64 accumulator. Memory is
O(model) whatever K is, and the traffic is the K updates read once plus one model written.

The arithmetic per element is the same as the plain form, in the same silo order (sorted by
name), so the result is deterministic: a retried aggregation Job reproduces the digest.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from fedma.aggregate.base import SiloUpdate, Tensors

BLOCK = 1 << 15  # elements per block: 256 KiB of float64 accumulator, 128 KiB per fp32 slice


def delta_norms(base: Tensors, updates: Sequence[SiloUpdate]) -> list[float]:
    """‖wᵢ − x‖₂ over all tensors, per silo (for norm clipping), streamed the same way."""
    sq = [0.0] * len(updates)
    for key, x in base.items():
        flat_x = x.reshape(-1)
        for start in range(0, flat_x.numel(), BLOCK):
            xb = flat_x[start : start + BLOCK].double()
            for i, u in enumerate(updates):
                d = u.weights[key].reshape(-1)[start : start + BLOCK].double() - xb
                sq[i] += float(d.pow(2).sum())
    return [math.sqrt(s) for s in sq]


def weighted_mean_delta(base: Tensors, updates: Sequence[SiloUpdate],
                        coefficients: Sequence[float]) -> Tensors:
    """Σᵢ cᵢ·(wᵢ − x) per tensor, in float64 (cᵢ: sample share times any clipping factor)."""
    out: Tensors = {}
    for key, x in base.items():
        flat_x = x.reshape(-1)
        acc = torch.empty(flat_x.numel(), dtype=torch.float64)
        views = [u.weights[key].reshape(-1) for u in updates]
        for start in range(0, flat_x.numel(), BLOCK):
            stop = min(start + BLOCK, flat_x.numel())
            xb = flat_x[start:stop].double()
            block = acc[start:stop]
            block.zero_()
            tmp = torch.empty_like(block)
            for view, c in zip(views, coefficients, strict=True):
                torch.sub(view[start:stop], xb, out=tmp)  # promotes the fp32 slice to fp64
                block.add_(tmp, alpha=c)
        out[key] = acc.view(x.shape)
    return out
