"""Central differential privacy at the server: clip every silo's delta, average, add Gaussian
noise, and account for the privacy budget across rounds (DP-FedAvg, McMahan et al., 2018).

The unit of privacy is a silo: (ε, δ) bounds what the released projectors reveal about whether
any one silo took part (add/remove adjacency, as the accountant assumes). Each silo's delta is
clipped to L2 norm C; under DP the silos are weighted *equally* (a sample-weighted mean would let
a large silo exceed the sensitivity). The release is the clipped *sum* divided by K₀, the number
of silos the round lists (public, fixed before any silo trains), plus noise N(0, (z·C/K₀)²):
adding or removing one silo moves that by at most C/K₀, so the noise is exactly z times the
sensitivity. Dividing by the number K of updates accepted this round instead would not be: K is
data-dependent, the mean's sensitivity is then 2C/K, and the mechanism would carry half the noise
the reported ε assumes. When silos are excluded (K < K₀) the step is shrunk by K/K₀: the price of
a fixed denominator. Every silo participates in every round (sampling rate 1), so the
accountant sees one Gaussian mechanism per round.

Updates are never *rejected* for their size under DP (``robust.maxUpdateNorm`` is refused with
privacy on, spec.py): a rejection is a data-dependent choice the accountant does not see; the
clip bounds every update instead.

The budget is tracked by Opacus' RDP accountant (a maintained implementation, not ours); the
number of noised rounds so far lives in the server state (``dp.rounds``) so a resumed or retried
aggregation continues the same account.

The noise must be unpredictable to the silos. It is drawn from a generator seeded by
``FEDMA_DP_SEED`` when that is set (from a Kubernetes Secret: reproducible for the operator,
secret from everyone else), through SHA-256 of the whole secret and the round, so every byte of
the secret counts (the generator's seed is 63 bits); otherwise from the operating system's
randomness.
"""

from __future__ import annotations

import hashlib
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
    expected_silos: int  # K₀: the silos the round lists (public)

    def __post_init__(self) -> None:
        if self.expected_silos < 1:
            raise ValueError("central DP needs the number of silos the round lists (>= 1)")
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
        digest = hashlib.sha256(seed.encode() + b"\0" + str(round_salt).encode()).digest()
        gen.manual_seed(int.from_bytes(digest[:8], "big") % (2**63))
    else:
        gen.manual_seed(secrets.randbits(63))
    return gen


def privatise(deltas: dict[str, Tensors], cfg: PrivacyConfig, state: Tensors
              ) -> tuple[Tensors, dict[str, str], dict[str, Any]]:
    """(noised clipped sum / K₀, per-silo notes, privacy report); updates
    ``state['dp.rounds']``."""
    k, k0 = len(deltas), cfg.expected_silos
    if k > k0:
        raise ValueError(f"central DP: {k} updates but the round lists {k0} silos")
    # The clipped, equally weighted mean (the robust module's clipping with unit weights),
    # rescaled to the clipped sum over the public K₀.
    clipped = combine({n: {key: v.double() for key, v in d.items()} for n, d in deltas.items()},
                      dict.fromkeys(deltas, 1), rule="mean", clip_norm=cfg.clip_norm)
    done = int(state.get("dp.rounds", torch.zeros(1)).item()) + 1
    state["dp.rounds"] = torch.tensor([float(done)], dtype=torch.float64)
    sensitivity = cfg.clip_norm / k0
    std = cfg.noise_multiplier * sensitivity
    gen = _generator(done)
    noised = {key: v * (k / k0) + torch.randn(v.shape, generator=gen, dtype=torch.float64) * std
              for key, v in sorted(clipped.delta.items())}
    report = {"epsilon": epsilon(cfg.noise_multiplier, done, cfg.delta), "delta": cfg.delta,
              "rounds": done, "noise_std": std, "sensitivity": sensitivity,
              "noise_multiplier": cfg.noise_multiplier, "clip_norm": cfg.clip_norm,
              "silos": k, "expected_silos": k0}
    return noised, clipped.notes, report
