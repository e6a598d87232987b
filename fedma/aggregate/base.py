"""The strategy interface (shaped after Flower's strategies, minus the networking).

A strategy is pure: the current global projector, the accepted silo updates and the server
state (momentum, second moments, ...) go in; the next global projector, the next server state
and a per-silo report come out. No I/O, so strategies are unit-tested on tensors and the same
object runs in the aggregation Job and in benchmarks.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch

Tensors = dict[str, torch.Tensor]


@dataclass(frozen=True)
class SiloUpdate:
    silo: str
    # The silo's locally trained projector (full weights, not a delta). In the aggregation
    # Job a MappedTensors: read in place from a verified local copy, not held in memory.
    weights: Mapping[str, torch.Tensor]
    samples: int
    loss: float = float("nan")

    def delta(self, base: Tensors) -> Tensors:
        return {k: self.weights[k].double() - base[k].double() for k in base}


@dataclass
class AggregateResult:
    weights: Tensors
    server_state: Tensors = field(default_factory=dict)
    report: dict[str, dict[str, Any]] = field(default_factory=dict)


class Strategy(Protocol):
    name: str

    def aggregate(self, base: Tensors, updates: list[SiloUpdate],
                  server_state: Tensors) -> AggregateResult: ...


def get_strategy(name: str, options: dict[str, float] | None = None,
                 robust: dict[str, Any] | None = None,
                 privacy: dict[str, Any] | None = None) -> Strategy:
    from fedma.aggregate.fedadaptive import FedAdagrad, FedAdam, FedYogi
    from fedma.aggregate.fedavg import FedAvg
    from fedma.aggregate.fedavgm import FedAvgM
    from fedma.aggregate.fedcmp import FedCMP

    registry: dict[str, type] = {"fedavg": FedAvg, "fedavgm": FedAvgM, "fedadagrad": FedAdagrad,
                                 "fedadam": FedAdam, "fedyogi": FedYogi, "fedcmp": FedCMP,
                                 # FedProx differs on the silo side only (training.proximalMu).
                                 "fedprox": FedAvg}
    if name not in registry:
        raise ValueError(f"aggregation.strategy {name!r} is not one of {sorted(registry)}")
    return registry[name](robust=robust, privacy=privacy, **(options or {}))
