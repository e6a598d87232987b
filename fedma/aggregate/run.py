"""``fedma aggregate``: the container contract of a round's aggregation Job.

Reads exactly the accepted silo updates (each digest-checked against what the silo reported),
validates them, runs the strategy and writes the next global projector, the server state and a
manifest. The global projector's manifest is written last, so a Job killed mid-write leaves no
committed output and its retry starts clean; because aggregation is deterministic, the retry
produces the same digest.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from fedma.aggregate.base import SiloUpdate, get_strategy
from fedma.aggregate.mapped import MappedTensors
from fedma.aggregate.validate import check_update
from fedma.encoding import Decoded, EncodingError
from fedma.spec import FederatedRound, FederatedRoundSpec, ProjectorRef
from fedma.store import ArtifactError, Store, global_rel, server_state_rel, update_rel


class AggregationError(RuntimeError):
    pass


def aggregate_round(rnd: FederatedRound, included: dict[str, str | None],
                    max_delta_norm: float | None = None) -> dict[str, Any]:
    """``included`` maps silo name → the update digest the silo reported (None: trust the
    update's own manifest, used only by local tools). ``max_delta_norm`` overrides
    ``spec.aggregation.robust.maxUpdateNorm``."""
    spec = rnd.spec
    if max_delta_norm is None:
        max_delta_norm = spec.aggregation.robust.max_update_norm
    t0 = time.perf_counter()
    store = Store(spec.artifacts.uri)
    if spec.input is None:
        # Round 1 started from the seeded projector a silo committed as global round 0.
        r0 = global_rel(spec.training_name, 0)
        if not store.committed(r0):
            raise AggregationError(f"spec.input is empty and {store.uri(r0)} (the seeded initial "
                                   "projector a round-1 silo commits) does not exist")
        spec = spec.model_copy(update={"input": ProjectorRef(
            uri=store.uri(r0), digest=store.get_manifest(r0)["sha256"])})
    unknown = sorted(set(included) - {s.name for s in spec.silos})
    if unknown:
        raise AggregationError(f"silos {unknown} are not part of the round")
    out_rel = global_rel(spec.training_name, spec.round)
    wanted = {k: included[k] for k in sorted(included)}

    if store.committed(out_rel):
        manifest = store.get_manifest(out_rel)
        if manifest.get("requested") == wanted and manifest.get("base_digest") == spec.input.digest:
            return _summary(store, out_rel, manifest, t0, reused=True)

    base = store.get_tensors(store.rel(spec.input.uri), spec.input.digest)
    state: dict[str, torch.Tensor] = {}
    if spec.server_state is not None:
        state = store.get_tensors(store.rel(spec.server_state.uri), spec.server_state.digest)

    with tempfile.TemporaryDirectory(prefix="fedma-updates-") as work:
        return _aggregate(store, spec, wanted, base, state, out_rel, Path(work),
                          max_delta_norm, t0)


def sample_bound(spec: FederatedRoundSpec, silo: str) -> tuple[int, str] | None:
    """The most samples a silo's update may weigh in the mean, from what the hub knows: the
    silo's ``maxSamples`` in the spec (its shard, agreed beforehand) and, when local steps are
    capped, ``maxStepsPerRound × batchSize`` (a trainer counts the samples it stepped over).
    A silo's own count is self-reported: unbounded, one claiming 10⁹ samples would take over
    every weighted rule. None: nothing to bound it by."""
    bounds = []
    declared = next((s.max_samples for s in spec.silos if s.name == silo), None)
    if declared:
        bounds.append((declared, f"silos[{silo}].maxSamples"))
    t = spec.training
    if t.max_steps_per_round:
        bounds.append((t.max_steps_per_round * t.batch_size,
                       "training.maxStepsPerRound × batchSize"))
    return min(bounds) if bounds else None


def _aggregate(store: Store, spec: FederatedRoundSpec, wanted: dict[str, str | None],
               base: dict[str, torch.Tensor], state: dict[str, torch.Tensor], out_rel: str,
               work: Path, max_delta_norm: float, t0: float) -> dict[str, Any]:
    """Each update is copied to ``work`` while its digest is checked, then memory-mapped:
    the strategies read them in place, so the Job's own memory stays O(model) for any K."""
    assert spec.input is not None
    updates: list[SiloUpdate] = []
    rejected: dict[str, str] = {}
    capped: dict[str, str] = {}  # silo → how its self-reported sample count was bounded
    for silo, digest in wanted.items():
        rel = update_rel(spec.training_name, spec.round, silo)
        try:
            manifest = store.get_manifest(rel)
            if manifest.get("base_digest") != spec.input.digest:
                raise ArtifactError("trained from a different global projector than this round's")
            local = store.fetch_verified(rel, digest or manifest["sha256"],
                                         work / f"{silo}.safetensors")
            weights = Decoded(MappedTensors(local), base, manifest.get("encoding", "float32"))
        except (ArtifactError, EncodingError) as exc:
            rejected[silo] = str(exc)
            continue
        samples = int(manifest.get("samples", 0))
        reason = check_update(silo, base, weights, samples, max_delta_norm)
        if reason:
            rejected[silo] = reason
            continue
        bound = sample_bound(spec, silo)
        if bound is not None and samples > bound[0]:
            capped[silo] = f"reported {samples} samples, counted {bound[0]} ({bound[1]})"
            samples = bound[0]
        updates.append(SiloUpdate(silo, weights, samples, float(manifest.get("loss", "nan"))))

    if len(updates) < spec.quorum:
        detail = "; ".join(f"{s}: {r}" for s, r in rejected.items())
        raise AggregationError(
            f"{len(updates)} valid updates, quorum is {spec.quorum} (rejected: {detail or 'none'})"
        )
    robust = spec.aggregation.robust.model_dump(exclude={"max_update_norm"})
    strategy = get_strategy(spec.aggregation.strategy, spec.aggregation.options, robust,
                            {**spec.aggregation.privacy.model_dump(),
                             "expected_silos": len(spec.silos)})
    try:
        result = strategy.aggregate(base, updates, state)
    finally:
        for u in updates:
            stored = getattr(u.weights, "stored", None)
            if isinstance(stored, MappedTensors):
                stored.close()
    for silo, note in capped.items():  # the bound shows in the silo's status note
        entry = result.report.setdefault(silo, {})
        entry["note"] = "; ".join(filter(None, (entry.get("note"), note)))
    state_ref = None
    if result.server_state:
        state_ref = store.put_tensors(
            server_state_rel(spec.training_name, spec.round), result.server_state,
            {"kind": "server-state", "round": spec.round, "strategy": strategy.name})
    total = sum(u.samples for u in updates)
    loss = sum(u.loss * u.samples for u in updates) / total
    store.put_tensors(out_rel, result.weights, {
        "kind": "global-projector", "training": spec.training_name, "round": spec.round,
        "strategy": strategy.name, "base_digest": spec.input.digest, "requested": wanted,
        "included": [u.silo for u in updates], "rejected": rejected, "report": result.report,
        "samples": total, "loss": loss,
        "server_state": state_ref.as_dict() if state_ref else None,
    })
    return _summary(store, out_rel, store.get_manifest(out_rel), t0, reused=False)


def _summary(store: Store, rel: str, manifest: dict[str, Any], t0: float,
             reused: bool) -> dict[str, Any]:
    return {
        "round": manifest["round"], "status": "Succeeded",
        "output": {"uri": store.uri(rel), "digest": manifest["sha256"]},
        "server_state": manifest.get("server_state"),
        "included": manifest["included"], "rejected": manifest["rejected"],
        # How a rule bounded an included silo (clipped, dropped by Multi-Krum, …).
        "notes": {s: r["note"] for s, r in (manifest.get("report") or {}).items()
                  if isinstance(r, dict) and r.get("note")},
        "samples": manifest["samples"], "loss": manifest["loss"], "reused": reused,
        "privacy": (manifest.get("report") or {}).get("_privacy"),
        "robust": (manifest.get("report") or {}).get("_robust"),
        "seconds": round(time.perf_counter() - t0, 3),
    }
