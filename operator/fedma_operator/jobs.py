"""Job manifests for one round: one training Job per silo attempt, one aggregation Job.

Pure functions from the round's spec to plain dicts, so they are tested without a cluster.
Conventions (DESIGN.md §4):
- deterministic names (``<round>-<silo>-a<attempt>``, ``<round>-aggregate``): a restarted
  operator finds and adopts what it created instead of creating it twice;
- labels ``fedma.io/{training,round,silo,role,attempt}``, selected server-side by every list
  and watch; ``fedma.io/round-uid`` names the very round object a Job belongs to;
- the round reaches the container by reference: one ConfigMap per round and namespace
  (:func:`round_config_map`, named after the round and its digest), mounted read-only, and
  ``$FEDMA_ROUND_SHA256``, which the container checks (fedma.roundref). A Job then costs the
  same to create, list and start at 1,000 silos as at 3. The JSON summary comes back as the
  container's termination message, bounded to parse (fedma.termination);
- finished Jobs expire (``ttlSecondsAfterFinished``, a day by default: long after the operator
  copied their result into the round's status), so a namespace's Jobs grow with the work in
  flight, not with the history;
- Kubernetes retries off (``backoffLimit: 0``): retries are the round's (``aggregation
  .backoffLimit``), each a new attempt Job, so every attempt stays visible in status;
- non-root, read-only root filesystem, no privilege escalation, all capabilities dropped;
  store credentials only from the Secret the spec names.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

from fedma import roundref
from fedma.spec import FederatedRound, PodOverridesSpec, SiloSpec

LABEL = "fedma.io"
TERMINATION_LOG = "/dev/termination-log"
ROUND_MOUNT = "/etc/fedma/round"
KUEUE_QUEUE_LABEL = "kueue.x-k8s.io/queue-name"
MANAGED_BY = ("app.kubernetes.io/managed-by", "fedma-operator")  # on every Job it creates


@dataclass(frozen=True)
class JobSettings:
    trainer_image: str = "ghcr.io/fedma/trainer:0.1.0"
    service_account: str = "fedma-trainer"
    aggregator_cpu: str = "2"
    aggregator_memory: str = "8Gi"
    run_as_user: int = 10001  # the images' user (images/*.Dockerfile)
    # Where a silo trainer serves its live metrics (fedma.telemetry); the chart's PodMonitor
    # scrapes the container port named ``metrics``. 0 turns the endpoint off.
    metrics_port: int = 9400
    # Seconds a finished Job (and its pods) is kept; None: kept until its round is deleted.
    ttl_after_finished_s: int | None = 86400


def dns_name(*parts: str, limit: int = 63) -> str:
    """Join into a DNS-1123 name; too long → cut and suffix a hash, so it stays unique."""
    name = "-".join(parts)
    if len(name) <= limit:
        return name
    digest = hashlib.sha256(name.encode()).hexdigest()[:8]
    return f"{name[: limit - 9].rstrip('-')}-{digest}"


@dataclass(frozen=True)
class RoundFile:
    """The round as its Jobs read it: the ConfigMap's name, its text and that text's sha256.
    The name carries the digest, so a later run under the same round name (another spec)
    never finds and uses an earlier run's file."""

    name: str
    text: str
    digest: str


def round_file(rnd: FederatedRound) -> RoundFile:
    text, digest = roundref.payload(rnd)
    return RoundFile(dns_name(rnd.metadata.name, "round", digest[:10]), text, digest)


def round_config_map(rnd: FederatedRound, ref: RoundFile, namespace: str,
                     owner: dict[str, Any] | None) -> dict[str, Any]:
    """One per namespace that runs a Job of the round; immutable, like the round itself."""
    meta: dict[str, Any] = {"name": ref.name, "namespace": namespace,
                            "labels": labels(rnd, "round-file"),
                            "annotations": {f"{LABEL}/sha256": ref.digest}}
    if owner:
        meta["ownerReferences"] = [owner]
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": meta, "immutable": True,
            "data": {roundref.KEY: ref.text}}


def silo_job_name(round_name: str, silo: str, attempt: int) -> str:
    return dns_name(round_name, silo, f"a{attempt}")


def aggregation_job_name(round_name: str) -> str:
    return dns_name(round_name, "aggregate")


def round_uid(rnd: FederatedRound) -> str | None:
    """The uid of the round object (None before the API server gave it one)."""
    extra = rnd.metadata.model_extra or {}
    return str(extra["uid"]) if extra.get("uid") else None


