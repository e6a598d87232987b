"""DeepSpeed engine: ZeRO-3 partitions the frozen backbones across the silo's ranks.

On GPUs this is what lets a silo align a projector for an LLM that does not fit one device:
every rank holds ``1/world`` of the frozen vision and language weights and gathers each layer
just in time. Only the projector is given to the optimiser. On CPU (``DS_ACCELERATOR=cpu``,
gloo) the same code path runs, which is how the tests exercise it for real.

Launch with ``torchrun --nproc_per_node N fedma train-silo ...`` (or the ``deepspeed``
launcher); without a launcher it runs as a single rank.
"""

from __future__ import annotations

import math
import os
import socket
import sys
from collections.abc import Callable, Iterable
from typing import Any

import torch

from fedma.model.llava import AlignmentModel
from fedma.spec import TrainingSpec

Progress = Callable[[int, float], None]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def init_distributed() -> tuple[int, int]:
    """Initialise torch.distributed for DeepSpeed; returns (rank, world size)."""
    if not torch.cuda.is_available():
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    if "RANK" not in os.environ:  # single process without a launcher (e.g. under pytest)
        os.environ.update({"RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "0",
                           "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(_free_port())})
    import deepspeed
    import deepspeed.comm.torch

    # The CPU backend JIT-compiles a shared-memory all-reduce op (~50 s) that only inference
    # uses; training does not need it.
    sys.modules["deepspeed.comm.torch"].build_shm_op = lambda: None  # type: ignore[attr-defined]
    if not torch.distributed.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        deepspeed.init_distributed(dist_backend=backend)
    return torch.distributed.get_rank(), torch.distributed.get_world_size()


def ds_config(spec: TrainingSpec, world: int) -> dict[str, Any]:
    micro = max(1, math.ceil(spec.batch_size / world))
    return {
        "train_batch_size": micro * world,
        "train_micro_batch_size_per_gpu": micro,
        "gradient_accumulation_steps": 1,
        "gradient_clipping": spec.max_grad_norm,  # DeepSpeed's 0 is off, as ours
        "zero_optimization": {"stage": spec.deepspeed.zero_stage},
        # Off whatever training.precision says: DeepSpeed's bf16 casts every parameter, the
        # projector's too, and builds the optimiser's float32 copy from the rounded weights,
        # so each silo's delta would carry the same rounding offset. fedma.train.device casts
        # the frozen backbones instead; the projector, its gradients and the update stay fp32.
        "bf16": {"enabled": False},
        "steps_per_print": 10**9,
        "wall_clock_breakdown": False,
    }


def zero3_loading(spec: TrainingSpec, world: int, bf16: bool) -> object | None:
    """Under ZeRO-3, the config that makes the backbones load straight into partitions.

    While this object lives, transformers' ``from_pretrained`` builds the model under
    ``deepspeed.zero.Init`` and loads the checkpoint one module at a time into each rank's
    ``1/world`` partition (rank 0 reads each tensor, gathered only for its own module), and
    fedma's EfficientNet loader does the same: no rank ever holds the whole frozen model.
    transformers keeps only a weak reference, so the caller must keep it as long as the
    model. Its ``bf16`` is the dtype of the frozen partitions; the engine's own config keeps
    bf16 off (see :func:`ds_config`). ``None`` below stage 3, which does not partition
    parameters.
    """
    if spec.deepspeed.zero_stage != 3:
        return None
    from transformers.integrations import HfDeepSpeedConfig

    cfg = ds_config(spec, world)
    cfg["bf16"] = {"enabled": bf16}
    return HfDeepSpeedConfig(cfg)


def train(model: AlignmentModel, data: Iterable[tuple[torch.Tensor, list[str], int]],
          spec: TrainingSpec, max_steps: int, progress: Progress | None = None,
          load_peak_bytes: int | None = None
          ) -> tuple[int, float, dict[str, torch.Tensor], dict[str, Any]]:
    """Returns (steps, mean loss, gathered projector state, partition report).

    ``data`` is this rank's :func:`fedma.train.batches.rank_batches`: one item per global
    batch on every rank. Each rank's loss is its summed caption NLL over the global batch's
    mean tokens per rank, so the averaged gradient is that of the mean over all the global
    batch's caption tokens, however unevenly a short batch splits.
    """
    import deepspeed

    rank, world = init_distributed()
    # A torch optimiser: DeepSpeed's fused Adam would JIT-compile for minutes on CPU.
    opt = torch.optim.AdamW(model.projector.parameters(), lr=spec.learning_rate,
                            weight_decay=spec.weight_decay)
    from fedma.train.torch_engine import warmup

    engine, *_ = deepspeed.initialize(model=model, optimizer=opt,
                                      lr_scheduler=warmup(opt, spec.warmup_steps),
                                      config=ds_config(spec, world))
    # Buffers are never partitioned, and a model built under zero.Init is not moved by the
    # engine: put any buffer (a rotary inv_freq computed on the CPU) on the engine's device.
    for b in model.buffers():
        b.data = b.data.to(engine.device)
    engine.train()
    steps, total = 0, 0.0
    for pixels, captions, keep in data:
        if max_steps and steps >= max_steps:
            break
        batch = model.tokenize(captions)  # on the engine's device
        tokens = torch.tensor([float(sum(batch.lengths[:keep]))], device=model.device)
        torch.distributed.all_reduce(tokens)
        loss = engine(pixels, batch, keep=keep, tokens=tokens.clamp(min=1) / world)
        engine.backward(loss)
        engine.step()
        mean = loss.detach().float().clone()
        torch.distributed.all_reduce(mean)
        mean /= world
        if not torch.isfinite(mean):
            raise FloatingPointError(f"loss became {mean.item()} at step {steps + 1}")
        steps += 1
        total += float(mean)
        if progress and rank == 0:
            progress(steps, float(mean))

    # Frozen parameters ZeRO-3 should have released (all but those under its persistence
    # threshold, kept whole on purpose) and that are still gathered after the last step.
    gathered = sum(1 for m in (model.vision, model.lm) for p in m.parameters()
                   if hasattr(p, "ds_status") and not p.ds_persist
                   and p.ds_status.name != "NOT_AVAILABLE")
    params = list(model.projector.named_parameters())
    with deepspeed.zero.GatheredParameters([p for _, p in params], modifier_rank=None):
        state = {n: p.detach().float().cpu().clone() for n, p in params}
    report = partition_report(model, rank, world, load_peak_bytes)
    report["frozen_gathered_after_training"] = gathered
    return steps, total / max(steps, 1), state, report


def partition_report(model: AlignmentModel, rank: int, world: int,
                     load_peak_bytes: int | None = None) -> dict[str, Any]:
    """How many frozen-backbone elements each rank holds, and the host memory its backbone
    load peaked at (fedma.train.memory), gathered on every rank."""
    local = total = 0
    for module in (model.vision, model.lm):
        for p in module.parameters():
            if hasattr(p, "ds_tensor"):
                local += p.ds_tensor.numel()
                total += p.ds_numel
            else:
                local += p.numel()
                total += p.numel()
    per_rank: list[tuple[int, int | None]] = [(0, None)] * world
    torch.distributed.all_gather_object(per_rank, (local, load_peak_bytes))
    return {"world_size": world, "frozen_elements_total": total,
            "frozen_elements_per_rank": [n for n, _ in per_rank],
            "load_peak_bytes_per_rank": [b for _, b in per_rank]}
