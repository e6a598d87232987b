"""FedAvgM: FedAvg with server momentum (Hsu et al., 2019). See server_opt.py for the update."""

from __future__ import annotations

from typing import ClassVar

from fedma.aggregate.base import Tensors
from fedma.aggregate.server_opt import ServerOptimizer, _get


class FedAvgM(ServerOptimizer):
    name = "fedavgm"
    defaults: ClassVar[dict[str, float]] = {"server_lr": 1.0, "beta1": 0.9}

    def step(self, delta: Tensors, state: Tensors) -> Tensors:
        out = {}
        for k, d in delta.items():
            m = _get(state, f"m.{k}", d)
            m.mul_(self.opts["beta1"]).add_(d)
            out[k] = self.opts["server_lr"] * m
        return out
