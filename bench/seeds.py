"""Per-seed records of a quality run (bench/quality.py): written as each seed finishes, read
back by ``--resume``.

A full run (5 seeds, both heterogeneity settings) takes longer than one sitting on 2 cores;
without these a crash or a stop in its third hour loses everything. Each record holds the
seed's per-image scores exactly (JSON floats round-trip), so a resumed run's statistics are
the ones an uninterrupted run computes: the benchmark is deterministic per seed (measured:
the warm start's sha256 and every arm's scores repeat across runs; a record keeps its warm
start's sha256, which a resumed run reports, but it is not recomputed on load). A record is
only reused by a run of the same configuration (every field but ``seeds``) and the same code
(the sha256 of ``fedma/`` and the benchmark's sources); anything else is refused by name.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
# What decides a seed's scores: the library and the benchmark itself (not its statistics).
SOURCES = ("fedma", "bench/quality.py", "bench/seeds.py")


def code_sha256() -> str:
    """sha256 over every Python file of ``SOURCES``, by path, in sorted order."""
    h = hashlib.sha256()
    for src in SOURCES:
        path = ROOT / src
        for f in sorted(path.rglob("*.py")) if path.is_dir() else [path]:
            h.update(str(f.relative_to(ROOT)).encode())
            h.update(f.read_bytes())
    return h.hexdigest()


def commit() -> str | None:
    """The checkout's commit, for the record's reader (the digest is what is checked)."""
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True,
                              text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None


def config_key(config: dict[str, Any]) -> dict[str, Any]:
    """The configuration a record must match: everything but how many seeds are run."""
    return json.loads(json.dumps({k: v for k, v in config.items() if k != "seeds"}))


def encode_scores(correct: np.ndarray, candidate_nll: np.ndarray, heldout_loss: float,
                  seconds: float) -> dict[str, Any]:
    return {"correct": correct.astype(int).tolist(), "candidate_nll": candidate_nll.tolist(),
            "nll_dtype": str(candidate_nll.dtype), "heldout_loss": heldout_loss,
            "seconds": seconds}


def decode_scores(d: dict[str, Any]) -> tuple[np.ndarray, np.ndarray, float, float]:
    return (np.array(d["correct"], dtype=float),
            np.array(d["candidate_nll"], dtype=d["nll_dtype"]), d["heldout_loss"],
            d["seconds"])


def record_path(directory: Path, seed: int) -> Path:
    return directory / f"seed-{seed}.json"


def write(directory: Path, seed: int, record: dict[str, Any]) -> Path:
    """Atomically (write, then rename): a stop mid-write leaves the old record or none."""
    directory.mkdir(parents=True, exist_ok=True)
    path = record_path(directory, seed)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(record))
    tmp.replace(path)
    return path


def load(directory: Path, seed: int, key: dict[str, Any], code: str) -> dict[str, Any] | None:
    """The seed's record when there is one; ``ValueError`` naming the field when it was made
    by another configuration or other code (reusing it would mix two experiments)."""
    path = record_path(directory, seed)
    if not path.exists():
        return None
    try:
        record = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not a readable seed record ({e}); delete it to rerun the "
                         "seed") from e
    if record.get("seed") != seed:
        raise ValueError(f"{path}: holds seed {record.get('seed')!r}, not {seed}")
    theirs = record.get("config", {})
    differ = sorted(k for k in set(key) | set(theirs) if key.get(k) != theirs.get(k))
    if differ:
        shown = ", ".join(f"{k} (record {theirs.get(k)!r}, this run {key.get(k)!r})"
                          for k in differ)
        raise ValueError(f"{path}: made with another configuration: {shown}; run with that "
                         "configuration, or another --out, or without --resume")
    if record.get("code_sha256") != code:
        raise ValueError(f"{path}: made by other code (fedma/ or the benchmark changed since "
                         f"commit {record.get('commit')}); check that commit out to resume, "
                         "or run without --resume")
    return record
