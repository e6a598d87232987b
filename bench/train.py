"""Silo training-step benchmark: fedma's trainer against the loop a user would otherwise write
with transformers' LlavaForConditionalGeneration, alternating the two in one run.

Both sides get the same backbones and the same starting projector: a CLIP vision tower of
ViT-B/32 size at 224 px (random weights: no CLIP checkpoint can be fetched here; throughput
does not depend on the values) and the real SmolLM2-135M, frozen; LLaVA's 2-layer GELU
projector trained with AdamW on the same batches of real MNIST images and captions. The
baseline is LLaVA's stage-1 recipe as transformers runs it: ``[<image>]×49 + caption`` as
input ids, labels −100 at the image positions, ``model(...).loss``. fedma runs
``fedma.train.torch_engine.train`` over ``AlignmentModel``, as a silo Job does.

Measured in blocks that alternate (ours, baseline, ours, ...), median over blocks: samples/s,
peak anonymous memory above the model's, the loss of each step on both sides (equal curves
are the precondition of the comparison), and the achieved FLOP/s of our step against this
machine's dense float32 matmul FLOP/s measured in the same run. FLOPs per sample are counted
from the shapes (matmuls and attention only): the vision forward, the LM forward, the LM's
input-gradient backward (frozen weights: dX only), the LM head at caption positions, and the
projector forward and backward.

    python bench/train.py [--batch 8] [--steps 6] [--blocks 3] [--out bench/results]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

import torch  # noqa: E402
from aggregate import PeakMemory  # noqa: E402

VISION = {"hidden_size": 768, "intermediate_size": 3072, "num_hidden_layers": 12,
          "num_attention_heads": 12, "image_size": 224, "patch_size": 32}


def matmul_flops(n: int = 2048, repeats: int = 5) -> float:
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t0)
    return 2 * n**3 / best


def data(n: int) -> tuple[list[Any], list[str]]:
    from PIL import Image

    from fedma.data.demo import attributes, caption, load_mnist

    images, labels = load_mnist()
    weights, slants = attributes(images[:n], labels[:n])
    pics = [Image.fromarray(images[i].reshape(28, 28).astype("uint8")).convert("RGB")
            for i in range(n)]
    caps = [caption(int(labels[i]), weights[i], slants[i]) for i in range(n)]
    return pics, caps


def build(work: Path) -> tuple[Any, Any, Any]:
    """(fedma AlignmentModel, transformers Llava model, tokenizer), sharing every weight."""
    from transformers import (
        CLIPVisionConfig,
        CLIPVisionModel,
        LlavaConfig,
        LlavaForConditionalGeneration,
    )

    from fedma.model.bundled import smollm2_135m
    from fedma.model.llava import AlignmentModel
    from fedma.model.lm import load_language_model
    from fedma.model.projector import build_projector
    from fedma.model.vision import HFVisionTower

    torch.manual_seed(0)
    vcfg = CLIPVisionConfig(**VISION)
    CLIPVisionModel(vcfg).save_pretrained(work / "vision")
    lm_path, _ = smollm2_135m()
    lm, tok = load_language_model(str(lm_path), None)
    vision = HFVisionTower(str(work / "vision"), layer=-2, image_size=224)
    projector = build_projector("mlp2x_gelu", VISION["hidden_size"], lm.config.hidden_size,
                                seed=0)
    ours = AlignmentModel(vision, lm, tok, projector, max_caption_tokens=48)

    cfg = LlavaConfig(vision_config=vcfg, text_config=lm.config, image_token_index=0,
                      projector_hidden_act="gelu", vision_feature_layer=-2,
                      vision_feature_select_strategy="default",
                      image_seq_length=(224 // 32) ** 2)
    base = LlavaForConditionalGeneration(cfg)
    base.model.vision_tower.load_state_dict(vision.module.state_dict())
    base.model.language_model.load_state_dict(lm.base_model.state_dict())
    base.lm_head.load_state_dict(lm.get_output_embeddings().state_dict())
    proj = base.model.multi_modal_projector
    proj.linear_1.load_state_dict(projector[0].state_dict())
    proj.linear_2.load_state_dict(projector[2].state_dict())
    for name, p in base.named_parameters():
        p.requires_grad_(name.startswith("model.multi_modal_projector"))
    base.eval()  # frozen towers: no dropout, as fedma's backbones
    return ours, base, tok


def baseline_step(model: Any, tok: Any, pixels: torch.Tensor, captions: list[str],
                  n_img: int) -> torch.Tensor:
    """LLaVA stage 1 with transformers: image placeholders then the caption, loss on the
    caption only (labels −100 elsewhere, padding too)."""
    enc = tok(captions, return_tensors="pt", padding=True, truncation=True, max_length=48,
              add_special_tokens=False)
    b = enc["input_ids"].shape[0]
    img = torch.zeros(b, n_img, dtype=torch.long)  # image_token_index 0
    ids = torch.cat([img, enc["input_ids"]], 1)
    mask = torch.cat([torch.ones(b, n_img, dtype=enc["attention_mask"].dtype),
                      enc["attention_mask"]], 1)
    labels = torch.cat([torch.full((b, n_img), -100), enc["input_ids"].masked_fill(
        enc["attention_mask"] == 0, -100)], 1)
    return model(input_ids=ids, pixel_values=pixels, attention_mask=mask, labels=labels).loss


def flops_per_sample(ours: Any, n_img: int, caption_tokens: float, vocab: int) -> dict:
    v = ours.vision
    dv, lv = v.config.hidden_size, v.config.num_hidden_layers
    tv = n_img + 1
    vision = lv * (2 * tv * (4 * dv * dv + 2 * dv * v.config.intermediate_size)
                   + 4 * tv * tv * dv)
    c = ours.lm.config
    d, layers, kv = c.hidden_size, c.num_hidden_layers, c.num_key_value_heads
    head = d // c.num_attention_heads
    per_tok = 2 * (2 * d * d + 2 * d * kv * head + 3 * d * c.intermediate_size)
    t = n_img + caption_tokens
    lm_fwd = layers * (t * per_tok + 4 * t * t * d / 2)  # causal attention: half the pairs
    lm_bwd = lm_fwd  # frozen weights: input gradients only, one matmul per forward matmul
    head_flops = 2 * caption_tokens * d * vocab * 2  # forward and dX
    p = sum(m.numel() for m in ours.projector.parameters() if m.dim() == 2)
    proj = 6 * p * n_img
    total = vision + lm_fwd + lm_bwd + head_flops + proj
    return {"vision_forward": vision, "lm_forward": lm_fwd, "lm_input_backward": lm_bwd,
            "lm_head_caption": head_flops, "projector": proj, "total": total}


def gradient_agreement(ours: Any, base: Any, tok: Any, px: torch.Tensor, caps: list[str],
                       n_img: int, step: Any = None) -> float:
    """‖g_ours − g_baseline‖ / ‖g_ours‖ of the projector gradient on one batch, both models at
    the same weights: the two compute the same function (AdamW then amplifies float
    rounding in near-zero gradient components, so loss curves drift apart by ~1e-2)."""
    for m in (ours.projector, base.model.multi_modal_projector):
        m.zero_grad(set_to_none=True)
    ours(px, caps).backward()
    (step or baseline_step)(base, tok, px, caps, n_img).backward()
    pr = base.model.multi_modal_projector
    g1 = torch.cat([q.grad.reshape(-1) for q in ours.projector.parameters()])
    g2 = torch.cat([q.grad.reshape(-1) for q in (pr.linear_1.weight, pr.linear_1.bias,
                                                 pr.linear_2.weight, pr.linear_2.bias)])
    for m in (ours.projector, base.model.multi_modal_projector):
        m.zero_grad(set_to_none=True)
    return float((g1 - g2).norm() / g1.norm())


def profile_step(ours: Any, px: torch.Tensor, caps: list[str], repeats: int = 3) -> dict:
    """Where one of our steps spends its time (best of ``repeats``), by phase."""
    import torch.nn.functional as F

    best: dict[str, float] = {}
    opt = torch.optim.AdamW(ours.projector.parameters(), lr=0.0)
    for _ in range(repeats):
        t = {}
        t0 = time.perf_counter()
        feats = ours.image_features(px)
        t["vision forward (no grad)"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        batch = ours.tokenize(caps)
        proj = ours.projector(feats)
        h, n = ours.run_embedded(proj, batch)
        h = ours._caption_positions(h, n, batch)
        t["projector + LM forward"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        logits = ours.lm.get_output_embeddings()(h).float()
        labels = batch.input_ids.masked_fill(batch.attention_mask == 0, -100)
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1),
                               ignore_index=-100)
        t["LM head at caption positions + loss"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        loss.backward()
        t["backward (LM input gradients, projector)"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        opt.step()
        opt.zero_grad(set_to_none=True)
        t["optimizer"] = time.perf_counter() - t0
        best = {k: min(v, best.get(k, float("inf"))) for k, v in t.items()}
    return best


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--steps", type=int, default=6, help="steps per block")
    p.add_argument("--blocks", type=int, default=3, help="blocks per side, alternating")
    p.add_argument("--out", default="bench/results")
    args = p.parse_args(argv)

    from fedma.spec import TrainingSpec
    from fedma.train import torch_engine

    n = args.batch * args.steps * args.blocks
    pics, caps = data(n)
    with tempfile.TemporaryDirectory(prefix="fedma-bench-train-") as work:
        ours, base, tok = build(Path(work))
    n_img = (224 // 32) ** 2
    pixels = torch.stack([ours.vision_adapter.preprocess(im) for im in pics])
    batches = [(pixels[i : i + args.batch], caps[i : i + args.batch])
               for i in range(0, n, args.batch)]
    spec = TrainingSpec(batchSize=args.batch, learningRate=1e-3)
    opt = torch.optim.AdamW([q for q in base.parameters() if q.requires_grad], lr=1e-3,
                            weight_decay=spec.weight_decay)
    sched = torch_engine.warmup(opt, spec.warmup_steps)
    peak_flops = matmul_flops()
    print(f"dense fp32 matmul (2048², best of 5): {peak_flops / 1e9:.0f} GFLOP/s; "
          f"{torch.get_num_threads()} threads")

    agreement = gradient_agreement(ours, base, tok, *batches[0], n_img)
    print(f"projector gradients, fedma vs transformers on one batch: relative difference "
          f"{agreement:.1e}")
    ours_rate, base_rate, ours_mem, base_mem = [], [], [], []
    ours_loss, base_loss = [], []
    # fedma's engine keeps a fresh optimiser per call (one round); a block here is one call,
    # so both sides restart AdamW's moments each block the same way.
    for blk in range(args.blocks):
        chunk = batches[blk * args.steps : (blk + 1) * args.steps]
        with PeakMemory() as mem:
            t0 = time.perf_counter()
            steps, _ = torch_engine.train(ours, iter(chunk), spec, 0,
                                          lambda s, loss: ours_loss.append(loss))
            ours_rate.append(steps * args.batch / (time.perf_counter() - t0))
        ours_mem.append(mem.extra)
        opt = torch.optim.AdamW([q for q in base.parameters() if q.requires_grad],
                                lr=spec.learning_rate, weight_decay=spec.weight_decay)
        sched = torch_engine.warmup(opt, spec.warmup_steps)
        with PeakMemory() as mem:
            t0 = time.perf_counter()
            for px, cp in chunk:
                loss = baseline_step(base, tok, px, cp, n_img)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
                base_loss.append(float(loss.detach()))
            base_rate.append(len(chunk) * args.batch / (time.perf_counter() - t0))
        base_mem.append(mem.extra)
        print(f"block {blk + 1}: fedma {ours_rate[-1]:.2f} samples/s, transformers "
              f"{base_rate[-1]:.2f} samples/s")

    profile = profile_step(ours, *batches[0])
    caption_tokens = statistics.mean(len(tok(c, add_special_tokens=False)["input_ids"])
                                     for c in caps)
    flops = flops_per_sample(ours, n_img, caption_tokens, ours.lm.config.vocab_size)
    ours_sps, base_sps = statistics.median(ours_rate), statistics.median(base_rate)
    achieved = flops["total"] * ours_sps
    loss_gap = max(abs(a - b) for a, b in zip(ours_loss, base_loss, strict=True))
    first_gap = max(abs(a - b) for a, b in zip(ours_loss[: args.steps],
                                                base_loss[: args.steps], strict=True))
    results = [
        {"metric": "train.samples_per_s", "ours": ours_sps, "reference": base_sps,
         "reference_is": "baseline", "ratio": ours_sps / base_sps, "target": 1.5,
         "better": "higher"},
        {"metric": "train.achieved_flops", "ours": achieved, "reference": peak_flops,
         "reference_is": "bound", "ratio": achieved / peak_flops, "target": None,
         "better": "higher"},
        {"metric": "train.peak_extra_memory_bytes", "ours": statistics.median(ours_mem),
         "reference": statistics.median(base_mem), "reference_is": "baseline",
         "ratio": statistics.median(ours_mem) / max(statistics.median(base_mem), 1),
         "target": None, "better": "lower"},
        {"metric": "train.gradient_relative_difference", "ours": agreement, "reference": 0.0,
         "reference_is": "baseline", "ratio": agreement, "target": None, "better": "lower"},
    ]
    detail = {"batch": args.batch, "steps_per_block": args.steps, "blocks": args.blocks,
              "threads": torch.get_num_threads(), "matmul_flops": peak_flops,
              "flops_per_sample": flops, "ours_samples_per_s": ours_rate,
              "baseline_samples_per_s": base_rate, "ours_loss": ours_loss,
              "baseline_loss": base_loss, "ours_peak_extra_bytes": ours_mem,
              "baseline_peak_extra_bytes": base_mem, "caption_tokens": caption_tokens,
              "max_step_loss_gap": loss_gap, "first_block_loss_gap": first_gap,
              "profile_seconds": profile}
    Path(args.out).mkdir(parents=True, exist_ok=True)
    (Path(args.out) / "train.json").write_text(json.dumps(results, indent=1) + "\n")
    (Path(args.out) / "train-detail.json").write_text(json.dumps(detail, indent=1) + "\n")
    print(f"fedma {ours_sps:.2f} samples/s vs transformers {base_sps:.2f} "
          f"({ours_sps / base_sps:.2f}×); {achieved / 1e9:.1f} GFLOP/s achieved = "
          f"{achieved / peak_flops:.1%} of matmul; loss gap {first_gap:.1e} over the first "
          f"{args.steps} steps, {loss_gap:.1e} over all (AdamW amplifies rounding)")
    total = sum(profile.values())
    print(f"our step, by phase (batch {args.batch}):")
    for k, v in profile.items():
        print(f"  {k:45s} {v * 1000:7.1f} ms  {v / total:5.1%}")
    print("FLOPs per sample by part: " + ", ".join(
        f"{k} {v / 1e9:.2f} G" for k, v in flops.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