def labels(rnd: FederatedRound, role: str, silo: str | None = None,
           attempt: int | None = None) -> dict[str, str]:
    out = {
        "app.kubernetes.io/name": "fedma",
        MANAGED_BY[0]: MANAGED_BY[1],
        f"{LABEL}/training": rnd.spec.training_name,
        f"{LABEL}/round": str(rnd.spec.round),
        f"{LABEL}/round-name": rnd.metadata.name,
        # Where the round lives (a silo's Jobs may run in another namespace): Job events wake
        # that round's reconcile loop.
        f"{LABEL}/round-namespace": rnd.metadata.namespace or "default",
        f"{LABEL}/role": role,
    }
    uid = round_uid(rnd)
    if uid is not None:
        out[f"{LABEL}/round-uid"] = uid
    if silo is not None:
        out[f"{LABEL}/silo"] = silo
    if attempt is not None:
        out[f"{LABEL}/attempt"] = str(attempt)
    return out


def _security() -> dict[str, Any]:
    return {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
            "runAsNonRoot": True, "capabilities": {"drop": ["ALL"]},
            "seccompProfile": {"type": "RuntimeDefault"}}


def _env(ref: RoundFile) -> list[dict[str, Any]]:
    return [
        {"name": roundref.FILE_ENV, "value": f"{ROUND_MOUNT}/{roundref.KEY}"},
        {"name": roundref.SHA256_ENV, "value": ref.digest},
        {"name": "FEDMA_TERMINATION_LOG", "value": TERMINATION_LOG},
        {"name": "HF_HUB_OFFLINE", "value": "1"},
        {"name": "HOME", "value": "/tmp"},
        {"name": "FEDMA_CACHE", "value": "/tmp/fedma-cache"},
    ]


def _container(name: str, image: str, command: list[str], rnd: FederatedRound,
               ref: RoundFile, resources: dict[str, Any], mounts: list[dict[str, Any]],
               metrics_port: int = 0) -> dict[str, Any]:
    c: dict[str, Any] = {
        "name": name, "image": image, "command": command, "env": _env(ref),
        "resources": resources, "securityContext": _security(),
        "terminationMessagePath": TERMINATION_LOG,
        "terminationMessagePolicy": "FallbackToLogsOnError",
        "volumeMounts": [{"name": "tmp", "mountPath": "/tmp"},
                         {"name": "round", "mountPath": ROUND_MOUNT, "readOnly": True},
                         *mounts],
    }
    secret = rnd.spec.artifacts.credentials_secret
    if secret:
        c["envFrom"] = [{"secretRef": {"name": secret}}]
    if metrics_port:
        c["env"].append({"name": "FEDMA_METRICS_PORT", "value": str(metrics_port)})
        c["ports"] = [{"name": "metrics", "containerPort": metrics_port, "protocol": "TCP"}]
    return c


def _volumes(ref: RoundFile) -> list[dict[str, Any]]:
    return [{"name": "tmp", "emptyDir": {}}, {"name": "round", "configMap": {"name": ref.name}}]


def _job(name: str, namespace: str, lbl: dict[str, str], pod: dict[str, Any],
         deadline_s: int, owner: dict[str, Any] | None, settings: JobSettings
         ) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name, "namespace": namespace, "labels": lbl}
    if owner:
        meta["ownerReferences"] = [owner]
    spec: dict[str, Any] = {
        "backoffLimit": 0,
        "activeDeadlineSeconds": deadline_s,
        "template": {"metadata": {"labels": lbl}, "spec": pod},
    }
    if settings.ttl_after_finished_s is not None:
        spec["ttlSecondsAfterFinished"] = settings.ttl_after_finished_s
    return {"apiVersion": "batch/v1", "kind": "Job", "metadata": meta, "spec": spec}


def owner_reference(round_obj: dict[str, Any]) -> dict[str, Any]:
    """For Jobs in the round's own namespace and cluster: deleting the FederatedRound deletes
    its Jobs (an owner elsewhere counts as absent to the garbage collector)."""
    meta = round_obj["metadata"]
    return {"apiVersion": round_obj.get("apiVersion", "fedma.io/v1alpha1"),
            "kind": "FederatedRound", "name": meta["name"], "uid": meta["uid"],
            "controller": True, "blockOwnerDeletion": True}


def silo_command(rnd: FederatedRound, silo: SiloSpec) -> list[str]:
    """``fedma train-silo``; with DeepSpeed on several GPUs, one rank per GPU via torchrun."""
    cmd = ["train-silo", "--silo", silo.name]
    if rnd.spec.training.engine == "deepspeed" and silo.gpus > 1:
        return ["torchrun", "--standalone", f"--nproc-per-node={silo.gpus}", "-m", "fedma.cli",
                *cmd]
    return ["fedma", *cmd]


