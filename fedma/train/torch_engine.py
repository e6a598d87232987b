"""Plain PyTorch engine: the CPU default and the reference the DeepSpeed engine must match."""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch

from fedma.model.llava import AlignmentModel
from fedma.spec import TrainingSpec

Progress = Callable[[int, float], None]


def warmup(opt: torch.optim.Optimizer, steps: int) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warmup over ``steps`` optimiser steps, then the constant learning rate."""
    return torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / (steps + 1)) if steps else 1.0)


def train(model: AlignmentModel, data: Iterable[tuple[torch.Tensor, list[str]]],
          spec: TrainingSpec, max_steps: int, progress: Progress | None = None
          ) -> tuple[int, float]:
    """Returns (steps, mean loss). A fresh optimiser per round: optimiser state stays local."""
    model.train()
    opt = torch.optim.AdamW(model.projector.parameters(), lr=spec.learning_rate,
                            weight_decay=spec.weight_decay)
    sched = warmup(opt, spec.warmup_steps)
    steps, total = 0, 0.0
    for pixels, captions in data:
        if max_steps and steps >= max_steps:
            break
        loss = model(pixels, captions)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"loss became {loss.item()} at step {steps + 1}")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if spec.max_grad_norm > 0:
            torch.nn.utils.clip_grad_norm_(model.projector.parameters(), spec.max_grad_norm)
        opt.step()
        sched.step()
        steps += 1
        total += float(loss.detach())
        if progress:
            progress(steps, float(loss.detach()))
    model.eval()
    return steps, total / max(steps, 1)
