"""``fedma train-silo``: the container contract of a silo's training Job.

Reads the round's input projector (digest-checked), verifies the frozen backbones'
fingerprints, trains one pass over the silo's shard, writes the update and its manifest, and
writes a short JSON summary to the Kubernetes termination-message path.

Idempotent: if this silo's update for this round is already committed on the same input
projector (a Job that crashed after uploading, then retried), it re-reports it and exits.
"""

from __future__ import annotations

import logging
import os
import time
from typing import Any

import torch

from fedma.data.manifest import data_error, decode_errors
from fedma.encoding import encode
from fedma.model.llava import load_alignment_model, verify_backbones
from fedma.model.projector import load_projector_state, projector_state
from fedma.spec import FederatedRound
from fedma.store import ArtifactError, Store, global_rel, update_rel
from fedma.telemetry import TrainerMetrics, metrics_port
from fedma.termination import write as write_termination
from fedma.train.batches import batches, rank_batches, round_shard, silo_records, stable_seed
from fedma.train.device import place, silo_device, use_bf16
from fedma.train.memory import LoadPeak

log = logging.getLogger("fedma.train")
def load_input(store: Store, rnd: FederatedRound) -> tuple[dict[str, torch.Tensor] | None, str]:
    ref = rnd.spec.input
    if ref is None:
        return None, ""
    return store.get_tensors(store.rel(ref.uri), ref.digest), ref.digest


SEED_COMMIT_WAIT_S = 600


def seeded_initial(store: Store, rnd: FederatedRound, model_projector: torch.nn.Module,
                   rank: int) -> tuple[dict[str, torch.Tensor], str]:
    """Round 1 without ``spec.input`` (how the operator starts a training: the hub need not hold
    the backbones, so it cannot build the projector): the first silo to get here commits its
    seeded initial projector as global round 0; every silo then trains from that committed
    copy and records its digest, so a silo whose seeded init differed (another torch build)
    still starts from the same weights, and the aggregator checks them all against it."""
    spec = rnd.spec
    rel = global_rel(spec.training_name, 0)
    if rank == 0 and not store.committed(rel):
        store.put_tensors(rel, projector_state(model_projector), {
            "kind": "global-projector", "round": 0, "seed": spec.training.seed,
            "projector": spec.model.projector.type})
    # The other ranks of a multi-GPU Job get here before rank 0 has committed it (found by
    # bench/zero.py): wait for the commit rather than fail.
    deadline = time.monotonic() + SEED_COMMIT_WAIT_S
    while not store.committed(rel):
        if time.monotonic() > deadline:
            raise ArtifactError(f"{store.uri(rel)}: rank 0 did not commit the seeded initial "
                                f"projector within {SEED_COMMIT_WAIT_S} s")
        time.sleep(0.5)
    digest = store.get_manifest(rel)["sha256"]
    return store.get_tensors(rel, digest), digest


def _intact(store: Store, rel: str, digest: str) -> bool:
    """Whether a committed update still matches its manifest's sha256. One that does not
    (corrupted or tampered with since) is trained again and overwritten, rather than reported
    and then rejected by the aggregator, which would exclude an honest silo."""
    try:
        store.get_bytes(rel, digest)
    except ArtifactError as exc:
        log.warning("%s: stored update fails its check (%s); training it again",
                    store.uri(rel), exc)
        return False
    return True


def train_silo(rnd: FederatedRound, silo_name: str, *, termination_log: str | None = None,
               engine: str | None = None, progress: bool = False) -> dict[str, Any]:
    try:
        return _train_silo(rnd, silo_name, termination_log, engine, progress)
    finally:
        shutdown_distributed()


