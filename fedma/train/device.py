"""Where a silo rank trains and in what precision: the pod's GPU when it has one.

A silo Job that requests ``nvidia.com/gpu`` must train there; one without trains on the CPU.
On a GPU the frozen backbones run in bfloat16 (half the memory and the tensor-core rate;
they are never updated, so there is no master copy to keep) while the projector stays in
float32: its optimiser updates full-precision weights, and the update that travels is those
weights, with no bfloat16 rounding offset shared by every silo's delta. TF32 is allowed for
the float32 matmuls that remain (the projector).
"""

from __future__ import annotations

import os

import torch

from fedma.model.llava import AlignmentModel


def silo_device() -> torch.device:
    """This rank's device: ``cuda:LOCAL_RANK`` when CUDA is available, else the CPU."""
    if not torch.cuda.is_available():
        return torch.device("cpu")
    local = int(os.environ.get("LOCAL_RANK", "0"))
    torch.cuda.set_device(local)
    # float32 matmuls (the projector's) on TF32 tensor cores; convolutions already default to it.
    torch.set_float32_matmul_precision("high")
    return torch.device("cuda", local)


def use_bf16(precision: str, device: torch.device) -> bool:
    """``training.precision``: ``auto`` is bfloat16 backbones on a GPU and float32 on a CPU."""
    if precision == "auto":
        return device.type == "cuda"
    return precision == "bf16"


def place(model: AlignmentModel, device: torch.device | None, bf16: bool) -> AlignmentModel:
    """Move the model to ``device``; in bf16, cast only the frozen backbones' weights.

    Buffers keep their dtype (a rotary ``inv_freq`` rounded to bfloat16 would shift every
    position's angle; DeepSpeed's own bf16 cast makes the same exception). A vision tower
    with batch norm stays float32 (:func:`keeps_fp32`). The DeepSpeed engine calls this with
    ``device`` left to DeepSpeed (it partitions and moves the module itself): only the cast
    happens then.
    """
    if bf16:
        modules = [model.lm] if keeps_fp32(model.vision) else [model.vision, model.lm]
        for p in (p for m in modules for p in m.parameters()):
            # ZeRO-3 partitions were loaded in their dtype already (zero3_loading).
            if p.is_floating_point() and not hasattr(p, "ds_id"):
                p.data = p.data.to(torch.bfloat16)
    if device is not None:
        model.to(device)
    return model


def keeps_fp32(module: torch.nn.Module) -> bool:
    """Whether a backbone stays float32 in bf16 training: one with batch norm does. Batch
    norm takes one dtype for weights and running statistics, and in bfloat16 the
    normalisation of the bundled EfficientNet-Lite0 loses most of its features (cosine 0.67
    to the float32 ones on the same images); it is small enough that float32 costs little."""
    return any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in module.modules())
