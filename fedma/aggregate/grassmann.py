"""Momentum on Fed-CMP's shared basis itself, for ``aggregation.options.basis_momentum: 1``:
the literal reading of "server momentum applied to the shared basis through an orthogonal
projection".

The shared basis of a weight matrix (its span, out × r, orthonormal) is a point on the
Grassmann manifold. Each round brings a new basis U; the server keeps the previous one Y and a
velocity V in Y's tangent space (YᵀV = 0), and steps

    V ← β·Π_Y(V) + Log_Y(U),    Y ← Exp_Y(V),

where Π_Y is the orthogonal projection onto Y's tangent space (vector transport by
projection), Log/Exp are the manifold's exact maps (Edelman, Arias & Smith, 1998), and the
result is re-orthonormalised (QR, the retraction's numerical guard). With β = 0 the new basis
spans exactly this round's U; with β > 0 it keeps moving the way the basis moved before. The
basis comes out in Y's frame (Exp starts from Y), so its columns stay matched across rounds.
"""

from __future__ import annotations

import torch

# Below this smallest singular value of YᵀU the new basis has a direction orthogonal to the
# old one: the log map does not exist (a principal angle of π/2), and the history is reset.
_SINGULAR = 1e-6


def tangent(y: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Π_Y(V) = (I − YYᵀ)V: the part of V in the tangent space at Y."""
    return v - y @ (y.T @ v)


def log_map(y: torch.Tensor, u: torch.Tensor) -> torch.Tensor | None:
    """The tangent vector at Y pointing along the geodesic to span(U) (length: the principal
    angles), or None when span(U) holds a direction orthogonal to span(Y)."""
    yu = y.T @ u
    if float(torch.linalg.svdvals(yu).min()) < _SINGULAR:
        return None
    m = tangent(y, u) @ torch.linalg.inv(yu)
    q, s, ph = torch.linalg.svd(m, full_matrices=False)
    return q @ torch.diag(torch.atan(s)) @ ph


def exp_map(y: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """The point reached from Y along V: Y·P·cos Θ·Pᵀ + Q·sin Θ·Pᵀ for V = Q·Θ·Pᵀ,
    re-orthonormalised with columns kept in Y's orientation."""
    q, theta, ph = torch.linalg.svd(v, full_matrices=False)
    p = ph.T
    out = (y @ p) @ torch.diag(torch.cos(theta)) @ ph + q @ torch.diag(torch.sin(theta)) @ ph
    qr, r = torch.linalg.qr(out)
    return qr * torch.sign(torch.diagonal(r)).where(torch.diagonal(r) != 0, 1.0)[None, :]


def step(y: torch.Tensor | None, v: torch.Tensor | None, u: torch.Tensor, beta: float
         ) -> tuple[torch.Tensor, torch.Tensor]:
    """One round: (new basis, its velocity, already in the new basis' tangent space)."""
    if y is None or v is None:
        return u, torch.zeros_like(u)
    direction = log_map(y, u)
    if direction is None:  # no geodesic to the new basis: start again from it
        return u, torch.zeros_like(u)
    v = beta * tangent(y, v) + direction
    new = exp_map(y, v)
    return new, tangent(new, v)
