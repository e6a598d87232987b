"""The fedma API types: one definition shared by the CLI, the Job entrypoints and the operator.

Field names are camelCase on the wire (as in a manifest a user would `kubectl apply`) and
snake_case in Python. Unknown fields are refused rather than ignored, because a misspelt knob
that silently falls back to a default is the worst kind of federated-training bug: it differs
per silo and nobody sees it. Validation errors are re-raised as :class:`SpecError`, whose
message names every field path and the rule it broke.

This module is pure (pydantic only): the operator imports it without pulling in torch.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, model_validator
from pydantic.alias_generators import to_camel, to_snake

API_VERSION = "fedma.io/v1alpha1"
GROUP = "fedma.io"

_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_SHA256 = r"^[0-9a-f]{64}$"
# fsspec protocols a round may read or write. Anything else (http, ftp, memory, ...) is refused
# so that a manifest cannot point the trainer at an arbitrary remote or in-process filesystem.
ALLOWED_URI_SCHEMES = ("file", "s3")


class SpecError(ValueError):
    """A manifest broke a rule; ``errors`` holds ``(field path, message)`` pairs."""

    def __init__(self, source: str, errors: list[tuple[str, str]]):
        self.source = source
        self.errors = errors
        lines = "\n".join(f"  {path}: {msg}" for path, msg in errors)
        super().__init__(f"invalid {source}:\n{lines}")


class _Model(BaseModel):
    model_config = ConfigDict(
        alias_generator=to_camel, populate_by_name=True, extra="forbid", frozen=True
    )


def _check_uri(value: str) -> str:
    if ".." in Path(value.split("://", 1)[-1]).parts:
        raise ValueError("must not contain '..' path segments")
    if "://" in value:
        scheme = value.split("://", 1)[0]
        if scheme not in ALLOWED_URI_SCHEMES:
            raise ValueError(
                f"scheme {scheme!r} is not allowed (use one of {', '.join(ALLOWED_URI_SCHEMES)})"
            )
    return value


def _check_dns(value: str) -> str:
    if not _DNS_LABEL.match(value):
        raise ValueError("must be a DNS label: lowercase letters, digits and '-'")
    return value


Uri = Annotated[str, Field(min_length=1, max_length=1024)]
StoreUri = Annotated[str, Field(min_length=1, max_length=1024), AfterValidator(_check_uri)]
DnsLabel = Annotated[str, Field(min_length=1, max_length=63,
                                json_schema_extra={"pattern": _DNS_LABEL.pattern}),
                    AfterValidator(_check_dns)]
Digest = Annotated[str, Field(pattern=_SHA256)]


class VisionSpec(_Model):
    """The frozen vision tower. ``kind: hf`` loads a CLIP/SigLIP-style tower with
    ``from_pretrained``; ``kind: efficientnet`` loads EfficientNet-Lite weights (safetensors)."""

    kind: Literal["hf", "efficientnet"] = "hf"
    path: Uri
    # Hidden-state index for ``hf`` towers (LLaVA uses the penultimate layer, -2).
    layer: int = -2
    image_size: int = Field(224, ge=16, le=1024)
    # Expected sha256 over the frozen weights; a silo whose copy differs refuses to train.
    fingerprint: Digest | None = None


class LanguageModelSpec(_Model):
    path: Uri
    gguf_file: str | None = None
    fingerprint: Digest | None = None


class ProjectorSpec(_Model):
    type: Literal["linear", "mlp2x_gelu"] = "mlp2x_gelu"


class ModelSpec(_Model):
    vision: VisionSpec
    language_model: LanguageModelSpec
    projector: ProjectorSpec = ProjectorSpec()
    # Caption tokens beyond this are cut; bounds memory per step.
    max_caption_tokens: int = Field(48, ge=4, le=2048)


class DataSpec(_Model):
    """A JSONL manifest (``image``, ``caption`` per line); image paths are relative to it."""

    path: Uri
    # Experiments only: take a subset of the manifest's lines (indices into it).
    indices: list[Annotated[int, Field(ge=0)]] | None = None


Quantity = Annotated[str, Field(pattern=r"^[0-9]+(\.[0-9]+)?(m|k|Ki|Mi|Gi|Ti|M|G|T)?$")]


class TolerationSpec(_Model):
    """A Kubernetes toleration, so silo Jobs can land on tainted GPU nodes."""

    key: str | None = None
    operator: Literal["Exists", "Equal"] = "Equal"
    value: str | None = None
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = None
    toleration_seconds: int | None = Field(None, ge=0)


class VolumeSpec(_Model):
    """The silo's data: a PersistentVolumeClaim mounted read-only into the trainer pod."""

    claim_name: DnsLabel
    mount_path: Annotated[str, Field(pattern=r"^/", max_length=1024)] = "/data"


