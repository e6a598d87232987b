"""Fed-CMP: canonical reliability-aware aggregation with orthogonality-preserved momentum.

RECONSTRUCTION. Fed-CMP is proposed in "A Step Toward Federated Pretraining of Multimodal Large
Language Models" (arXiv 2603.26786, 2026). Only its abstract is public to us; it names two parts,
(a) canonical reliability-aware aggregation — a canonical space that decomposes the client
projectors into a shared alignment basis plus client-specific coefficients, fused with
reliability weights — and (b) orthogonality-preserved momentum — server momentum applied to the
shared basis through an orthogonal projection. The formulas below are ours, written to match
that description; docs/fedcmp.md states them for checking against the paper.

Per 2-D weight tensor (out × in), with silo deltas Δᵢ = wᵢ − x, sample shares pᵢ = nᵢ / Σn:

1. Canonical space: U (out × r) = top-r left singular vectors of [√p₁·Δ₁ | … | √p_K·Δ_K].
   r is the smallest rank keeping ``energy`` of the squared Frobenius norm, capped at
   ``max_rank`` (or fixed by ``rank``). Small matrices (out ≤ 1024) use the exact
   eigenvectors of the out × out Gram matrix; large ones a seeded randomized SVD (Halko et
   al.) that reads one silo's delta at a time, so a 5120 × 5120 layer of 64 silos needs a few
   layer-sized buffers, never K of them (``_fuse_streamed``).
2. Coefficients: Cᵢ = Uᵀ Δᵢ (r × in), one row per shared direction; residual Rᵢ = Δᵢ − U Cᵢ.
3. Reliability: agreement aᵢⱼ = Σ_{k≠i} pₖ·cos(Cᵢⱼ, Cₖⱼ) / Σ_{k≠i} pₖ (silo i against the
   others, row j); with ``conflict_only`` (default) each other silo's vote is scaled by
   ρₖⱼ = min(1, ‖Cₖⱼ‖ / Σₗ pₗ‖Cₗⱼ‖) (a silo that barely moves along j does not judge it) and
   âᵢⱼ = min(aᵢⱼ, 0); otherwise âᵢⱼ = aᵢⱼ with unscaled votes;
   wᵢⱼ = pᵢ·exp(âᵢⱼ / T) / Σₖ pₖ·exp(âₖⱼ / T). A silo that pulls against the others on a
   direction loses weight on that direction only (interference-aware); one that carries a
   direction the others leave alone (complementary data) keeps its share.
4. Fusion: C*ⱼ = Σᵢ wᵢⱼ Cᵢⱼ; D = U C* (+ Σᵢ pᵢ Rᵢ when ``keep_residual``).
5. Orthogonality-preserved momentum: M ← β · U (Uᵀ M) + D; x ← x + η · M. History is projected
   onto the current shared basis, so it accumulates inside the alignment subspace and what
   left it is dropped instead of oscillating against it.

Vectors (biases) and other non-2-D tensors: sample-weighted mean, x ← x + η · Σ pᵢ Δᵢ.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar

import torch

from fedma.aggregate import grassmann
from fedma.aggregate.base import AggregateResult, SiloUpdate, Tensors
from fedma.aggregate.server_opt import ServerOptimizer, _get, clip_factors
from fedma.aggregate.snapshots import coefficients, combination, gram_pass, modes, projection
from fedma.aggregate.stream import (
    block_reader,
    combined_delta,
    mean_and_energy,
    weighted_mean_delta,
)

EXACT_SVD_MAX = 1024  # below this smaller side, a full SVD is cheap and exact


class FedCMP(ServerOptimizer):
    name = "fedcmp"
    defaults: ClassVar[dict[str, float]] = {
        "server_lr": 1.0,  # η
        "beta": 0.5,  # β, momentum on the shared basis
        "energy": 0.9,  # fraction of squared Frobenius norm the basis keeps
        "rank": 0,  # fixed rank (0 = chosen by energy)
        "max_rank": 32,  # cap on r (and the randomized SVD's target)
        "temperature": 0.5,  # T in the reliability softmax
        # 1: only conflict (negative agreement) costs weight; a silo that carries a direction
        # the others do not touch (complementary data: cosine ≈ 0) keeps its sample share.
        # 0: any shortfall of agreement costs weight (the first reconstruction; under label
        # skew it starved the directions only a few silos carry — docs/quality.md).
        "conflict_only": 1,
        "keep_residual": 1,  # 1: add the weighted mean of what lies outside the basis
        "seed": 0,  # randomized SVD seed (determinism)
        # 1: the basis from the K × K Gram matrix of the vectorised deltas (snapshots.py):
        # two blocked passes, at most K directions per tensor. 0: the exact out-space basis.
        "snapshots": 0,
        # 0: every silo at its sample share on every direction (no reliability weighting);
        # with beta 0 Fed-CMP is then FedAvg, the sanity arm of the quality benchmark.
        "reliability": 1,
        # 1: momentum on the shared basis itself (grassmann.py: the basis kept across rounds,
        # a velocity in its tangent space, exp-map retraction) instead of on the fused delta;
        # needs a fixed rank. 0: the subspace momentum of step 5.
        "basis_momentum": 0,
    }

    def __init__(self, robust: dict[str, Any] | None = None,
                 privacy: dict[str, Any] | None = None, **options: float):
        if privacy and privacy.get("noise_multiplier", 0) > 0:
            raise ValueError("aggregation.privacy: central DP is not available with fedcmp (its "
                             "SVD fusion has no bounded sensitivity); use fedavg or a server "
                             "optimiser")
        super().__init__(robust=robust, **options)
        rule = self.robust.get("rule", "mean")
        if rule != "mean":
            raise ValueError(f"aggregation.robust.rule {rule!r}: fedcmp does its own fusion; "
                             "only clipNorm composes with it")
        o = self.opts
        if not 0 < o["energy"] <= 1:
            raise ValueError("aggregation.options.energy must be in (0, 1]")
        if o["temperature"] <= 0:
            raise ValueError("aggregation.options.temperature must be > 0")
        if not 0 <= o["beta"] < 1:
            raise ValueError("aggregation.options.beta must be in [0, 1)")
        if o["max_rank"] < 1 or o["rank"] < 0:
            raise ValueError("aggregation.options.max_rank must be >= 1 and rank >= 0")
        for flag in ("snapshots", "reliability", "conflict_only", "keep_residual",
                     "basis_momentum"):
            if o[flag] not in (0.0, 1.0):
                raise ValueError(f"aggregation.options.{flag} must be 0 or 1, got {o[flag]:g}")
        if o["basis_momentum"] and (o["snapshots"] or not o["rank"]):
            raise ValueError("aggregation.options.basis_momentum needs snapshots 0 and a fixed "
                             "aggregation.options.rank (the basis carried across rounds keeps "
                             "its size)")

    def aggregate(self, base: Tensors, updates: list[SiloUpdate],
                  server_state: Tensors) -> AggregateResult:
        if not updates:
            raise ValueError("fedcmp needs at least one update")
        ordered = sorted(updates, key=lambda u: u.silo)
        total = sum(u.samples for u in ordered)
        if total <= 0:
            raise ValueError("fedcmp needs updates with a positive sample count")
        names = [u.silo for u in ordered]
        shares = torch.tensor([u.samples / total for u in ordered], dtype=torch.float64)
        # Clipping scales a silo's whole delta; it is applied as a factor where deltas are read.
        factors, notes = clip_factors(base, ordered, self.robust.get("clip_norm", 0.0))
        state = {k: v.to(torch.float32, copy=True) for k, v in server_state.items()}
        new: Tensors = {}
        weight_sum = torch.zeros(len(names), dtype=torch.float64)
        ranks: dict[str, int] = {}
        for key, x in base.items():
            if x.dim() != 2:
                coeffs = [float(p) * f for p, f in zip(shares, factors, strict=True)]
                step = weighted_mean_delta({key: x}, ordered, coeffs)[key]
                new[key] = (x.double() + self.opts["server_lr"] * step).to(x.dtype)
                continue
            if self.opts["snapshots"]:
                new[key], ranks[key], w = self._snapshot_step(key, x, ordered, factors,
                                                              shares, state)
                weight_sum += w.mean(dim=1)
                continue
            carry = (lambda u, key=key: self._carry_basis(key, u, state)) \
                if self.opts["basis_momentum"] else None
            if x.shape[0] <= EXACT_SVD_MAX:
                x64 = x.double()
                stack = torch.stack([(u.weights[key].double() - x64) * f
                                     for u, f in zip(ordered, factors, strict=True)])
                d, w, u = self._fuse(stack, shares, carry)
                del stack
            else:  # never K deltas of a large tensor at once: sketches of them
                d, w, u = self._fuse_streamed(key, x, ordered, factors, shares, carry)
            ranks[key] = u.shape[1]
            weight_sum += w.mean(dim=1)
            if carry is not None:  # the history lives in the basis: x ← x + η·D
                new[key] = torch.add(x.float(), d.float(),
                                     alpha=self.opts["server_lr"]).to(x.dtype)
                continue
            d, u32 = d.float(), u.float()
            m = _get(state, f"m.{key}", d)
            # m ← β·U(Uᵀm) + D, in place: float32 like the stored state.
            history = u32 @ (u32.T @ m)
            m.copy_(d).add_(history, alpha=self.opts["beta"])
            new[key] = torch.add(x.float(), m, alpha=self.opts["server_lr"]).to(x.dtype)
        n_mat = max(len(ranks), 1)
        report = {}
        for i, n in enumerate(names):
            entry: dict[str, Any] = {"weight": float(shares[i]), "samples": ordered[i].samples,
                                     "reliability": float(weight_sum[i] / n_mat)}
            if n in notes:
                entry["note"] = notes[n]
            report[n] = entry
        report["_fedcmp"] = {"ranks": ranks}
        return AggregateResult(new, {k: v.float() for k, v in state.items()}, report)

    # -- the canonical space ----------------------------------------------------------------
    def _basis(self, stack: torch.Tensor, shares: torch.Tensor) -> torch.Tensor:
        k, out, inp = stack.shape
        a = (stack * shares.sqrt()[:, None, None]).permute(1, 0, 2).reshape(out, k * inp)
        total = float(a.pow(2).sum())
        cap = int(min(self.opts["max_rank"], out, k * inp))
        if total == 0.0:
            return torch.zeros(out, 0, dtype=torch.float64)
        # The left singular vectors are the eigenvectors of the out × out Gram matrix: one
        # GEMM plus a small eigh (only small tensors come here; large ones: _fuse_streamed).
        evals, evecs = torch.linalg.eigh(a @ a.T)
        s = evals.flip(0).clamp_min(0).sqrt()
        u = evecs.flip(1)
        return u[:, : self._rank(s, total, cap)]

    def _rank(self, s: torch.Tensor, total: float, cap: int) -> int:
        """r: fixed by ``rank``, else the fewest singular values keeping ``energy`` of
        ‖A‖²_F (``total``), capped."""
        if self.opts["rank"]:
            return int(min(self.opts["rank"], cap))
        kept = torch.cumsum(s.pow(2), 0) / total
        r = int(torch.searchsorted(kept, torch.tensor(self.opts["energy"] - 1e-12,
                                                      dtype=kept.dtype)).item()) + 1
        return max(1, min(r, cap, s.numel()))

    @staticmethod
    def _agreement(coeff: torch.Tensor, shares: torch.Tensor, weigh_votes: bool = False
                   ) -> torch.Tensor:
        """aᵢⱼ: share-weighted mean cosine between silo i's and the *other* silos' coefficient
        rows on direction j (K × r). Leaving i out matters: a large hostile silo cannot pull
        the consensus it is judged against, and opposite pulls do not cancel into a zero
        consensus that makes every silo look equally reliable.

        ``weigh_votes``: silo k's vote on direction j counts ρₖⱼ = min(1, ‖Cₖⱼ‖ / νⱼ), with
        νⱼ = Σₗ pₗ‖Cₗⱼ‖, so a silo that barely moves along j (its row is noise there) does
        not judge the silos that do — a direction only a few silos carry is not "contested"
        by everyone else's noise."""
        k = coeff.shape[0]
        if k == 1:
            return torch.ones(1, coeff.shape[1], dtype=coeff.dtype)
        norms = coeff.norm(dim=2)  # K × r
        unit = coeff / norms[..., None].clamp_min(1e-12)
        cos = torch.einsum("kri,lri->rkl", unit, unit)  # r × K × K
        if weigh_votes:
            nu = (shares[:, None] * norms).sum(0).clamp_min(1e-12)  # r
            vote = shares[:, None] * (norms / nu).clamp_max(1.0)  # K × r
        else:
            vote = shares[:, None].expand_as(norms)
        weighted = (torch.einsum("rkl,lr->rk", cos, vote)
                    - vote.T * cos.diagonal(dim1=1, dim2=2))
        return (weighted / (1 - shares)).T  # K × r

    def _weigh(self, coeff: torch.Tensor, shares: torch.Tensor
               ) -> tuple[torch.Tensor, torch.Tensor]:
        """Reliability weights (K × r, summing to 1 over silos) and the fused coefficients."""
        if not self.opts["reliability"]:
            w = shares[:, None].expand(-1, coeff.shape[1]).clone()
            return w, torch.einsum("kr,kri->ri", w, coeff)
        conflict_only = bool(self.opts["conflict_only"])
        agree = self._agreement(coeff, shares, weigh_votes=conflict_only)
        if conflict_only:
            agree = agree.clamp_max(0.0)
        logits = shares.log()[:, None] + agree / self.opts["temperature"]
        w = torch.softmax(logits, dim=0)
        return w, torch.einsum("kr,kri->ri", w, coeff)

    def _carry_basis(self, key: str, u: torch.Tensor, state: Tensors) -> torch.Tensor:
        """This round's basis U through the basis momentum (grassmann.py); the carried basis
        and its velocity are server state (float32, as stored; the step in float64)."""
        if u.shape[1] != int(self.opts["rank"]):  # a rank-deficient round: nothing to carry
            return u
        y, v = state.get(f"basis.{key}"), state.get(f"velocity.{key}")
        if y is not None and (y.shape != u.shape or v is None or v.shape != u.shape):
            raise ValueError(f"server state 'basis.{key}' has shape {tuple(y.shape)}, "
                             f"expected {tuple(u.shape)} (options.rank changed?)")
        new, vel = grassmann.step(None if y is None else y.double(),
                                  None if v is None else v.double(), u, self.opts["beta"])
        state[f"basis.{key}"], state[f"velocity.{key}"] = new.float(), vel.float()
        return new

    def _fuse(self, stack: torch.Tensor, shares: torch.Tensor,
              carry: Callable[[torch.Tensor], torch.Tensor] | None = None
              ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Returns (fused delta D, reliability weights K × r, basis U). ``carry`` maps this
        round's basis to the one fused on (basis momentum)."""
        u = self._basis(stack, shares)
        if carry is not None:
            u = carry(u)
        r = u.shape[1]
        coeff = torch.einsum("or,koi->kri", u, stack)  # K × r × in
        if carry is not None:
            u, coeff = _principal_frame(u, coeff, shares)
        w, fused = self._weigh(coeff, shares)
        d = u @ fused
        if self.opts["keep_residual"]:
            resid = stack - torch.einsum("or,kri->koi", u, coeff)
            d = d + torch.einsum("k,koi->oi", shares, resid)
        if r == 0:  # every delta is zero: nothing to weigh
            w = shares[:, None].clone()
        return d, w, u

    # -- the snapshot formulation: two blocked passes --------------------------------------
    def _snapshot_step(self, key: str, x: torch.Tensor, ordered: list[SiloUpdate],
                       factors: list[float], shares: torch.Tensor, state: Tensors
                       ) -> tuple[torch.Tensor, int, torch.Tensor]:
        """New weights, rank and reliability weights (K × r) of one 2-D tensor, with the
        canonical space of snapshots.py. The fused delta D and the projected history
        β·Φ(ΦᵀM) are both Σᵢ θᵢvᵢ, so the new momentum M = Σᵢ θᵢvᵢ is one blocked pass."""
        readers = [block_reader(u.weights, key) for u in ordered]
        # No zero momentum is made for a first round: there is nothing to project.
        old = _get(state, f"m.{key}", x) if f"m.{key}" in state else None
        beta = self.opts["beta"]
        gram, inner = gram_pass(x, readers, factors, old if beta and old is not None else None)
        sigma, v, total = modes(gram, shares)
        r = self._rank(sigma, total, int(min(self.opts["max_rank"], len(ordered)))) if total \
            else 0
        sigma, v = sigma[:r], v[:, :r]
        if r == 0:  # every delta is zero
            theta, w = torch.zeros_like(shares), shares[:, None].clone()
        else:
            coeff = coefficients(sigma, v, shares)  # K × r scalars
            w, fused = self._weigh(coeff[..., None], shares)
            fused = fused[:, 0]
            if self.opts["keep_residual"]:  # D = Σ pᵢvᵢ + Σⱼ φⱼ (c*ⱼ − Σᵢ pᵢcᵢⱼ)
                theta = shares + combination(sigma, v, shares, fused - shares @ coeff)
            else:
                theta = combination(sigma, v, shares, fused)
            if inner is not None:
                theta = theta + beta * combination(sigma, v, shares,
                                                   projection(sigma, v, shares, inner))
        coeffs = [float(t) * f for t, f in zip(theta, factors, strict=True)]
        m = combined_delta(x, readers, coeffs)
        state[f"m.{key}"] = m
        return torch.add(x.float(), m, alpha=self.opts["server_lr"]).to(x.dtype), r, w

    # -- large tensors: a streamed randomized SVD --------------------------------------------
    def _fuse_streamed(self, key: str, x: torch.Tensor, ordered: list[SiloUpdate],
                       factors: list[float], shares: torch.Tensor,
                       carry: Callable[[torch.Tensor], torch.Tensor] | None = None
                       ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``_fuse`` for a tensor too large to stack K deltas of (out > EXACT_SVD_MAX).

        The basis is a randomized SVD (Halko et al., 2011) of A = [√p₁Δ₁ | … | √p_KΔ_K] that
        reads one silo's delta at a time: Y = Σᵢ √pᵢ Δᵢ Ωᵢ (Ωᵢ seeded Gaussian, in × q), one
        power iteration Y = Σᵢ √pᵢ Δᵢ (√pᵢ Δᵢᵀ Q), Q = qr(Y), then Bᵢ = √pᵢ Qᵀ Δᵢ (q × in)
        and the small SVD of B = [B₁ | … | B_K] gives U = Q·U_B and, for free, the
        coefficients Cᵢ = U_Bᵀ Bᵢ / √pᵢ. Three reads of each update; memory is a few
        tensors of this size plus K × q × in, never K × out × in. Float32 GEMMs; the
        fusion itself in float64 as in ``_fuse``."""
        out_dim, in_dim = x.shape
        k = len(ordered)
        sqrt_p = [float(v) for v in shares.sqrt()]
        p = [float(v) for v in shares]
        cap = int(min(self.opts["max_rank"], out_dim, k * in_dim))
        q = int(min(cap + 8, out_dim, k * in_dim))
        x32 = x.float()
        gen = torch.Generator().manual_seed(int(self.opts["seed"]))
        # Every GEMM reads a silo's weights in place: Δᵢ·M = Wᵢ·M − X·M, no Δᵢ is formed.
        # A view when the update is float32 on disk; an encoded one is decoded per use, one
        # silo at a time, never K decoded copies at once.
        def ws(i: int) -> torch.Tensor:
            return ordered[i].weights[key].float()

        f = factors
        mean32, sq = mean_and_energy(x32, [block_reader(u.weights, key) for u in ordered],
                                     [p[i] * f[i] for i in range(k)])
        total = sum(p[i] * f[i] ** 2 * sq[i] for i in range(k))
        if total == 0.0:
            return mean32, shares[:, None].clone(), torch.zeros(out_dim, 0, dtype=torch.float64)
        y = torch.zeros(out_dim, q)
        omega_sum = torch.zeros(in_dim, q)
        for i in range(k):
            omega = torch.randn(in_dim, q, generator=gen)
            y.addmm_(ws(i), omega, alpha=sqrt_p[i] * f[i])
            omega_sum.add_(omega, alpha=sqrt_p[i] * f[i])
        y.addmm_(x32, omega_sum, alpha=-1.0)
        qm = torch.linalg.qr(y).Q
        xq = x32.T @ qm  # in × q
        y = torch.zeros(out_dim, q)
        z_sum = torch.zeros(in_dim, q)
        for i in range(k):  # one power iteration sharpens the spectrum's tail
            w = ws(i)
            z = torch.addmm(xq, w.T, qm, beta=-1.0).mul_(f[i])  # Δᵢᵀ Q
            y.addmm_(w, z, alpha=p[i] * f[i])
            z_sum.add_(z, alpha=p[i] * f[i])
        y.addmm_(x32, z_sum, alpha=-1.0)
        qm = torch.linalg.qr(y).Q
        qx = qm.T @ x32  # q × in
        b = torch.stack([torch.addmm(qx, qm.T, ws(i), beta=-1.0).mul_(sqrt_p[i] * f[i])
                         for i in range(k)])  # K × q × in: Bᵢ = √pᵢ Qᵀ Δᵢ
        gram = torch.einsum("kqi,kpi->qp", b.double(), b.double())  # B·Bᵀ, q × q
        evals, evecs = torch.linalg.eigh(gram)
        s = evals.flip(0).clamp_min(0).sqrt()
        ub = evecs.flip(1)
        ub = ub[:, : self._rank(s, total, cap)]
        u = qm.double() @ ub  # out × r, orthonormal
        coeff = (torch.einsum("qr,kqi->kri", ub, b.double())
                 / shares.sqrt()[:, None, None])
        if carry is not None:  # a basis outside span(Q): its coefficients need one more read
            u = carry(u)
            u32 = u.float()
            ux = u32.T @ x32
            coeff = torch.stack([torch.addmm(ux, u32.T, ws(i), beta=-1.0).mul_(f[i])
                                 for i in range(k)]).double()
            u, coeff = _principal_frame(u, coeff, shares)
        w, fused = self._weigh(coeff, shares)
        if self.opts["keep_residual"]:
            # D = U C* + Σᵢ pᵢ Rᵢ = Σᵢ pᵢ Δᵢ + U (C* − Σᵢ pᵢ Cᵢ), without any Rᵢ.
            fused = fused - torch.einsum("k,kri->ri", shares, coeff)
            d = torch.addmm(mean32, u.float(), fused.float())
        else:
            d = u.float() @ fused.float()
        return d, w, u


def _principal_frame(u: torch.Tensor, coeff: torch.Tensor, shares: torch.Tensor
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """A carried basis rotated within its span onto the principal directions of this round's
    deltas (eigenvectors of Σᵢ pᵢ CᵢCᵢᵀ, largest first), with the coefficients to match.
    Reliability is judged per direction, so it must see the same directions as without the
    carry: at β = 0 basis momentum is then exactly plain Fed-CMP."""
    second = torch.einsum("k,kri,ksi->rs", shares, coeff, coeff)
    rot = torch.linalg.eigh(second).eigenvectors.flip(1)
    return u @ rot, torch.einsum("rs,kri->ksi", rot, coeff)
