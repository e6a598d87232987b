"""The weighted mean of silo deltas, one cache-sized block at a time.

Aggregation is memory-bound: every update is read once and little is computed per byte. The
plain form (``Σᵢ pᵢ·(wᵢ − x)`` over whole tensors) keeps K float64 deltas alive and streams a
model-sized accumulator through memory once per silo. Here each tensor is cut into blocks that
stay in cache; for each block every silo's slice is read once (zero-copy from a memory-mapped
update, fedma.aggregate.mapped) and folded into the block's accumulator. Memory is
O(model) whatever K is, and the traffic is the K updates read once plus one model written.

The silo order is fixed (sorted by name), so the result is deterministic: a retried
aggregation Job reproduces the digest.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from fedma.aggregate.base import SiloUpdate, Tensors

# Elements per block: 2 MiB of float32 accumulator. Measured on the 7B projector shape with
# 16 updates (2 cores): 32 Ki elements 0.19 s, 128 Ki 0.09 s, 512 Ki 0.08 s, 2 Mi 0.10 s —
# small blocks pay torch's per-call cost, large ones fall out of cache.
BLOCK = 1 << 19


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


def _blocked_pass(x: torch.Tensor, views: Sequence[torch.Tensor],
                  coefficients: Sequence[float], energy: bool
                  ) -> tuple[torch.Tensor, list[float]]:
    """One tensor, one pass: Σᵢ cᵢ·wᵢ − (Σᵢ cᵢ)·x (in x's precision, at least float32) and,
    with ``energy``, each silo's ‖wᵢ − x‖² (float64 sums of block differences)."""
    flat_x = x.reshape(-1)
    flats = [v.reshape(-1) for v in views]
    acc = torch.empty(flat_x.numel(), dtype=torch.promote_types(x.dtype, torch.float32))
    sq = [0.0] * len(flats)
    total = float(sum(coefficients))
    for start in range(0, flat_x.numel(), BLOCK):
        stop = min(start + BLOCK, flat_x.numel())
        xb = flat_x[start:stop]
        block = acc[start:stop]
        torch.mul(flats[0][start:stop], coefficients[0], out=block)
        for view, c in zip(flats[1:], coefficients[1:], strict=True):
            block.add_(view[start:stop], alpha=c)
        if energy:
            tmp = torch.empty_like(xb)
            for i, view in enumerate(flats):
                torch.sub(view[start:stop], xb, out=tmp)
                sq[i] += float(torch.dot(tmp, tmp))
        block.sub_(xb, alpha=total)
    return acc.view(x.shape), sq


def mean_and_energy(x: torch.Tensor, views: Sequence[torch.Tensor],
                    coefficients: Sequence[float]) -> tuple[torch.Tensor, list[float]]:
    """For one tensor: Σᵢ cᵢ·(wᵢ − x) (float32, as ``weighted_mean_delta``) and each silo's
    ‖wᵢ − x‖² (float64 sums of float32 block differences, free of the cancellation that
    ‖wᵢ‖² − 2⟨wᵢ, x⟩ + ‖x‖² would suffer), in one blocked pass."""
    return _blocked_pass(x.float(), views, coefficients, energy=True)


def weighted_mean_delta(base: Tensors, updates: Sequence[SiloUpdate],
                        coefficients: Sequence[float]) -> Tensors:
    """Σᵢ cᵢ·(wᵢ − x) per tensor (cᵢ: sample share times any clipping factor), computed as
    Σᵢ cᵢ·wᵢ − (Σᵢ cᵢ)·x in the weights' float32: one fused multiply-add per element and
    silo, so the pass runs at memory speed. The rounding this leaves (≈ 1e-7 of a weight,
    against float64) is far below what one training step moves a weight; the order is fixed
    (silos sorted by name), so the result is deterministic."""
    return {key: _blocked_pass(x, [u.weights[key] for u in updates], coefficients,
                               energy=False)[0]
            for key, x in base.items()}
