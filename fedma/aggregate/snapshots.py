"""Fed-CMP's canonical space through the K × K Gram matrix of the silo deltas (the method of
snapshots), for ``aggregation.options.snapshots: 1``.

The exact formulation (fedcmp.py) takes the basis of a weight matrix in its output space: the
top left singular vectors of [√p₁Δ₁ | … | √p_KΔ_K], which for a 4096 × 4096 layer is a
randomized SVD reading every update three times plus skinny GEMMs (≈ 14× FedAvg's time at
LLaVA-1.5 shapes). Here each delta is one vector vᵢ = vec(Δᵢ) and the shared basis is the
principal directions of A = [√p₁v₁, …, √p_Kv_K] (Sirovich's snapshots, as in POD): with
G = AᵀA = V Λ Vᵀ (K × K), the modes φⱼ = A Vⱼ / σⱼ are orthonormal, silo i's coefficient on
mode j is the scalar cᵢⱼ = ⟨vᵢ, φⱼ⟩ = σⱼ Vᵢⱼ / √pᵢ, and everything the exact formulation does
with coefficient rows — reliability weights, fusion, the residual, momentum projected onto the
basis — becomes arithmetic on K-vectors. The fused delta and the new momentum are linear
combinations of the vᵢ (and the old momentum's projection onto their span is too), so a round
is two blocked passes: one for G and ⟨vᵢ, M⟩, one writing M = Σθᵢvᵢ (stream.combined_delta).

What differs from the exact formulation: the basis has at most K directions per tensor, and
agreement between silos on a direction is the sign of their scalar coefficients (weighed by
magnitude under ``conflict_only``), where the exact one compares whole coefficient rows.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from fedma.aggregate.stream import BLOCK, BlockReader

# Eigenvalues below this fraction of the largest are at the float32 Gram's noise level (its
# block GEMMs round at ≈ 1e-7 of the largest): their modes would be noise divided by ~0.
# What they hold (under 1e-6 of the energy) stays in the residual.
_EIG_FLOOR = 1e-6


def gram_pass(x: torch.Tensor, readers: Sequence[BlockReader], factors: Sequence[float],
              momentum: torch.Tensor | None = None
              ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """One blocked pass: G = [⟨vᵢ, vⱼ⟩] (K × K, float64) with vᵢ = fᵢ·(wᵢ − x), and, given the
    old momentum M, gᵢ = ⟨vᵢ, M⟩. Each block's K differences are formed once (no cancellation
    of ⟨wᵢ, wⱼ⟩ − …) and multiplied as one float32 GEMM; the sums across blocks are float64."""
    k = len(readers)
    flat_x = x.reshape(-1).float()
    flat_m = None if momentum is None else momentum.reshape(-1).float()
    n = flat_x.numel()
    width = max(1 << 14, (4 * BLOCK) // max(k, 1))  # K rows of this many floats stay cached
    rows_buf = torch.empty(k, min(width, n))
    gram = torch.zeros(k, k, dtype=torch.float64)
    proj = None if flat_m is None else torch.zeros(k, dtype=torch.float64)
    for start in range(0, n, width):
        stop = min(start + width, n)
        rows = rows_buf[:, : stop - start]
        xb = flat_x[start:stop]
        for i, read in enumerate(readers):
            torch.sub(read(start, stop), xb, out=rows[i])
        gram += (rows @ rows.T).double()
        if proj is not None and flat_m is not None:
            proj += (rows @ flat_m[start:stop]).double()
    f = torch.tensor(list(factors), dtype=torch.float64)
    gram *= f[:, None] * f[None, :]
    if proj is not None:
        proj *= f
    return gram, proj


def modes(gram: torch.Tensor, shares: torch.Tensor
          ) -> tuple[torch.Tensor, torch.Tensor, float]:
    """σ (descending, only the numerically non-zero ones) and V (K × len(σ)) of the weighted
    snapshot matrix A = [√pᵢvᵢ], and ‖A‖²_F."""
    sp = shares.sqrt()
    evals, evecs = torch.linalg.eigh(gram * sp[:, None] * sp[None, :])
    lam, v = evals.flip(0).clamp_min(0.0), evecs.flip(1)
    total = float(lam.sum())
    if total == 0.0:
        return lam[:0], v[:, :0], 0.0
    keep = int((lam > _EIG_FLOOR * lam[0]).sum())
    return lam[:keep].sqrt(), v[:, :keep], total


def coefficients(sigma: torch.Tensor, v: torch.Tensor, shares: torch.Tensor) -> torch.Tensor:
    """cᵢⱼ = ⟨vᵢ, φⱼ⟩ = σⱼ Vᵢⱼ / √pᵢ (K × r)."""
    return sigma[None, :] * v / shares.sqrt()[:, None]


def combination(sigma: torch.Tensor, v: torch.Tensor, shares: torch.Tensor,
                along: torch.Tensor) -> torch.Tensor:
    """The weights θ (K) with Σᵢ θᵢ vᵢ = Σⱼ φⱼ·alongⱼ: φⱼ = Σᵢ √pᵢ Vᵢⱼ vᵢ / σⱼ."""
    return shares.sqrt() * (v @ (along / sigma))


def projection(sigma: torch.Tensor, v: torch.Tensor, shares: torch.Tensor,
               inner: torch.Tensor) -> torch.Tensor:
    """φⱼᵀM for every mode, from gᵢ = ⟨vᵢ, M⟩: Σᵢ √pᵢ Vᵢⱼ gᵢ / σⱼ."""
    return (v * shares.sqrt()[:, None]).T @ inner / sigma
