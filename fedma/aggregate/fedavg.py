"""FedAvg (McMahan et al., 2017): the sample-weighted mean of the silos' projectors.

Implemented as the server-optimiser base with a plain step (x ← x + η·Δ, η = 1 by default),
which it computes as one float32 pass over the updates in silo-name order
(fedma.aggregate.stream.weighted_step), so the result — and its digest — is the same for the
same inputs whatever order the updates arrived in; a retried aggregation Job reproduces the
projector bit for bit.
"""

from __future__ import annotations

from typing import ClassVar

from fedma.aggregate.server_opt import ServerOptimizer


class FedAvg(ServerOptimizer):
    name = "fedavg"
    defaults: ClassVar[dict[str, float]] = {"server_lr": 1.0}
