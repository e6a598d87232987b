"""Central differential privacy at the server: clip every silo's delta, average, add Gaussian
noise, and account for the privacy budget across rounds (DP-FedAvg, McMahan et al., 2018).

The unit of privacy is a silo: (ε, δ) bounds what the released projectors reveal about whether
any one silo took part. Each silo's delta is clipped to L2 norm C; under DP the silos are
weighted *equally* (a sample-weighted mean would let a large silo exceed the C/K sensitivity);
noise N(0, (z·C/K)²) is added to the mean of the K participating silos. Every silo participates
in every round (sampling rate 1), so the accountant sees one Gaussian mechanism per round.

The budget is tracked by Opacus' RDP accountant (a maintained implementation, not ours); the
number of noised rounds so far lives in the server state (``dp.rounds``) so a resumed or retried
aggregation continues the same account.

The noise must be unpredictable to the silos. It is drawn from a generator seeded by
``FEDMA_DP_SEED`` when that is set (from a Kubernetes Secret: reproducible for the operator,
secret from everyone else), otherwise from the operating system's randomness.
"""

from __future__ import annotations

import os
import secrets
from dataclasses import dataclass
from typing import Any

import torch

from fedma.aggregate.base import Tensors
from fedma.aggregate.robust import combine


@dataclass(frozen=True)
class PrivacyConfig:
    noise_multiplier: float  # z
    clip_norm: float  # C
    delta: float  # δ of the reported (ε, δ)

    def __post_init__(self) -> None:
        if self.noise_multiplier <= 0:
            raise ValueError("aggregation.privacy.noiseMultiplier must be > 0")
        if self.clip_norm <= 0:
            raise ValueError("aggregation.privacy.clipNorm must be > 0 when privacy is on")
        if not 0 < self.delta < 1:
            raise ValueError("aggregation.privacy.delta must be in (0, 1)")


def epsilon(noise_multiplier: float, rounds: int, delta: float) -> float:
    """ε after ``rounds`` Gaussian mechanisms with sampling rate 1 (Opacus RDP accountant)."""
    from opacus.accountants import RDPAccountant

    acc = RDPAccountant()
    acc.history = [(noise_multiplier, 1.0, rounds)]
    return float(acc.get_epsilon(delta=delta))


def _generator(round_salt: int) -> torch.Generator:
    seed = os.environ.get("FEDMA_DP_SEED")
    gen = torch.Generator()
    if seed:
        gen.manual_seed((int.from_bytes(seed.encode()[:8].ljust(8, b"\0"), "big") + round_salt)
                        % (2**63))
    else:
        gen.manual_seed(secrets.randbits(63))
    return gen


def privatise(deltas: dict[str, Tensors], cfg: PrivacyConfig, state: Tensors
              ) -> tuple[Tensors, dict[str, str], dict[str, Any]]:
    """(noised mean delta, per-silo notes, privacy report); updates ``state['dp.rounds']``."""
    k = len(deltas)
    # The clipped, equally weighted mean: the robust module's clipping with unit weights.
    clipped = combine({n: {key: v.double() for key, v in d.items()} for n, d in deltas.items()},
                      dict.fromkeys(deltas, 1), rule="mean", clip_norm=cfg.clip_norm)
    done = int(state.get("dp.rounds", torch.zeros(1)).item()) + 1
    state["dp.rounds"] = torch.tensor([float(done)], dtype=torch.float64)
    std = cfg.noise_multiplier * cfg.clip_norm / k
    gen = _generator(done)
    noised = {key: v + torch.randn(v.shape, generator=gen, dtype=torch.float64) * std
              for key, v in sorted(clipped.delta.items())}
    report = {"epsilon": epsilon(cfg.noise_multiplier, done, cfg.delta), "delta": cfg.delta,
              "rounds": done, "noise_std": std, "noise_multiplier": cfg.noise_multiplier,
              "clip_norm": cfg.clip_norm, "silos": k}
    return noised, clipped.notes, report
