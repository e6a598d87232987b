"""In-process federated simulation: many silos' local training in one process, for benchmarks.

A real round runs one training Job per silo. Comparing strategies that way on one CPU machine
would spend most of its time loading backbones and most of the rest pushing small batches
through the frozen LM. Here, instead:

- vision features are computed once per image (the tower is frozen, so they never change);
- every silo keeps its own projector weights and optimiser state, but the K silos' batches go
  through the frozen LM *together* (each projected by its own silo's projector) and the loss
  is the sum of the per-silo mean losses. A silo's projector only touches its own samples, so
  its gradient is exactly the gradient of its own loss, and AdamW is elementwise: each silo
  takes the same steps it would take alone in :func:`fedma.train.torch_engine.train`
  (``tests/test_simulate.py`` checks this against the real engine).

Aggregation uses the product's strategies unchanged (:func:`fedma.aggregate.get_strategy`).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch.func import functional_call

from fedma.aggregate.base import Tensors
from fedma.model.llava import AlignmentModel
from fedma.train.torch_engine import warmup

SiloBatch = tuple[torch.Tensor, list[str]]  # (vision features [B, n_img, D], captions)


class SiloTrainer:
    """One local round for K silos at once, with the torch engine's recipe (fresh AdamW per
    round, linear warmup, optional FedProx term)."""

    def __init__(self, model: AlignmentModel, learning_rate: float, weight_decay: float = 0.0,
                 warmup_steps: int = 0, proximal_mu: float = 0.0, max_grad_norm: float = 0.0):
        self.model = model
        self.max_grad_norm = max_grad_norm
        self.lr = learning_rate
        self.weight_decay = weight_decay
        self.warmup_steps = warmup_steps
        self.mu = proximal_mu

    def train_round(self, starts: Sequence[Tensors], batches: Sequence[Sequence[SiloBatch]]
                    ) -> list[tuple[Tensors, float]]:
        """``batches[k][s]`` is silo k's batch for step s. Returns (weights, mean loss) per silo."""
        if len(starts) != len(batches):
            raise ValueError(f"{len(starts)} start projectors for {len(batches)} silos")
        n_steps = {len(b) for b in batches}
        if len(n_steps) != 1:
            raise ValueError(f"every silo needs the same number of steps, got {sorted(n_steps)}")
        model = self.model
        dtype = next(model.projector.parameters()).dtype
        params = [{k: v.detach().clone().to(dtype).requires_grad_(True) for k, v in s.items()}
                  for s in starts]
        refs = [{k: v.detach().clone() for k, v in p.items()} for p in params]
        opt = torch.optim.AdamW([t for p in params for t in p.values()], lr=self.lr,
                                weight_decay=self.weight_decay)
        sched = warmup(opt, self.warmup_steps)
        totals = [0.0] * len(params)
        steps = next(iter(n_steps))
        model.train()
        for s in range(steps):
            projected, captions, sizes = [], [], []
            for k, p in enumerate(params):
                feats, caps = batches[k][s]
                projected.append(functional_call(model.projector, p, (feats.to(dtype),)))
                captions.extend(caps)
                sizes.append(len(caps))
            batch = model.tokenize(captions)
            nll = model.caption_nll(torch.cat(projected), batch)
            losses = []
            for k, (tok, msk) in enumerate(zip(nll.split(sizes), batch.attention_mask.split(sizes),
                                               strict=True)):
                loss = tok.sum() / msk.sum()
                if not torch.isfinite(loss):
                    raise FloatingPointError(f"silo {k}: loss became {loss.item()} at step {s + 1}")
                if self.mu > 0:
                    loss = loss + 0.5 * self.mu * sum((t - refs[k][n]).pow(2).sum()
                                                      for n, t in params[k].items())
                totals[k] += float(loss.detach())  # as the engine reports it: with the prox term
                losses.append(loss)
            opt.zero_grad(set_to_none=True)
            torch.stack(losses).sum().backward()
            if self.max_grad_norm > 0:  # per silo, as each silo's engine clips its own
                for p in params:
                    torch.nn.utils.clip_grad_norm_(list(p.values()), self.max_grad_norm)
            opt.step()
            sched.step()
        model.eval()
        return [({k: v.detach().float().clone() for k, v in p.items()}, totals[i] / max(steps, 1))
                for i, p in enumerate(params)]
