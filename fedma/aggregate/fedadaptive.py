"""FedAdagrad, FedAdam and FedYogi (Reddi et al., 2021). See server_opt.py for the updates.

The three differ only in how the second moment v accumulates, so they share one step.
"""

from __future__ import annotations

from typing import ClassVar

import torch

from fedma.aggregate.base import Tensors
from fedma.aggregate.server_opt import ServerOptimizer, _get


class _Adaptive(ServerOptimizer):
    # η = 0.01, not the papers' usual 0.1: m/(√v + τ) is about ±1 per weight, so η is the
    # per-weight step of a round, and 0.1 moved a projector with weights of about 0.03 by 0.1
    # a round. Chosen by bench/tune.py on a seed no table reports (docs/quality.md).
    defaults: ClassVar[dict[str, float]] = {
        "server_lr": 0.01, "beta1": 0.9, "beta2": 0.99, "tau": 1e-3}

    def second_moment(self, v: torch.Tensor, d2: torch.Tensor) -> None:
        raise NotImplementedError

    def step(self, delta: Tensors, state: Tensors) -> Tensors:
        b1, tau, lr = self.opts["beta1"], self.opts["tau"], self.opts["server_lr"]
        out = {}
        for k, d in delta.items():
            m = _get(state, f"m.{k}", d)
            v = _get(state, f"v.{k}", d, fill=tau * tau)
            m.mul_(b1).add_(d, alpha=1 - b1)
            self.second_moment(v, d * d)
            out[k] = lr * m / (v.sqrt() + tau)
        return out


class FedAdagrad(_Adaptive):
    name = "fedadagrad"
    # Reddi et al. use momentum for all three; β₁ = 0 (plain Adagrad) is the safer default here.
    defaults: ClassVar[dict[str, float]] = {"server_lr": 0.01, "tau": 1e-3, "beta1": 0.0}

    def second_moment(self, v: torch.Tensor, d2: torch.Tensor) -> None:
        v.add_(d2)


class FedAdam(_Adaptive):
    name = "fedadam"

    def second_moment(self, v: torch.Tensor, d2: torch.Tensor) -> None:
        v.mul_(self.opts["beta2"]).add_(d2, alpha=1 - self.opts["beta2"])


class FedYogi(_Adaptive):
    name = "fedyogi"

    def second_moment(self, v: torch.Tensor, d2: torch.Tensor) -> None:
        v.sub_((1 - self.opts["beta2"]) * d2 * torch.sign(v - d2))
