"""The trainable cross-modal projector (LLaVA's ``linear`` and ``mlp2x_gelu``)."""

from __future__ import annotations

import torch
from torch import nn


def build_projector(kind: str, vision_dim: int, text_dim: int, seed: int = 0) -> nn.Module:
    """A projector with deterministic initial weights for ``seed``, so round 0 is reproducible
    and every silo would build the same one."""
    gen_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        if kind == "linear":
            return nn.Sequential(nn.Linear(vision_dim, text_dim))
        if kind == "mlp2x_gelu":
            return nn.Sequential(
                nn.Linear(vision_dim, text_dim), nn.GELU(), nn.Linear(text_dim, text_dim)
            )
        raise ValueError(f"projector type {kind!r} is not one of 'linear', 'mlp2x_gelu'")
    finally:
        torch.random.set_rng_state(gen_state)


def projector_state(projector: nn.Module) -> dict[str, torch.Tensor]:
    """The projector's weights as float32 CPU tensors (what is saved and travels)."""
    return {k: v.detach().float().cpu().clone() for k, v in projector.state_dict().items()}


def load_projector_state(projector: nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """Load weights that travelled, refusing anything that does not fit exactly."""
    own = projector.state_dict()
    if set(own) != set(state):
        raise ValueError(
            f"{source}: projector tensors {sorted(state)} do not match the model's {sorted(own)}"
        )
    for k, v in state.items():
        if tuple(v.shape) != tuple(own[k].shape):
            raise ValueError(
                f"{source}: tensor {k!r} has shape {tuple(v.shape)}, expected {tuple(own[k].shape)}"
            )
        if not torch.isfinite(v).all():
            raise ValueError(f"{source}: tensor {k!r} holds non-finite values")
    projector.load_state_dict({k: v.to(own[k].dtype) for k, v in state.items()})
