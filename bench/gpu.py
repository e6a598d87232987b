"""The GPU check, one prepared script: silo Jobs that train on their GPU, and fedma's step at
LLaVA-1.5-7B shapes against transformers' on the same weights.

(a) **Smoke**: ``fedma train-silo`` (the silo Job's entrypoint, as a subprocess) with the torch
    engine and with the DeepSpeed engine (ZeRO-3, one rank) on random-initialised backbones of
    the bundled shapes (SmolLM2-135M; EfficientNet-Lite0 where ``efficientnet_lite_pytorch`` is
    installed, else a CLIP ViT-B/32 tower), reporting the device and precision each trained in.
(b) **LLaVA-1.5-7B shapes**: a random-initialised CLIP ViT-L/14-336 tower and a Llama-2-7B
    config LM (built offline, frozen, bf16 on a GPU) with the mlp2x_gelu projector, built once
    as transformers' ``LlavaForConditionalGeneration``; fedma's ``AlignmentModel`` is assembled
    from the same modules (the projector a float32 copy, as a silo keeps it). Blocks alternate
    (fedma, transformers, ...): samples/s, peak GPU memory per side, achieved TFLOP/s of the
    whole step and of the LM alone (its forward and input-gradient backward timed on their
    own), against the dense bf16 matmul rate measured in the same run. The baseline is LLaVA's
    stage-1 step as transformers runs it (``[<image>]×576 + caption``, labels −100 at the image
    positions, ``model(...).loss``, AdamW on the bf16 projector).

Targets (issue 14): fedma ≥ 1.5× the transformers baseline, ≥ 40 % of the measured bf16 peak
in the LM's matmuls. Reference: LLaVA-1.5-7B's stage-1 recipe runs about 44 samples/s on 8×A100
(about 5.5 per GPU, at batch 32 per GPU with DeepSpeed).

    python bench/gpu.py [--device cuda] [--batch 16] [--out bench/results]
    python bench/gpu.py --device cpu --tiny          # CI: tiny shapes, every code path

It exits non-zero if a smoke run fails or does not train where it was asked to, or if the two
steps disagree on the same weights (loss, and on fp32 runs the projector gradient).
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
from train import flops_per_sample, gradient_agreement  # noqa: E402

# LLaVA-1.5-7B: CLIP ViT-L/14 at 336 px (576 patches), Llama-2-7B, mlp2x_gelu.
CLIP_L_336 = {"hidden_size": 1024, "intermediate_size": 4096, "num_hidden_layers": 24,
              "num_attention_heads": 16, "image_size": 336, "patch_size": 14,
              "projection_dim": 768}
LLAMA2_7B = {"vocab_size": 32000, "hidden_size": 4096, "intermediate_size": 11008,
             "num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 32,
             "max_position_embeddings": 4096, "rms_norm_eps": 1e-5}
# The bundled backbones' shapes (fedma demo): SmolLM2-135M; the CLIP fallback is ViT-B/32.
SMOLLM2_135M = {"vocab_size": 49152, "hidden_size": 576, "intermediate_size": 1536,
                "num_hidden_layers": 30, "num_attention_heads": 9, "num_key_value_heads": 3,
                "max_position_embeddings": 2048, "tie_word_embeddings": True}
CLIP_B_32 = {"hidden_size": 768, "intermediate_size": 3072, "num_hidden_layers": 12,
             "num_attention_heads": 12, "image_size": 224, "patch_size": 32}
TINY_CLIP = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
             "num_attention_heads": 2, "image_size": 32, "patch_size": 8}
TINY_LLAMA = {"vocab_size": 512, "hidden_size": 64, "intermediate_size": 128,
              "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 4,
              "max_position_embeddings": 256}
CAPTION_WORDS = 32  # tokens per caption (one word, one token)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def bf16_matmul_peak(device: torch.device, n: int, repeats: int = 10) -> float:
    """Dense bf16 matmul FLOP/s, best of ``repeats`` (the machine's own limit, this run)."""
    a = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    b = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    best = float("inf")
    for _ in range(repeats):
        sync(device)
        t0 = time.perf_counter()
        a @ b
        sync(device)
        best = min(best, time.perf_counter() - t0)
    return 2 * n**3 / best


def word_tokenizer(vocab: int) -> Any:
    """A word-level tokenizer over ``w0 … w{vocab-4}``: one word, one token (no tokenizer
    files can be fetched; the token ids are what the step needs)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = {"<pad>": 0, "<unk>": 1, "<eos>": 2, **{f"w{i}": i + 3 for i in range(vocab - 3)}}
    tok = Tokenizer(models.WordLevel(words, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", unk_token="<unk>",
                                   eos_token="<eos>")


def captions(n: int, vocab: int, seed: int = 0) -> list[str]:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(4, vocab - 3, (n, CAPTION_WORDS), generator=g)
    return [" ".join(f"w{int(i)}" for i in row) for row in ids]


# -- (a) smoke: fedma train-silo on the device, both engines --------------------------------
def write_backbones(work: Path, tiny: bool) -> dict[str, Any]:
    """Random-initialised backbones of the bundled shapes, saved as the silo loads them."""
    from transformers import CLIPVisionConfig, CLIPVisionModel, LlamaConfig, LlamaForCausalLM

    from fedma.model.fingerprint import fingerprint_weights

    torch.manual_seed(0)
    lm_cfg = TINY_LLAMA if tiny else SMOLLM2_135M
    LlamaForCausalLM(LlamaConfig(**lm_cfg, pad_token_id=0, eos_token_id=2, bos_token_id=2)
                     ).save_pretrained(work / "lm")
    word_tokenizer(lm_cfg["vocab_size"]).save_pretrained(work / "lm")
    vision: dict[str, Any]
    try:
        if tiny:
            raise ImportError
        from efficientnet_lite_pytorch import EfficientNet
        from safetensors.torch import save_file

        net = EfficientNet.from_name("efficientnet-lite0")
        (work / "vision").mkdir()
        save_file({k: v.contiguous() for k, v in net.state_dict().items()},
                  str(work / "vision" / "model.safetensors"))
        (work / "vision" / "fedma-vision.json").write_text(json.dumps(
            {"arch": "efficientnet-lite0"}))
        vision = {"kind": "efficientnet", "imageSize": 64, "shape": "EfficientNet-Lite0"}
    except ImportError:
        cfg = TINY_CLIP if tiny else CLIP_B_32
        CLIPVisionModel(CLIPVisionConfig(**cfg)).save_pretrained(work / "vision")
        vision = {"kind": "hf", "imageSize": cfg["image_size"],
                  "shape": "tiny CLIP" if tiny else "CLIP ViT-B/32"}
    return {"vision": {**vision, "path": str(work / "vision"),
                       "fingerprint": fingerprint_weights(work / "vision")},
            "lm": {"path": str(work / "lm"), "fingerprint": fingerprint_weights(work / "lm"),
                   "shape": "tiny Llama" if tiny else "SmolLM2-135M",
                   "vocab": lm_cfg["vocab_size"]}}


def write_data(folder: Path, n: int, vocab: int) -> Path:
    from PIL import Image

    (folder / "images").mkdir(parents=True, exist_ok=True)
    g = torch.Generator().manual_seed(1)
    lines = []
    for i, cap in enumerate(captions(n, vocab, seed=1)):
        arr = torch.randint(0, 256, (32, 32, 3), generator=g, dtype=torch.uint8).numpy()
        Image.fromarray(arr).save(folder / "images" / f"{i:04d}.png")
        lines.append(json.dumps({"image": f"images/{i:04d}.png", "caption": cap}))
    (folder / "data.jsonl").write_text("\n".join(lines) + "\n")
    return folder / "data.jsonl"


def smoke(work: Path, device: torch.device, tiny: bool, samples: int) -> list[dict[str, Any]]:
    from fedma.spec import dump, parse, round_spec

    models = write_backbones(work, tiny)
    data = write_data(work / "data", samples, models["lm"]["vocab"])
    runs = []
    for engine in ("torch", "deepspeed"):
        manifest = {
            "apiVersion": "fedma.io/v1alpha1", "kind": "FederatedTraining",
            "metadata": {"name": f"gpu-smoke-{engine}"},
            "spec": {
                "rounds": 1,
                "model": {"vision": {k: models["vision"][k]
                                     for k in ("kind", "path", "imageSize", "fingerprint")},
                          "languageModel": {k: models["lm"][k] for k in ("path", "fingerprint")},
                          "projector": {"type": "mlp2x_gelu"}, "maxCaptionTokens": 48},
                "silos": [{"name": "silo-1", "data": {"path": str(data)},
                           "gpus": 1 if device.type == "cuda" else 0}],
                "training": {"engine": engine, "batchSize": 4, "learningRate": 1e-3,
                             "deepspeed": {"zeroStage": 3}},
                "artifacts": {"uri": f"file://{work / 'store'}"},
            },
        }
        rnd = round_spec(parse(manifest), 1, None)
        round_file = work / f"round-{engine}.json"
        round_file.write_text(json.dumps(dump(rnd)))
        term = work / f"term-{engine}.json"
        env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1",
               "TRANSFORMERS_OFFLINE": "1"}
        if device.type == "cpu":
            env.update(CUDA_VISIBLE_DEVICES="", DS_ACCELERATOR="cpu")
        t0 = time.perf_counter()
        proc = subprocess.run([sys.executable, "-m", "fedma.cli", "train-silo", "--round",
                               str(round_file), "--silo", "silo-1", "--termination-log",
                               str(term)], env=env, capture_output=True, text=True,
                              timeout=600)
        run: dict[str, Any] = {"engine": engine, "vision": models["vision"]["shape"],
                               "lm": models["lm"]["shape"],
                               "seconds": round(time.perf_counter() - t0, 1)}
        if proc.returncode != 0:
            run["error"] = proc.stderr[-2000:]
        else:
            s = json.loads(term.read_text())
            run.update({k: s.get(k) for k in ("device", "precision", "steps", "samples",
                                              "loss")})
            if s.get("zero"):
                run["frozen_elements_per_rank"] = s["zero"]["frozen_elements_per_rank"]
        runs.append(run)
        print(f"smoke {engine}: " + (f"FAILED\n{run['error']}" if "error" in run else
              f"{run['steps']} steps on {run['device']} in {run['precision']}, loss "
              f"{run['loss']:.3f}, {run['seconds']} s ({run['vision']} + {run['lm']})"),
              flush=True)
    return runs


# -- (b) fedma's step against transformers' at LLaVA-1.5-7B shapes --------------------------
def build_llava(device: torch.device, tiny: bool, dtype: torch.dtype) -> tuple[Any, Any, Any]:
    """(fedma AlignmentModel, transformers Llava, tokenizer) sharing every frozen module."""
    from transformers import (
        CLIPVisionConfig,
        LlamaConfig,
        LlamaForCausalLM,
        LlavaConfig,
        LlavaForConditionalGeneration,
    )

    from fedma.model.llava import AlignmentModel
    from fedma.model.projector import build_projector
    from fedma.model.vision import HFVisionTower

    vcfg = CLIPVisionConfig(**(TINY_CLIP if tiny else CLIP_L_336))
    tcfg = LlamaConfig(**(TINY_LLAMA if tiny else LLAMA2_7B), pad_token_id=0)
    n_img = (vcfg.image_size // vcfg.patch_size) ** 2
    cfg = LlavaConfig(vision_config=vcfg, text_config=tcfg, image_token_index=3,
                      projector_hidden_act="gelu", vision_feature_layer=-2,
                      vision_feature_select_strategy="default", image_seq_length=n_img)
    torch.manual_seed(0)
    default = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with device:
            base = LlavaForConditionalGeneration(cfg)
        with torch.device("meta"):
            lm = LlamaForCausalLM(tcfg)
    finally:
        torch.set_default_dtype(default)
    base.eval()
    for name, p in base.named_parameters():
        p.requires_grad_(name.startswith("model.multi_modal_projector"))
    lm.model, lm.lm_head = base.model.language_model, base.lm_head  # shared, not copied

    vision = HFVisionTower.__new__(HFVisionTower)  # the adapter over the shared tower
    vision.module, vision.layer, vision.drop_cls = base.model.vision_tower, -2, True
    vision.image_size, vision.feature_dim = vcfg.image_size, vcfg.hidden_size
    vision.mean = vision.std = (0.5, 0.5, 0.5)
    projector = build_projector("mlp2x_gelu", vcfg.hidden_size, tcfg.hidden_size).to(device)
    pr = base.model.multi_modal_projector
    with torch.no_grad():
        for ours, theirs in ((projector[0], pr.linear_1), (projector[2], pr.linear_2)):
            ours.weight.copy_(theirs.weight.float())
            ours.bias.copy_(theirs.bias.float())
    tok = word_tokenizer(tcfg.vocab_size)
    model = AlignmentModel(vision, lm, tok, projector, max_caption_tokens=48)
    return model, base, tok


def baseline_step(model: Any, tok: Any, pixels: torch.Tensor, caps: list[str],
                  n_img: int) -> torch.Tensor:
    """LLaVA stage 1 with transformers, on the model's device."""
    dev = model.device
    enc = tok(caps, return_tensors="pt", padding=True, add_special_tokens=False)
    b = enc["input_ids"].shape[0]
    ids = torch.cat([torch.full((b, n_img), model.config.image_token_index),
                     enc["input_ids"]], 1)
    mask = torch.cat([torch.ones(b, n_img, dtype=enc["attention_mask"].dtype),
                      enc["attention_mask"]], 1)
    labels = torch.cat([torch.full((b, n_img), -100), enc["input_ids"].masked_fill(
        enc["attention_mask"] == 0, -100)], 1)
    return model(input_ids=ids.to(dev), attention_mask=mask.to(dev), labels=labels.to(dev),
                 pixel_values=pixels.to(dev, model.dtype)).loss


def lm_only_seconds(model: Any, batch: int, n_img: int, repeats: int) -> float:
    """Best time of the LM's forward and input-gradient backward on its own."""
    from fedma.model.llava import Batch

    dev, width = model.device, model.lm.config.hidden_size
    dtype = next(model.lm.parameters()).dtype
    proj = torch.randn(batch, n_img, width, device=dev, dtype=dtype, requires_grad=True)
    ids = torch.randint(4, 100, (batch, CAPTION_WORDS), device=dev)
    b = Batch(ids, torch.ones_like(ids), [CAPTION_WORDS] * batch)
    best = float("inf")
    for _ in range(repeats + 1):
        sync(dev)
        t0 = time.perf_counter()
        h, _ = model.run_embedded(proj, b)
        h.float().square().mean().backward()
        sync(dev)
        best = min(best, time.perf_counter() - t0)
        proj.grad = None
    return best


def compare(device: torch.device, tiny: bool, batch: int, steps: int, blocks: int,
            peak: float) -> dict[str, Any]:
    from fedma.spec import TrainingSpec
    from fedma.train import torch_engine
    from fedma.train.device import place

    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    ours, base, tok = build_llava(device, tiny, dtype)
    place(ours, device, bf16=dtype == torch.bfloat16)
    vcfg = base.config.vision_config
    n_img = (vcfg.image_size // vcfg.patch_size) ** 2
    vocab = base.config.text_config.vocab_size
    n = batch * steps * blocks
    g = torch.Generator().manual_seed(2)
    pixels = torch.randn(n, 3, vcfg.image_size, vcfg.image_size, generator=g)
    if device.type == "cuda":
        pixels = pixels.pin_memory()
    caps = captions(n, vocab, seed=2)
    batches = [(pixels[i : i + batch], caps[i : i + batch]) for i in range(0, n, batch)]

    px, cp = batches[0]
    with torch.no_grad():
        loss_ours = float(ours(px, cp))
        loss_base = float(baseline_step(base, tok, px, cp, n_img))
    agreement = (gradient_agreement(ours, base, tok, px, cp, n_img, step=baseline_step)
                 if dtype == torch.float32 else None)
    print(f"same weights, one batch: loss fedma {loss_ours:.4f}, transformers "
          f"{loss_base:.4f}" + (f"; projector gradients differ by {agreement:.1e} (relative)"
                                 if agreement is not None else ""), flush=True)

    spec = TrainingSpec(batchSize=batch, learningRate=1e-4)
    rate: dict[str, list[float]] = {"fedma": [], "transformers": []}
    memory: dict[str, list[int]] = {"fedma": [], "transformers": []}
    base_params = [q for q in base.parameters() if q.requires_grad]
    for blk in range(blocks):
        chunk = batches[blk * steps : (blk + 1) * steps]
        for side in ("fedma", "transformers"):
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            sync(device)
            t0 = time.perf_counter()
            if side == "fedma":
                torch_engine.train(ours, iter(chunk), spec, 0)
            else:
                opt = torch.optim.AdamW(base_params, lr=spec.learning_rate)
                for p_, c_ in chunk:
                    loss = baseline_step(base, tok, p_, c_, n_img)
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    opt.step()
                    float(loss.detach())  # as fedma's engine reads each step's loss
            sync(device)
            rate[side].append(len(chunk) * batch / (time.perf_counter() - t0))
            if device.type == "cuda":
                memory[side].append(torch.cuda.max_memory_allocated(device))
        print(f"block {blk + 1}: fedma {rate['fedma'][-1]:.2f} samples/s, transformers "
              f"{rate['transformers'][-1]:.2f}", flush=True)

    flops = flops_per_sample(ours, n_img, CAPTION_WORDS, vocab)
    ours_sps = statistics.median(rate["fedma"])
    base_sps = statistics.median(rate["transformers"])
    lm_seconds = lm_only_seconds(ours, batch, n_img, repeats=3)
    lm_flops = (flops["lm_forward"] + flops["lm_input_backward"]) * batch / lm_seconds
    out = {
        "shapes": "tiny" if tiny else "LLaVA-1.5-7B (CLIP ViT-L/14-336, Llama-2-7B, "
                                      "mlp2x_gelu)",
        "dtype": str(dtype).removeprefix("torch."), "batch": batch, "steps_per_block": steps,
        "blocks": blocks, "image_tokens": n_img, "caption_tokens": CAPTION_WORDS,
        "loss_fedma": loss_ours, "loss_transformers": loss_base,
        "projector_gradient_relative_difference": agreement,
        "samples_per_s": rate, "median_samples_per_s": {"fedma": ours_sps,
                                                        "transformers": base_sps},
        "speedup": ours_sps / base_sps,
        "peak_memory_bytes": {k: statistics.median(v) if v else None
                              for k, v in memory.items()},
        "flops_per_sample": flops, "achieved_flops": flops["total"] * ours_sps,
        "lm_only_seconds": lm_seconds, "lm_achieved_flops": lm_flops,
        "bf16_matmul_peak_flops": peak,
        "lm_fraction_of_peak": lm_flops / peak, "step_fraction_of_peak":
            flops["total"] * ours_sps / peak,
        "targets": {"speedup": 1.5, "lm_fraction_of_peak": 0.40},
    }
    print(f"fedma {ours_sps:.2f} samples/s vs transformers {base_sps:.2f} "
          f"({out['speedup']:.2f}×, target 1.5×); step {out['achieved_flops'] / 1e12:.2f} "
          f"TFLOP/s = {out['step_fraction_of_peak']:.1%} of the bf16 matmul peak "
          f"{peak / 1e12:.1f} TFLOP/s; LM alone {lm_flops / 1e12:.2f} TFLOP/s = "
          f"{out['lm_fraction_of_peak']:.1%} (target 40 %)", flush=True)
    if device.type == "cuda":
        print("peak GPU memory: " + ", ".join(
            f"{k} {v / 2**30:.1f} GiB" for k, v in out["peak_memory_bytes"].items()))
    return out


def versions() -> dict[str, str]:
    out = {"python": sys.version.split()[0], "torch": torch.__version__}
    for mod in ("transformers", "deepspeed"):
        with contextlib.suppress(ImportError):
            out[mod] = __import__(mod).__version__
    if torch.cuda.is_available():
        out["cuda"] = str(torch.version.cuda)
        out["gpu"] = torch.cuda.get_device_name()
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--tiny", action="store_true", help="tiny shapes (CI, CPU)")
    p.add_argument("--batch", type=int, default=0, help="default: 16 on a GPU, 4 on a CPU")
    p.add_argument("--steps", type=int, default=5, help="steps per block")
    p.add_argument("--blocks", type=int, default=3, help="blocks per side, alternating")
    p.add_argument("--skip-smoke", action="store_true")
    p.add_argument("--out", default="bench/results")
    args = p.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("--device cuda: no CUDA device here (use --device cpu --tiny)", file=sys.stderr)
        return 2
    if device.type == "cpu" and not args.tiny:
        print("--device cpu runs the tiny shapes only (--tiny): a 7B step on a CPU takes "
              "minutes per sample", file=sys.stderr)
        return 2
    batch = args.batch or (16 if device.type == "cuda" else 4)
    t_start = time.perf_counter()
    result: dict[str, Any] = {"date": time.strftime("%Y-%m-%d"), "device": str(device),
                              "versions": versions()}
    print(f"fedma GPU check on {device} ({result['versions']})", flush=True)
    peak = bf16_matmul_peak(device, 8192 if device.type == "cuda" else 256)
    result["bf16_matmul_peak_flops"] = peak
    print(f"bf16 matmul peak: {peak / 1e12:.2f} TFLOP/s", flush=True)
    failed = []
    if not args.skip_smoke:
        with tempfile.TemporaryDirectory(prefix="fedma-gpu-") as work:
            result["smoke"] = smoke(Path(work), device, args.tiny, samples=16)
        for run in result["smoke"]:
            if "error" in run:
                failed.append(f"smoke {run['engine']} failed")
            elif run["device"] != device.type:
                failed.append(f"smoke {run['engine']} trained on {run['device']}, not "
                              f"{device.type}")
    while True:
        try:
            result["llava"] = compare(device, args.tiny, batch, args.steps, args.blocks, peak)
            break
        except torch.OutOfMemoryError:
            if batch == 1:
                raise
        # Out of the except block, the traceback (and the models its frames hold) is gone.
        batch //= 2
        gc.collect()
        torch.cuda.empty_cache()
        print(f"out of GPU memory; again at batch {batch}", flush=True)
    llava = result["llava"]
    if abs(llava["loss_fedma"] - llava["loss_transformers"]) > (
            1e-4 if llava["dtype"] == "float32" else 0.05) * abs(llava["loss_transformers"]):
        failed.append("the two steps disagree on the same weights")
    diff = llava["projector_gradient_relative_difference"]
    if diff is not None and diff > 1e-3:
        failed.append(f"projector gradients differ by {diff:.1e}")
    result["seconds"] = round(time.perf_counter() - t_start, 1)
    result["failed"] = failed
    Path(args.out).mkdir(parents=True, exist_ok=True)
    name = "gpu-tiny.json" if args.tiny else "gpu.json"
    (Path(args.out) / name).write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {Path(args.out) / name} ({result['seconds']} s)")
    for f in failed:
        print(f"FAILED: {f}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