def shutdown_distributed() -> None:
    """Destroys the DeepSpeed engine's process group, if one was made, while the interpreter
    is still whole. Left to finalisation, gloo's worker threads still hold work whose tensors
    need the GIL as the interpreter is torn down: a rank that finished its round dies with
    SIGABRT ("terminate called without an active exception", pytorch/pytorch#190489) and
    torchrun fails the Job (seen in CI). Local to this rank: no collective, so a rank that
    failed does not wait here for the others."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


def _train_silo(rnd: FederatedRound, silo_name: str, termination_log: str | None,
                engine: str | None, progress: bool) -> dict[str, Any]:
    spec = rnd.spec
    silo = next((s for s in spec.silos if s.name == silo_name), None)
    if silo is None:
        raise ValueError(f"silo {silo_name!r} is not in the round (silos: "
                         f"{', '.join(s.name for s in spec.silos)})")
    engine = engine or spec.training.engine
    if spec.training.threads:
        torch.set_num_threads(spec.training.threads)
    t0 = time.perf_counter()
    telemetry = TrainerMetrics(spec.training_name, silo.name, spec.round)
    port = metrics_port()
    if port:
        telemetry.serve(port)
    store = Store(spec.artifacts.uri)
    out_rel = update_rel(spec.training_name, spec.round, silo.name)
    rank = int(os.environ.get("RANK", "0"))
    base = spec.input.digest if spec.input else ""
    if spec.input is None and store.committed(global_rel(spec.training_name, 0)):
        base = store.get_manifest(global_rel(spec.training_name, 0))["sha256"]

    # Every rank looks: were only rank 0 to find the committed update and return, the others
    # would wait at the rendezvous for it until their timeout. All read the same store.
    if store.committed(out_rel):
        manifest = store.get_manifest(out_rel)
        if manifest.get("base_digest") == base and _intact(store, out_rel, manifest["sha256"]):
            summary = {k: manifest[k] for k in ("samples", "steps", "loss")}
            summary.update(silo=silo.name, round=spec.round, status="Succeeded",
                           update={"uri": store.uri(out_rel), "digest": manifest["sha256"]},
                           reused=True, seconds=round(time.perf_counter() - t0, 3))
            if rank == 0:
                write_termination(termination_log, summary)
            return summary

    # The round's data, every image decoded, before the backbones load: bad data fails in
    # seconds with every bad line named, not mid-round (and is not retried: fedma.rounds).
    records = silo_records(silo.data)
    shard = round_shard(len(records), spec.training.seed, silo.name, spec.round,
                        spec.rounds_per_pass)
    chosen = [records[i] for i in shard]
    bad = decode_errors(chosen, silo.data.path)
    if bad:
        raise data_error(bad)

    initial, _ = load_input(store, rnd)
    # Missing or different backbones fail here, before the ranks of a multi-GPU Job meet.
    fingerprints = verify_backbones(spec.model)
    device = silo_device()
    bf16 = use_bf16(spec.training.precision, device)
    zero3 = None
    if engine == "deepspeed":
        from fedma.train import deepspeed_engine

        rank, world = deepspeed_engine.init_distributed()
        zero3 = deepspeed_engine.zero3_loading(spec.training, world, bf16)
    with LoadPeak() as load_peak:
        model = load_alignment_model(spec.model, projector_seed=spec.training.seed,
                                     dtype=torch.bfloat16 if bf16 else torch.float32,
                                     fingerprints=fingerprints)
    model.zero3_config = zero3  # alive as long as the model: see zero3_loading
    if initial is None:
        initial, base = seeded_initial(store, rnd, model.projector, rank)
        load_projector_state(model.projector, initial, source=store.uri(global_rel(
            spec.training_name, 0)))
    else:
        load_projector_state(model.projector, initial, source=spec.input.uri)  # type: ignore[union-attr]
    if spec.training.activation_checkpointing:
        model.enable_checkpointing()
    if spec.training.proximal_mu > 0:
        model.set_proximal(spec.training.proximal_mu)
    torch.manual_seed(stable_seed(spec.training.seed, silo.name, spec.round))

    last_report = [time.perf_counter()]

    def report(step: int, loss: float) -> None:
        telemetry.step(spec.training.batch_size, loss)
        if progress and (time.perf_counter() - last_report[0] > 2 or step == 1):
            log.info("silo %s round %d step %d loss %.4f", silo.name, spec.round, step, loss)
            last_report[0] = time.perf_counter()

    partition: dict[str, Any] | None = None
    if engine == "deepspeed":
        place(model, None, bf16)  # DeepSpeed partitions the module and moves it to the GPU
        data = rank_batches(chosen, model.vision_adapter, spec.training.batch_size,
                            silo.data.path, rank=rank, world=world)
        steps, loss, state, partition = deepspeed_engine.train(
            model, data, spec.training, spec.training.max_steps_per_round, report,
            load_peak_bytes=load_peak.bytes)
    else:
        from fedma.train import torch_engine

        place(model, device, bf16)
        data = batches(chosen, model.vision_adapter, spec.training.batch_size, silo.data.path)
        steps, loss = torch_engine.train(model, data, spec.training,
                                         spec.training.max_steps_per_round, report)
        state = projector_state(model.projector)

    samples = min(len(chosen), steps * spec.training.batch_size)
    summary: dict[str, Any] = {"silo": silo.name, "round": spec.round, "status": "Succeeded",
                               "samples": samples, "steps": steps, "loss": round(loss, 6),
                               "device": device.type, "precision": "bf16" if bf16 else "fp32"}
    if partition is not None:
        summary["zero"] = partition
    if rank != 0:
        return summary
    telemetry.set_phase("uploading")
    encoding = spec.artifacts.update_encoding
    ref = store.put_tensors(out_rel, encode(state, initial, encoding), {
        "kind": "silo-update", "training": spec.training_name, "round": spec.round,
        "silo": silo.name, "samples": samples, "steps": steps, "loss": loss,
        "base_digest": base, "fingerprints": fingerprints, "engine": engine,
        "encoding": encoding, "device": device.type, "precision": summary["precision"],
    })
    summary.update(update=ref.as_dict(), seconds=round(time.perf_counter() - t0, 3))
    write_termination(termination_log, summary)
    telemetry.set_phase("done")
    return summary


__all__ = ["ArtifactError", "train_silo", "write_termination"]