def silo_job(rnd: FederatedRound, silo: SiloSpec, attempt: int, namespace: str,
             settings: JobSettings, owner: dict[str, Any] | None = None,
             ref: RoundFile | None = None) -> dict[str, Any]:
    ref = ref or round_file(rnd)
    res = {"cpu": silo.resources.cpu, "memory": silo.resources.memory}
    limits = dict(res)
    if silo.gpus:
        limits["nvidia.com/gpu"] = str(silo.gpus)
    mounts: list[dict[str, Any]] = []
    volumes = _volumes(ref)
    if silo.data_volume:
        mounts.append({"name": "data", "mountPath": silo.data_volume.mount_path,
                       "readOnly": True})
        volumes.append({"name": "data", "persistentVolumeClaim": {
            "claimName": silo.data_volume.claim_name, "readOnly": True}})
    if silo.gpus > 1:  # NCCL needs more shared memory than the container default
        mounts.append({"name": "dshm", "mountPath": "/dev/shm"})
        volumes.append({"name": "dshm", "emptyDir": {"medium": "Memory"}})
    pod: dict[str, Any] = {
        "restartPolicy": "Never",
        "serviceAccountName": settings.service_account,
        "automountServiceAccountToken": False,
        "securityContext": {"runAsNonRoot": True, "runAsUser": settings.run_as_user,
                            "fsGroup": settings.run_as_user},
        "containers": [_container("trainer", silo.image or settings.trainer_image,
                                  silo_command(rnd, silo), rnd, ref,
                                  {"requests": res, "limits": limits}, mounts,
                                  settings.metrics_port)],
        "volumes": volumes,
    }
    if silo.node_selector:
        pod["nodeSelector"] = dict(silo.node_selector)
    if silo.tolerations:
        pod["tolerations"] = [t.model_dump(by_alias=True, exclude_none=True)
                              for t in silo.tolerations]
    if silo.pod:
        with_overrides(pod, silo.pod)
    name = silo_job_name(rnd.metadata.name, silo.name, attempt)
    job = _job(name, namespace, labels(rnd, "silo", silo.name, attempt), pod,
               rnd.spec.aggregation.deadline_seconds, owner, settings)
    if silo.pod and silo.pod.annotations:
        job["spec"]["template"]["metadata"]["annotations"] = dict(silo.pod.annotations)
    if silo.queue_name:
        # Kueue admits the Job by unsuspending it; the Job controller starts its
        # activeDeadlineSeconds then, and the round counts the silo's deadline from there.
        job["metadata"]["labels"][KUEUE_QUEUE_LABEL] = silo.queue_name
        job["spec"]["suspend"] = True
    return job


def with_overrides(pod: dict[str, Any], over: PodOverridesSpec) -> None:
    """A silo's pod overrides into its trainer pod. Only what the spec's types admit gets
    here (no hostPath, no Secret volume, no valueFrom, no reserved env or annotations), so
    nothing reaches the node, a credential or the pod's security settings."""
    if over.priority_class_name:
        pod["priorityClassName"] = over.priority_class_name
    if over.runtime_class_name:
        pod["runtimeClassName"] = over.runtime_class_name
    if over.affinity:
        pod["affinity"] = over.affinity.model_dump(by_alias=True, exclude_none=True)
    trainer = pod["containers"][0]
    trainer["env"] += [{"name": e.name, "value": e.value} for e in over.env]
    for vol in over.volumes:
        source = vol.model_dump(by_alias=True, exclude_none=True,
                                include={"empty_dir", "config_map", "persistent_volume_claim"})
        if vol.persistent_volume_claim:
            source["persistentVolumeClaim"]["readOnly"] = (
                vol.read_only or vol.persistent_volume_claim.read_only)
        pod["volumes"].append({"name": vol.name, **source})
        trainer["volumeMounts"].append({"name": vol.name, "mountPath": vol.mount_path,
                                        "readOnly": vol.read_only})


def aggregation_job(rnd: FederatedRound, included: dict[str, str], namespace: str,
                    settings: JobSettings, owner: dict[str, Any] | None = None,
                    ref: RoundFile | None = None) -> dict[str, Any]:
    """``included``: silo → the update digest it reported; the aggregator re-checks each."""
    ref = ref or round_file(rnd)
    cmd = ["fedma", "aggregate"]
    for silo, digest in sorted(included.items()):
        cmd += ["--include", f"{silo}={digest}"]
    res = {"cpu": settings.aggregator_cpu, "memory": settings.aggregator_memory}
    pod = {
        "restartPolicy": "Never",
        "serviceAccountName": settings.service_account,
        "automountServiceAccountToken": False,
        "securityContext": {"runAsNonRoot": True, "runAsUser": settings.run_as_user,
                            "fsGroup": settings.run_as_user},
        "containers": [_container("aggregator", settings.trainer_image, cmd, rnd, ref,
                                  {"requests": res, "limits": res}, [])],
        "volumes": _volumes(ref),
    }
    return _job(aggregation_job_name(rnd.metadata.name), namespace, labels(rnd, "aggregate"),
                pod, rnd.spec.aggregation.deadline_seconds, owner, settings)