class ResourcesSpec(_Model):
    """Requests (= limits) of the trainer container; GPUs come from ``gpus``."""

    cpu: Quantity = "4"
    memory: Quantity = "32Gi"


_ENV_NAME = r"^[A-Za-z_][A-Za-z0-9_]*$"
# Env a silo may not set: the trainer's own contract (FEDMA_*, the offline switches, HOME),
# the store's credentials (AWS_*: only from the Secret the spec names), and the loader and
# interpreter hooks (LD_*, PYTHON*) that would run code from a mounted volume inside an
# allow-listed image, which is what the image allow-list promises cannot happen.
_RESERVED_ENV = re.compile(r"^(FEDMA_|LD_|PYTHON|AWS_)|^(HOME|PATH|HF_HUB_OFFLINE|"
                           r"TRANSFORMERS_OFFLINE)$")
# Annotation keys a silo may not set: fedma's and Kueue's own (the queue is ``queueName``),
# and those that weaken the pod's confinement (AppArmor and seccomp profiles).
_RESERVED_ANNOTATIONS = ("fedma.io/", "kueue.x-k8s.io/",
                         "container.apparmor.security.beta.kubernetes.io/",
                         "seccomp.security.alpha.kubernetes.io/")
_QUALIFIED = re.compile(r"^([a-z0-9]([-a-z0-9.]*[a-z0-9])?/)?[A-Za-z0-9]([-A-Za-z0-9_.]*"
                        r"[A-Za-z0-9])?$")
