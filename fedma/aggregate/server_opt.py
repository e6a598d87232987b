"""Server optimisers on the FedAvg pseudo-gradient (Reddi et al., 2021, "Adaptive Federated
Optimization"; Hsu et al., 2019 for server momentum).

Each round the combined silo delta Δ (weighted mean, or a robust rule) is treated as a
pseudo-gradient and the server takes one optimiser step with it:

- FedAvgM:    m ← β₁·m + Δ;                               x ← x + η·m
- FedAdagrad: v ← v + Δ²;                                 x ← x + η·Δ / (√v + τ)
- FedAdam:    m ← β₁·m + (1−β₁)·Δ;  v ← β₂·v + (1−β₂)·Δ²;  x ← x + η·m / (√v + τ)
- FedYogi:    m as Adam;  v ← v − (1−β₂)·Δ²·sign(v − Δ²);  x ← x + η·m / (√v + τ)

m and v persist across rounds in the server-state artifact (``m.<tensor>``, ``v.<tensor>``),
which is what makes a restarted aggregation Job continue the same optimisation. Adagrad, Adam
and Yogi start v at τ² as in the paper.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch

from fedma.aggregate.base import AggregateResult, SiloUpdate, Tensors
from fedma.aggregate.privacy import PrivacyConfig, privatise
from fedma.aggregate.robust import Combined, combine
from fedma.aggregate.stream import delta_norms, weighted_mean_delta, weighted_step


class ServerOptimizer:
    """FedAvg with a configurable server step; FedAvg itself is ``server_lr=1``, no momentum."""

    name = "fedavg"
    defaults: ClassVar[dict[str, float]] = {"server_lr": 1.0}

    def __init__(self, robust: dict[str, Any] | None = None,
                 privacy: dict[str, Any] | None = None, **options: float):
        unknown = sorted(set(options) - set(self.defaults))
        if unknown:
            raise ValueError(
                f"aggregation.options: unknown option(s) {unknown} for {self.name} (known: "
                f"{', '.join(sorted(self.defaults))})")
        self.opts = {**self.defaults, **{k: float(v) for k, v in options.items()}}
        if self.opts["server_lr"] <= 0:
            raise ValueError("aggregation.options.server_lr must be > 0")
        # How silo deltas become one pseudo-gradient: see robust.py (default: weighted mean).
        self.robust = dict(robust or {})
        self.privacy: PrivacyConfig | None = None
        if privacy and privacy.get("noise_multiplier", 0) > 0:
            if self.robust.get("rule", "mean") != "mean":
                raise ValueError("aggregation.privacy: central DP needs robust.rule 'mean' "
                                 "(its sensitivity bound is for the clipped mean)")
            if not privacy.get("expected_silos"):
                raise ValueError("aggregation.privacy: central DP needs expected_silos, the "
                                 "number of silos the round lists (its noise is calibrated "
                                 "to it)")
            self.privacy = PrivacyConfig(privacy["noise_multiplier"], privacy["clip_norm"],
                                         privacy["delta"], int(privacy["expected_silos"]))

    def aggregate(self, base: Tensors, updates: list[SiloUpdate],
                  server_state: Tensors) -> AggregateResult:
        if not updates:
            raise ValueError(f"{self.name} needs at least one update")
        if sum(u.samples for u in updates) <= 0:
            raise ValueError(f"{self.name} needs updates with a positive sample count")
        ordered = sorted(updates, key=lambda u: u.silo)
        # Server state in float32, as it is stored (the artifact is float32 anyway).
        state = {k: v.to(torch.float32, copy=True) for k, v in server_state.items()}
        extra: dict[str, Any] = {}
        new: Tensors | None = None
        if self.privacy is not None:
            delta, notes, extra["_privacy"] = privatise(
                {u.silo: u.delta(base) for u in ordered}, self.privacy, state)
            combined = Combined(delta, notes)
        elif self.robust.get("rule", "mean") == "mean":
            if type(self).step is ServerOptimizer.step:
                # Plain step (FedAvg): new weights in one pass, no delta in between.
                coeffs, notes = mean_coefficients(base, ordered,
                                                  self.robust.get("clip_norm", 0.0))
                new = weighted_step(base, ordered, coeffs, self.opts["server_lr"])
                combined = Combined({}, notes)
            else:
                combined = streamed_mean(base, ordered, self.robust.get("clip_norm", 0.0))
        else:
            combined = combine({u.silo: u.delta(base) for u in ordered},
                               {u.silo: u.samples for u in ordered}, **self.robust)
        if new is None:
            step = self.step(combined.delta, state)
            # The step is ours (never a caller's tensor): add the base into it in place.
            new = {k: step[k].to(base[k].dtype).add_(base[k]) for k in base}
        total = sum(u.samples for u in ordered)
        # Under central DP the silos are weighted equally, over the silos listed (privacy.py).
        weight = ({u.silo: 1 / self.privacy.expected_silos for u in ordered}
                  if self.privacy is not None
                  else {u.silo: u.samples / total for u in ordered})
        report = {u.silo: {"weight": weight[u.silo], "samples": u.samples,
                           **({"note": combined.notes[u.silo]} if u.silo in combined.notes
                              else {})}
                  for u in ordered}
        report.update(extra)
        if combined.warning:
            report["_robust"] = combined.warning
        return AggregateResult(new, {k: v.float() for k, v in state.items()}, report)

    def step(self, delta: Tensors, state: Tensors) -> Tensors:
        lr = self.opts["server_lr"]
        return {k: d if lr == 1.0 else lr * d for k, d in delta.items()}


def clip_factors(base: Tensors, ordered: list[SiloUpdate], clip_norm: float
                 ) -> tuple[list[float], dict[str, str]]:
    """Per silo, the factor that scales its delta down to ``clip_norm`` (1 when within it)."""
    if clip_norm <= 0:
        return [1.0] * len(ordered), {}
    factors, notes = [], {}
    for u, norm in zip(ordered, delta_norms(base, ordered), strict=True):
        if norm > clip_norm:
            notes[u.silo] = f"clipped from norm {norm:.4g} to {clip_norm:.4g}"
            factors.append(clip_norm / norm)
        else:
            factors.append(1.0)
    return factors, notes


def mean_coefficients(base: Tensors, ordered: list[SiloUpdate], clip_norm: float
                      ) -> tuple[list[float], dict[str, str]]:
    """Each silo's weight in the mean delta: its sample share times its clipping factor."""
    total = sum(u.samples for u in ordered)
    factors, notes = clip_factors(base, ordered, clip_norm)
    return [u.samples / total * f for u, f in zip(ordered, factors, strict=True)], notes


def streamed_mean(base: Tensors, ordered: list[SiloUpdate], clip_norm: float) -> Combined:
    """The sample-weighted mean delta (after optional clipping) in O(model) memory."""
    coeffs, notes = mean_coefficients(base, ordered, clip_norm)
    return Combined(weighted_mean_delta(base, ordered, coeffs), notes)


def _get(state: Tensors, key: str, like: torch.Tensor, fill: float = 0.0) -> torch.Tensor:
    if key not in state:
        state[key] = torch.full_like(like, fill)
    elif state[key].shape != like.shape:
        raise ValueError(f"server state {key!r} has shape {tuple(state[key].shape)}, expected "
                         f"{tuple(like.shape)}")
    return state[key]