DnsSubdomain = Annotated[str, Field(min_length=1, max_length=253, pattern=(
    r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"))]
# The paths fedma mounts into a trainer pod: an extra volume may not sit on, under or above
# one of them (a mount at /etc would hide the round file).
FEDMA_MOUNTS = ("/tmp", "/etc/fedma/round", "/dev/shm", "/dev/termination-log")


class EnvVarSpec(_Model):
    """A plain value: no ``valueFrom``, which would have the kubelet read a Secret or
    ConfigMap of the silo's namespace for whoever wrote the spec."""

    model_config = ConfigDict(**_Model.model_config, json_schema_extra={
        "x-kubernetes-validations": [{
            "rule": "!self.name.matches('^(FEDMA_|LD_|PYTHON|AWS_)') && !(self.name in "
                    "['HOME', 'PATH', 'HF_HUB_OFFLINE', 'TRANSFORMERS_OFFLINE'])",
            "message": "env name is reserved (FEDMA_*, LD_*, PYTHON*, AWS_*, HOME, PATH and "
                       "the offline switches are set by fedma or come only from the "
                       "credentials Secret)", "fieldPath": ".name"}]})

    name: Annotated[str, Field(min_length=1, max_length=128, pattern=_ENV_NAME)]
    value: Annotated[str, Field(max_length=1024)] = ""

    @model_validator(mode="after")
    def _not_reserved(self) -> EnvVarSpec:
        if _RESERVED_ENV.match(self.name):
            raise ValueError(f"name {self.name!r} is reserved (FEDMA_*, LD_*, PYTHON*, AWS_*, "
                             "HOME, PATH and the offline switches are set by fedma or come "
                             "only from the credentials Secret)")
        return self


class EmptyDirSpec(_Model):
    medium: Literal["", "Memory"] = ""
    size_limit: Quantity | None = None


class ConfigMapVolumeSpec(_Model):
    name: DnsSubdomain


class ClaimVolumeSpec(_Model):
    claim_name: DnsSubdomain
    read_only: bool = True


class ExtraVolumeSpec(_Model):
    """One more volume, mounted into the trainer: scratch (``emptyDir``), a ConfigMap, or a
    PersistentVolumeClaim. Nothing else: no ``hostPath`` (the node's files), no ``secret``
    (the kubelet would read it for whoever wrote the spec: credentials come from
    ``artifacts.credentialsSecret``), no CSI or projected service-account tokens."""

    model_config = ConfigDict(**_Model.model_config, json_schema_extra={
        "x-kubernetes-validations": [{
            "rule": "[has(self.emptyDir), has(self.configMap), "
                    "has(self.persistentVolumeClaim)].filter(x, x).size() == 1",
            "message": "give exactly one of emptyDir, configMap, persistentVolumeClaim"}]})

    name: DnsLabel
    mount_path: Annotated[str, Field(pattern=r"^/", max_length=1024)]
    read_only: bool = True
    empty_dir: EmptyDirSpec | None = None
    config_map: ConfigMapVolumeSpec | None = None
    persistent_volume_claim: ClaimVolumeSpec | None = None

    @model_validator(mode="after")
    def _one_source(self) -> ExtraVolumeSpec:
        given = [k for k in ("emptyDir", "configMap", "persistentVolumeClaim")
                 if getattr(self, to_snake(k)) is not None]
        if len(given) != 1:
            raise ValueError(f"volume {self.name!r}: give exactly one of emptyDir, configMap, "
                             f"persistentVolumeClaim (got {', '.join(given) or 'none'})")
        return self


_FREE_FORM = {"x-kubernetes-preserve-unknown-fields": True}


class AffinitySpec(_Model):
    """A Kubernetes pod affinity (scheduling only; the apiserver checks the rest of its shape
    when the Job is created, and the silo's status carries its message if it refuses)."""

    node_affinity: dict[str, Any] | None = Field(None, json_schema_extra=_FREE_FORM)
    pod_affinity: dict[str, Any] | None = Field(None, json_schema_extra=_FREE_FORM)
    pod_anti_affinity: dict[str, Any] | None = Field(None, json_schema_extra=_FREE_FORM)


class PodOverridesSpec(_Model):
    """What a platform team sets on a silo's trainer pods. Every field changes scheduling,
    bookkeeping or the trainer's own environment; none reaches the node, a credential or
    the pod's security settings (docs/security.md)."""

    priority_class_name: DnsSubdomain | None = None
    runtime_class_name: DnsSubdomain | None = None
    affinity: AffinitySpec | None = None
    annotations: dict[str, Annotated[str, Field(max_length=1024)]] = Field(
        default_factory=dict, max_length=16)
    env: list[EnvVarSpec] = Field(default_factory=list, max_length=16, json_schema_extra={
        "x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["name"]})
    volumes: list[ExtraVolumeSpec] = Field(default_factory=list, max_length=8,
                                           json_schema_extra={
        "x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["name"]})

    @model_validator(mode="after")
    def _allowed(self) -> PodOverridesSpec:
        for key in self.annotations:
            prefix, _, name = key.rpartition("/")
            if not _QUALIFIED.match(key) or len(prefix) > 253 or len(name) > 63:
                raise ValueError(f"annotations: {key!r} is not a qualified name")
            if key.startswith(_RESERVED_ANNOTATIONS):
                raise ValueError(f"annotations: {key!r} is reserved (fedma.io/, "
                                 "kueue.x-k8s.io/ and the AppArmor and seccomp keys)")
        for kind, names in (("env", [e.name for e in self.env]),
                            ("volumes", [v.name for v in self.volumes])):
            dupes = sorted({n for n in names if names.count(n) > 1})
            if dupes:
                raise ValueError(f"{kind}: names must be unique, repeated: {', '.join(dupes)}")
        for vol in self.volumes:
            if vol.name in ("tmp", "round", "data", "dshm"):
                raise ValueError(f"volumes: name {vol.name!r} is fedma's own")
        return self


def overlaps(a: str, b: str) -> bool:
    """Whether one mount path equals, contains or lies under the other."""
    a, b = a.rstrip("/") or "/", b.rstrip("/") or "/"
    return a == b or a.startswith(b.rstrip("/") + "/") or b.startswith(a.rstrip("/") + "/")


class SiloSpec(_Model):
    name: Annotated[DnsLabel, Field(max_length=40)]
    data: DataSpec
    # Where the operator runs the silo's Job: a namespace (default: the training's), and
    # the name of a Secret holding a kubeconfig for the silo's own cluster (default: the hub).
    namespace: DnsLabel | None = None
    kubeconfig_secret: DnsLabel | None = None
    gpus: int = Field(0, ge=0, le=64)
    image: Annotated[str, Field(min_length=1, max_length=512)] | None = None
    node_selector: dict[str, str] = Field(default_factory=dict)
    tolerations: list[TolerationSpec] = Field(default_factory=list)
    data_volume: VolumeSpec | None = None
    resources: ResourcesSpec = ResourcesSpec()
    # Kueue: the LocalQueue (in the silo's namespace) its Jobs wait in. They are created
    # suspended with the ``kueue.x-k8s.io/queue-name`` label; Kueue admits them (unsuspends)
    # when the queue's quota allows, and the silo's deadline counts from admission.
    queue_name: DnsLabel | None = None
    # The most samples this silo's update may count for in a round's weighted mean (its
    # shard's size, agreed beforehand): a silo's own count is self-reported.
    max_samples: int | None = Field(None, ge=1, le=10**12)
    # None, not an empty default: a round of 1,000 silos carries its spec twice (spec and
    # status.acceptedSpec), and empty maps would be 90 KiB of it.
    pod: PodOverridesSpec | None = None

    @model_validator(mode="after")
    def _mounts_apart(self) -> SiloSpec:
        taken = [*FEDMA_MOUNTS, *([self.data_volume.mount_path] if self.data_volume else [])]
        for vol in self.pod.volumes if self.pod else []:
            clash = next((t for t in taken if overlaps(vol.mount_path, t)), None)
            if clash:
                raise ValueError(f"pod.volumes: {vol.name!r} mountPath {vol.mount_path} "
                                 f"overlaps {clash}, which fedma mounts")
            taken.append(vol.mount_path)
        return self


class DeepSpeedSpec(_Model):
    zero_stage: Literal[0, 1, 2, 3] = 3


class TrainingSpec(_Model):
    engine: Literal["torch", "deepspeed"] = "torch"
    batch_size: int = Field(16, ge=1, le=4096)
    learning_rate: float = Field(1e-3, gt=0, le=10)
    weight_decay: float = Field(0.0, ge=0)
    # Linear learning-rate warmup at the start of every round's local training. The local
    # optimiser starts fresh each round (its state never travels), and Adam's first steps move
    # every weight by about the full learning rate; warmup keeps silos from diverging apart.
    warmup_steps: int = Field(0, ge=0, le=100_000)
    # Clip the projector's gradient to this L2 norm before each optimiser step (0 = off, as
    # DeepSpeed's gradient_clipping). Off by default: it helped one recipe and hurt another
    # (measured in docs/demo.md); `fedma init` writes 1.0 where it helped.
    max_grad_norm: float = Field(0.0, ge=0, le=1e6)
    # FedProx (Li et al., 2020): adds mu/2 * ||w - w_global||^2 to the local loss, pulling each
    # silo's projector towards the round's global one on heterogeneous data (0 = off).
    proximal_mu: float = Field(0.0, ge=0)
    # Local steps are one pass over the silo's shard for the round; this caps them (0 = no cap).
    max_steps_per_round: int = Field(0, ge=0)
    seed: int = 0
    threads: int = Field(0, ge=0, le=512)
    # Recompute the LM's activations during backward instead of keeping them: less memory
    # for large batches and long captions, for one more LM forward per step.
    activation_checkpointing: bool = False
    # Frozen backbones in bfloat16, the projector always float32 (fedma.train.device): auto
    # is bf16 where the silo's pod has a GPU and fp32 on a CPU.
    precision: Literal["auto", "bf16", "fp32"] = "auto"
    deepspeed: DeepSpeedSpec = DeepSpeedSpec()

    @model_validator(mode="after")
    def _prox_engine(self) -> TrainingSpec:
        if self.proximal_mu > 0 and self.engine == "deepspeed" and self.deepspeed.zero_stage == 3:
            raise ValueError(
                "training.proximalMu: not supported with deepspeed.zeroStage 3 (the projector's "
                "weights are partitioned outside its forward); use zeroStage 0-2 for FedProx")
        return self


class RobustSpec(_Model):
    """How silo deltas are combined before the server step (defends against broken or hostile
    silos); ``mean`` is the sample-weighted mean."""

    rule: Literal["mean", "median", "trimmed_mean", "multi_krum"] = "mean"
    trim_fraction: float = Field(0.1, ge=0, lt=0.5)
    # Multi-Krum: assumed number of bad silos f (needs at least 2f + 3 updates).
    byzantine: int = Field(1, ge=0)
    # Scale each silo delta down to this L2 norm before combining (0 = off).
    clip_norm: float = Field(0.0, ge=0)
    # Reject (not scale) an update whose delta's L2 norm exceeds this (0 = off): a silo whose
    # training diverged or who sends garbage is left out, with the norm in the reason.
    max_update_norm: float = Field(0.0, ge=0)


class PrivacySpec(_Model):
    """Central differential privacy over silos (DP-FedAvg): clip, average, add Gaussian noise;
    the (ε, δ) budget is tracked across rounds. Off while noiseMultiplier is 0."""

    noise_multiplier: float = Field(0.0, ge=0, le=100)
    clip_norm: float = Field(0.0, ge=0)
    delta: float = Field(1e-5, gt=0, lt=1)

    @model_validator(mode="after")
    def _clip_needed(self) -> PrivacySpec:
        if self.noise_multiplier > 0 and self.clip_norm <= 0:
            raise ValueError("privacy.clipNorm must be > 0 when noiseMultiplier is set")
        return self


class AggregationSpec(_Model):
    # fedprox = FedAvg at the server with the proximal term on the silos (training.proximalMu).
    strategy: Literal["fedavg", "fedavgm", "fedadagrad", "fedadam", "fedyogi", "fedprox",
                      "fedcmp"] = "fedavg"
    # Quorum: fewest accepted silo updates an aggregation may use (0 = all silos).
    min_silos: int = Field(0, ge=0)
    # Seconds a round waits for stragglers once quorum is met.
    deadline_seconds: int = Field(3600, ge=1, le=7 * 24 * 3600)
    # Attempts per silo Job before the silo is excluded from the round.
    backoff_limit: int = Field(1, ge=0, le=20)
    # Strategy knobs: server_lr (all), beta1 (momentum/adaptive), beta2, tau (adaptive).
    options: dict[str, float] = Field(default_factory=dict)
    robust: RobustSpec = RobustSpec()
    privacy: PrivacySpec = PrivacySpec()

    @model_validator(mode="after")
    def _clip_not_reject_under_dp(self) -> AggregationSpec:
        if self.privacy.noise_multiplier > 0 and self.robust.max_update_norm > 0:
            raise ValueError(
                "robust.maxUpdateNorm: not with central DP (privacy.noiseMultiplier > 0): "
                "rejecting an update for its size is a data-dependent choice the privacy "
                "accountant does not see; privacy.clipNorm bounds every update instead")
        return self


class ArtifactsSpec(_Model):
    """Where rounds live: an fsspec URI root (``file://...`` or ``s3://bucket/prefix``)."""

    uri: StoreUri
    # Name of a Secret with store credentials; credentials never appear in a spec.
    credentials_secret: str | None = None
    # How silo updates travel (fedma.encoding): float32 weights, or the delta from the round's
    # input in bfloat16 (half the bytes) or int8 with per-row scales (a quarter).
    update_encoding: Literal["float32", "bfloat16", "int8"] = "float32"


class EvaluationSpec(_Model):
    """Held-out manifest: caption loss, and retrieval accuracy over lines carrying ``choices``."""

    data: DataSpec
    max_samples: int = Field(200, ge=1)
    batch_size: int = Field(32, ge=1)


class ProjectorRef(_Model):
    uri: StoreUri
    digest: Digest


# The cross-field rules of ``_CommonSpec._silos_consistent`` that an API server can check at
# admission (CEL in the generated CRDs), so ``kubectl apply`` refuses them with this message.
_CEL_RULES = [
    {"rule": "!has(self.aggregation) || !has(self.aggregation.minSilos) || "
             "self.aggregation.minSilos <= size(self.silos)",
     "message": "aggregation.minSilos exceeds the number of silos listed",
     "fieldPath": ".aggregation.minSilos"},
    {"rule": "!has(self.aggregation) || !has(self.aggregation.strategy) || "
             "self.aggregation.strategy != 'fedprox' || (has(self.training) && "
             "has(self.training.proximalMu) && self.training.proximalMu > 0.0)",
     "message": "training.proximalMu must be > 0 with aggregation.strategy fedprox",
     "fieldPath": ".training.proximalMu"},
    {"rule": "!has(self.aggregation) || !has(self.aggregation.privacy) || "
             "!has(self.aggregation.privacy.noiseMultiplier) || "
             "self.aggregation.privacy.noiseMultiplier == 0.0 || "
             "!has(self.aggregation.robust) || !has(self.aggregation.robust.maxUpdateNorm) || "
             "self.aggregation.robust.maxUpdateNorm == 0.0",
     "message": "aggregation.robust.maxUpdateNorm is not allowed with central DP (DP clips, "
                "never rejects)",
     "fieldPath": ".aggregation.robust.maxUpdateNorm"},
    # The torch engine trains in one process on one device: a pod given several GPUs would
    # hold them and use one.
    {"rule": "(has(self.training) && has(self.training.engine) && "
             "self.training.engine == 'deepspeed') || "
             "self.silos.all(s, !has(s.gpus) || s.gpus <= 1)",
     "message": "silos[].gpus above 1 needs training.engine deepspeed (the torch engine "
                "trains on one device)",
     "fieldPath": ".training.engine"},
]


class _CommonSpec(_Model):
    model_config = ConfigDict(**_Model.model_config,
                              json_schema_extra={"x-kubernetes-validations": _CEL_RULES})

    model: ModelSpec
    # A map keyed by name: the API server refuses two silos of one name (Duplicate value).
    silos: list[SiloSpec] = Field(min_length=1, max_length=1000, json_schema_extra={
        "x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["name"]})
    training: TrainingSpec = TrainingSpec()
    aggregation: AggregationSpec = AggregationSpec()
    artifacts: ArtifactsSpec
    evaluation: EvaluationSpec | None = None

    @model_validator(mode="after")
    def _silos_consistent(self) -> _CommonSpec:
        names = [s.name for s in self.silos]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"silos: names must be unique, repeated: {', '.join(dupes)}")
        if self.aggregation.strategy == "fedprox" and self.training.proximal_mu <= 0:
            raise ValueError("training.proximalMu: must be > 0 with aggregation.strategy fedprox "
                             "(FedProx's proximal term lives in local training)")
        many = [s.name for s in self.silos if s.gpus > 1]
        if many and self.training.engine == "torch":
            i = names.index(many[0])
            raise ValueError(
                f"silos[{i}].gpus: {self.silos[i].gpus} GPUs need training.engine deepspeed "
                f"(the torch engine trains on one device; silos with gpus > 1: "
                f"{', '.join(many)})")
        if self.aggregation.min_silos > len(self.silos):
            raise ValueError(
                f"aggregation.minSilos: {self.aggregation.min_silos} exceeds the "
                f"{len(self.silos)} silos listed"
            )
        return self

    @property
    def quorum(self) -> int:
        return self.aggregation.min_silos or len(self.silos)


# A training may start from a projector an earlier one produced, in the same store (its
# credentials and its digests): ``uri`` must lie below ``artifacts.uri``.
_INITIAL_IN_STORE = {
    "rule": "!has(self.initialProjector) || "
            "self.initialProjector.uri.startsWith(self.artifacts.uri.endsWith('/') ? "
            "self.artifacts.uri : self.artifacts.uri + '/')",
    "message": "initialProjector.uri must lie inside artifacts.uri (the training's store)",
    "fieldPath": ".initialProjector.uri"}


class FederatedTrainingSpec(_CommonSpec):
    model_config = ConfigDict(**_Model.model_config, json_schema_extra={
        "x-kubernetes-validations": [*_CEL_RULES, _INITIAL_IN_STORE]})

    # Raising it extends the training, also after it finished; every further round trains on
    # shards of a new pass over the data (FederatedRoundSpec.passRounds).
    rounds: int = Field(ge=1, le=10_000)
    # Pause between rounds: the running round finishes, the next is not created until this is
    # false again. With ``rounds``, the only field that may change after the training started.
    suspend: bool = False
    # Round 1 starts from this projector (e.g. an earlier training's global of some round)
    # instead of a seeded initialisation; its sha256 is checked wherever it is read.
    initial_projector: ProjectorRef | None = None

    @model_validator(mode="after")
    def _initial_in_store(self) -> FederatedTrainingSpec:
        ref = self.initial_projector
        if ref is not None and not ref.uri.startswith(self.artifacts.uri.rstrip("/") + "/"):
            raise ValueError(f"initialProjector.uri: {ref.uri} is not inside artifacts.uri "
                             f"{self.artifacts.uri} (a training reads only its own store)")
        return self


class FederatedRoundSpec(_CommonSpec):
    # A round is a record of what ran: its spec never changes after creation.
    model_config = ConfigDict(**_Model.model_config, json_schema_extra={
        "x-kubernetes-validations": [*_CEL_RULES, {
            "rule": "self == oldSelf",
            "message": "a FederatedRound's spec is immutable; create a new round"}]})

    # Names the training's folder in the store and its Jobs' labels: a DNS label, like
    # metadata.name of the FederatedTraining it comes from.
    training_name: DnsLabel
    round: int = Field(ge=1, le=10_000)
    total_rounds: int = Field(ge=1, le=10_000)
    # The global projector this round starts from; None for the first round of a training
    # that starts from a seeded initialisation.
    input: ProjectorRef | None = None
    server_state: ProjectorRef | None = None
    # Rounds per pass over each silo's data: round r trains on shard ((r-1) mod passRounds)
    # of pass (r-1) div passRounds, each pass a fresh shuffle. The training's rounds when it
    # started (default totalRounds), so extending a training never re-cuts earlier shards.
    pass_rounds: int | None = Field(None, ge=1, le=10_000)

    @model_validator(mode="after")
    def _round_in_range(self) -> FederatedRoundSpec:
        if self.round > self.total_rounds:
            raise ValueError(f"round: {self.round} exceeds totalRounds {self.total_rounds}")
        return self

    @property
    def rounds_per_pass(self) -> int:
        return self.pass_rounds or self.total_rounds


class ObjectMeta(BaseModel):
    model_config = ConfigDict(extra="allow")
    name: DnsLabel
    namespace: str | None = None


class FederatedTraining(_Model):
    api_version: Literal["fedma.io/v1alpha1"] = Field(API_VERSION, alias="apiVersion")
    kind: Literal["FederatedTraining"] = "FederatedTraining"
    metadata: ObjectMeta
    spec: FederatedTrainingSpec


class FederatedRound(_Model):
    api_version: Literal["fedma.io/v1alpha1"] = Field(API_VERSION, alias="apiVersion")
    kind: Literal["FederatedRound"] = "FederatedRound"
    metadata: ObjectMeta
    spec: FederatedRoundSpec


def _format_loc(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out or "(root)"


def _errors(exc: ValidationError) -> list[tuple[str, str]]:
    errs = []
    for e in exc.errors():
        msg = e["msg"].removeprefix("Value error, ")
        if e["type"] == "extra_forbidden":
            key = str(e["loc"][-1]) if e["loc"] else ""
            msg = (f"unknown field; the API spells it {to_camel(key)!r} (camelCase, as in the "
                   "cluster)" if "_" in key else
                   "unknown field (check its spelling against the API reference)")
        errs.append((_format_loc(e["loc"]), msg))
    return errs


_KINDS: dict[str, type[FederatedTraining] | type[FederatedRound]] = {
    "FederatedTraining": FederatedTraining,
    "FederatedRound": FederatedRound,
}


def parse(obj: Any, source: str = "manifest") -> FederatedTraining | FederatedRound:
    """Validate a decoded manifest; raises :class:`SpecError` naming every broken field."""
    if not isinstance(obj, dict):
        raise SpecError(source, [("(root)", "expected a mapping (a Kubernetes object)")])
    if obj.get("apiVersion") != API_VERSION:
        raise SpecError(
            source, [("apiVersion", f"must be {API_VERSION!r}, got {obj.get('apiVersion')!r}")]
        )
    kind = obj.get("kind")
    if kind not in _KINDS:
        raise SpecError(source, [("kind", f"must be one of {sorted(_KINDS)}, got {kind!r}")])
    try:
        # Aliases only: a manifest is read exactly as the cluster's schema reads it
        # (``batchSize``, never ``batch_size``), so one file cannot mean two things.
        return _KINDS[kind].model_validate(obj, by_alias=True, by_name=False)
    except ValidationError as exc:
        raise SpecError(source, _errors(exc)) from None


def load(path: str | Path) -> FederatedTraining | FederatedRound:
    """Read one manifest from a YAML file (the same file a user would ``kubectl apply``)."""
    p = Path(path)
    try:
        text = p.read_text()
    except OSError as exc:
        raise SpecError(str(p), [("(file)", f"cannot read: {exc.strerror}")]) from None
    try:
        obj = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise SpecError(str(p), [("(yaml)", str(exc).replace("\n", " "))]) from None
    return parse(obj, source=str(p))


def round_spec(training: FederatedTraining, round_index: int, input_ref: ProjectorRef | None,
               server_state: ProjectorRef | None = None, pass_rounds: int | None = None
               ) -> FederatedRound:
    """The FederatedRound a training creates for round ``round_index`` (spec copied).

    Round 1 starts from ``spec.initialProjector`` when given. ``pass_rounds`` is the
    training's ``rounds`` when it started (None: the same as now)."""
    base = training.spec.model_dump(by_alias=False,
                                    exclude={"rounds", "suspend", "initial_projector"})
    if input_ref is None and round_index == 1:
        input_ref = training.spec.initial_projector
    spec = FederatedRoundSpec(
        **base,
        training_name=training.metadata.name,
        round=round_index,
        total_rounds=training.spec.rounds,
        input=input_ref,
        server_state=server_state,
        pass_rounds=pass_rounds if pass_rounds not in (None, training.spec.rounds) else None,
    )
    meta = ObjectMeta(
        name=f"{training.metadata.name}-r{round_index:04d}"[:63],
        namespace=training.metadata.namespace,
    )
    return FederatedRound(metadata=meta, spec=spec)


def dump(obj: BaseModel) -> dict[str, Any]:
    """The wire form (camelCase, no unset optionals) of an API object."""
    return obj.model_dump(by_alias=True, exclude_none=True, mode="json")
