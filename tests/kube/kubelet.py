"""The process kubelet: test infrastructure that stands in for the scheduler, the kubelet and the
container runtime of one Node, so that the real Job controller, garbage collector and admission
of a test control plane do their real work.

It registers a Node, lists and then watches the pods not yet finished, binds Pending pods to
it (the scheduler's part; with ``--scheduled`` the real kube-scheduler does, and this kubelet
runs only the pods bound to its node), and runs each container's
``command + args`` as a local process (the image is not pulled: the command must exist on this
machine's PATH, e.g. the venv's ``fedma``), with:

- ``env`` (values, ``secretKeyRef``/``configMapKeyRef``, ``fieldRef``) and ``envFrom`` read from the
  API; a missing Secret or ConfigMap leaves the container waiting with
  ``CreateContainerConfigError``, as a kubelet does;
- volumes mapped to host folders under ``--root``: ``emptyDir`` per pod, a
  ``persistentVolumeClaim`` to ``<root>/pvc/<namespace>/<claim>``, ``secret``/``configMap`` written
  as files; a container path in an argument or env value that lies under a mount (or is the
  termination-message path) is rewritten to its host folder (processes share one file system);
- the termination message from ``terminationMessagePath`` (at most 4096 bytes), or with
  ``FallbackToLogsOnError`` the log's last 80 lines (2048 bytes) of a failed container;
- the container's memory limit, as its cgroup would: the anonymous resident memory of its
  processes is summed every 0.25 s and past ``resources.limits.memory`` the group is killed
  (SIGKILL) and reported ``terminated`` with reason ``OOMKilled``, exit code 137;
- exit codes → ``terminated`` states and the pod phase (``restartPolicy: Never``; ``OnFailure``
  restarts the process);
- deletion: SIGTERM to the process group, SIGKILL after the grace period, then the final delete.

``--faults-file F`` (JSON, read each time) makes the node fail as nodes do: an image its
registry lacks (``ErrImagePull``, then ``ImagePullBackOff``), pods evicted for memory pressure
(killed, then ``Failed``/``Evicted``).

``--fast`` completes every pod at once without a process (exit 0, the message from
``--fast-message MODULE:FUNCTION`` called with the pod), for load tests of the operator.

Run: ``python -m tests.kube.kubelet --kubeconfig F --node N --root DIR [--env K=V ...]
[--env-file F]`` (F: a JSON object added to every process's environment, read at each start:
how a test injects a fault, e.g. ``FEDMA_FAULT``, into the next pods).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import importlib
import json
import logging
import os
import signal
import ssl
import sys
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aiohttp
import yaml

log = logging.getLogger("process-kubelet")
MESSAGE_LIMIT = 4096
FALLBACK_LINES, FALLBACK_BYTES = 80, 2048
STATUS_TRIES = 240  # 0.5 s apart: a pod's status outlives a two-minute apiserver outage


_UNITS = {"": 1, "k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12,
          "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40}


def quantity_bytes(value: str | int | None) -> int | None:
    """A memory quantity (``512Mi``, ``8Gi``, ``1000000``) in bytes; None if unset."""
    if value is None:
        return None
    text = str(value)
    digits = text.rstrip("kMGTi")
    return int(float(digits) * _UNITS[text[len(digits):]])


def group_rss(pgid: int) -> int:
    """Anonymous resident bytes (RssAnon) of every process in the process group ``pgid`` (a
    container's: it is started in a session of its own). Anonymous memory is what a cgroup
    cannot reclaim before its OOM killer acts; file-backed pages (torch's libraries, about
    250 MiB) are reclaimable and, summed per process, would be counted once for each."""
    total = 0
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat", "rb") as f:
                fields = f.read().rsplit(b")", 1)[1].split()
            if int(fields[2]) != pgid:  # field 5 of stat: the process group
                continue
            with open(f"/proc/{entry.name}/status", "rb") as f:
                for line in f:
                    if line.startswith(b"RssAnon:"):
                        total += int(line.split()[1]) * 1024
                        break
        except (OSError, IndexError, ValueError):
            continue
    return total


async def enforce_memory(proc: asyncio.subprocess.Process, limit: int) -> bool:
    """Kill ``proc``'s group once its resident memory passes ``limit``; True if it did."""
    while proc.returncode is None:
        if group_rss(proc.pid) > limit:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            return True
        await asyncio.sleep(0.25)
    return False


def now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class ConfigError(Exception):
    """A container cannot be configured yet (a missing Secret or ConfigMap)."""


@dataclass
class Api:
    server: str
    ssl: ssl.SSLContext
    headers: dict[str, str]
    session: aiohttp.ClientSession | None = None

    @classmethod
    def from_kubeconfig(cls, path: Path) -> Api:
        cfg = yaml.safe_load(path.read_text())
        cluster = cfg["clusters"][0]["cluster"]
        user = cfg["users"][0]["user"]
        ctx = ssl.create_default_context(cafile=cluster["certificate-authority"])
        headers = {"User-Agent": "process-kubelet"}
        if "client-certificate" in user:
            ctx.load_cert_chain(user["client-certificate"], user["client-key"])
        if "token" in user:
            headers["Authorization"] = f"Bearer {user['token']}"
        return cls(cluster["server"], ctx, headers)

    def _session(self) -> aiohttp.ClientSession:
        if self.session is None:  # a watch event is one line, as long as its pod
            self.session = aiohttp.ClientSession(read_bufsize=1 << 24)
        return self.session

    async def call(self, method: str, path: str, body: Any = None,
                   content_type: str = "application/json") -> tuple[int, Any]:
        async with self._session().request(
                method, self.server + path, ssl=self.ssl,
                data=json.dumps(body) if body is not None else None,
                headers={**self.headers, "Content-Type": content_type},
                timeout=aiohttp.ClientTimeout(total=30)) as r:
            text = await r.text()
            try:
                return r.status, json.loads(text) if text else None
            except ValueError:
                return r.status, text

    async def stream(self, path: str, timeout: float) -> AsyncIterator[dict[str, Any]]:
        """A watch: one JSON event per line until the server ends it."""
        async with self._session().get(self.server + path, ssl=self.ssl, headers=self.headers,
                                    timeout=aiohttp.ClientTimeout(total=timeout)) as r:
            if r.status != 200:
                log.warning("watch: %s %s", r.status, (await r.text())[:200])
                return
            async for line in r.content:
                if line.strip():
                    yield json.loads(line)


@dataclass
class Running:
    """What the kubelet knows of one pod it started."""
    pod: dict[str, Any]
    folder: Path
    procs: dict[str, asyncio.subprocess.Process] = field(default_factory=dict)
    states: dict[str, dict[str, Any]] = field(default_factory=dict)  # container → state
    started_at: str = field(default_factory=now)
    config_error: bool = False  # a container could not be configured: start again
    pulls: int = 0  # failed pulls of an image the node's registry lacks (--faults-file)
    evicted: bool = False  # evicted for node pressure (--faults-file)
    restarts: dict[str, int] = field(default_factory=dict)
    task: asyncio.Task | None = None
    deleter: asyncio.Task | None = None
    deleting: bool = False


class ProcessKubelet:
    def __init__(self, api: Api, node: str, root: Path, extra_env: dict[str, str],
                 fast: Callable[[dict[str, Any]], str] | None = None, interval: float = 0.2,
                 env_file: Path | None = None, scheduled: bool = False,
                 faults_file: Path | None = None):
        self.api, self.node, self.root, self.extra_env = api, node, root, extra_env
        self.scheduled = scheduled  # a real scheduler binds pods; this kubelet does not
        self.env_file = env_file
        self.faults_file = faults_file
        self.fast, self.interval = fast, interval
        self.pods: dict[str, Running] = {}  # by uid

    # -- the node ------------------------------------------------------------------------------
    async def register(self) -> None:
        node = {"apiVersion": "v1", "kind": "Node", "metadata": {"name": self.node, "labels": {
            "kubernetes.io/hostname": self.node, "kubernetes.io/os": "linux"}}}
        status, body = await self.api.call("POST", "/api/v1/nodes", node)
        if status not in (201, 409):
            raise RuntimeError(f"cannot register node {self.node}: {status} {body}")
        # The node's declared size, not this machine's: its processes share the machine and
        # honour no requests, so the capacity is one that the trainer's default requests
        # (4 CPUs, 32 Gi a silo) fit many times over; 8 GPUs, so that a pod asking for more
        # is Unschedulable for the real scheduler, as on a real 8-GPU node.
        size = {"cpu": "256", "memory": "2Ti", "pods": "1000", "nvidia.com/gpu": "8"}
        st = {"status": {
            "capacity": size, "allocatable": size,
            "addresses": [{"type": "InternalIP", "address": "127.0.0.1"}],
            "conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady",
                            "message": "process kubelet", "lastHeartbeatTime": now(),
                            "lastTransitionTime": now()}]}}
        await self.api.call("PATCH", f"/api/v1/nodes/{self.node}/status", st,
                            "application/merge-patch+json")

    LEASE_S = 40  # the kubelet's default node lease

    async def heartbeat(self) -> None:
        """Renew the node's Lease in kube-node-lease every 10 s, as a kubelet does: the real
        node-lifecycle controller (run with the scheduler) reads it to keep the node Ready and
        to lift the ``node.kubernetes.io/not-ready`` taint that admission put on the new node."""
        path = f"/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases/{self.node}"
        while True:
            micro = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
            lease = {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                     "metadata": {"name": self.node, "namespace": "kube-node-lease"},
                     "spec": {"holderIdentity": self.node, "renewTime": micro,
                              "leaseDurationSeconds": self.LEASE_S}}
            with contextlib.suppress(TimeoutError, aiohttp.ClientError, OSError):
                status, _ = await self.api.call("PATCH", path, {"spec": lease["spec"]},
                                                "application/merge-patch+json")
                if status == 404:
                    await self.api.call("POST", path.rsplit("/", 1)[0], lease)
            await asyncio.sleep(10)

    async def provision(self) -> None:
        """Where a real scheduler runs, a pod whose claim is unbound is never placed, so this
        plays the cluster's storage provisioner: each Pending claim without a volume gets a
        PersistentVolume (its host folder, the one this kubelet mounts for the claim) pre-bound
        to it, and the real PV controller binds the two, as after dynamic provisioning."""
        while True:
            with contextlib.suppress(TimeoutError, aiohttp.ClientError, OSError):
                status, body = await self.api.call("GET", "/api/v1/persistentvolumeclaims")
                for pvc in (body or {}).get("items", []) if status == 200 else []:
                    meta, spec = pvc["metadata"], pvc["spec"]
                    if spec.get("volumeName") or (pvc.get("status") or {}).get(
                            "phase") != "Pending":
                        continue
                    folder = self.root / "pvc" / meta["namespace"] / meta["name"]
                    folder.mkdir(parents=True, exist_ok=True)
                    pv = {"apiVersion": "v1", "kind": "PersistentVolume",
                          "metadata": {"name": f"pvc-{meta['uid']}"},
                          "spec": {"capacity": spec["resources"]["requests"],
                                   "accessModes": spec.get("accessModes") or ["ReadWriteOnce"],
                                   "storageClassName": spec.get("storageClassName") or "",
                                   "persistentVolumeReclaimPolicy": "Retain",
                                   "hostPath": {"path": str(folder)},
                                   "claimRef": {"namespace": meta["namespace"],
                                                "name": meta["name"], "uid": meta["uid"]}}}
                    await self.api.call("POST", "/api/v1/persistentvolumes", pv)
            await asyncio.sleep(1)

    # -- the loop ------------------------------------------------------------------------------
    # Pods still to bind, start, run or kill; finished ones are the Job controller's (a terminal
    # pod's deletion needs no kubelet), and listing them would grow with history.
    SELECTOR = "fieldSelector=" + quote("status.phase!=Succeeded,status.phase!=Failed")
    WATCH_S = 30

    async def run(self) -> None:
        """List, then watch from the list's resourceVersion (as a kubelet does: polling the
        list would cost the apiserver the whole pod list several times a second); relist when
        the watch ends or fails. Pods that could not be configured are retried on a clock."""
        await self.register()
        retry = asyncio.create_task(self.retry_config_errors())
        beat = asyncio.create_task(self.heartbeat())
        storage = asyncio.create_task(self.provision()) if self.scheduled else None
        try:
            while True:
                try:
                    version = await self.sync()
                    if version:
                        await self.watch(version)
                except (TimeoutError, aiohttp.ClientError, OSError, ValueError) as exc:
                    log.warning("apiserver: %s", exc)  # a restarted apiserver: try again
                await asyncio.sleep(self.interval)
        finally:
            retry.cancel()
            beat.cancel()
            if storage is not None:
                storage.cancel()

    async def sync(self) -> str:
        """One pass over every pod; returns the list's resourceVersion ("" if it failed)."""
        status, body = await self.api.call("GET", f"/api/v1/pods?{self.SELECTOR}")
        if status != 200:
            log.warning("list pods: %s %s", status, str(body)[:200])
            return ""
        seen = set()
        for pod in body.get("items", []):
            seen.add(pod["metadata"]["uid"])
            await self.handle(pod)
        for uid in set(self.pods) - seen:
            self.pods.pop(uid)
        return str((body.get("metadata") or {}).get("resourceVersion") or "")

    async def watch(self, version: str) -> None:
        path = (f"/api/v1/pods?{self.SELECTOR}&watch=1&resourceVersion={version}"
                f"&timeoutSeconds={self.WATCH_S}")
        async for event in self.api.stream(path, self.WATCH_S + 15):
            kind, pod = event.get("type"), event.get("object") or {}
            if kind == "ERROR":  # e.g. 410 Gone: the version is too old; relist
                return
            if kind == "DELETED":  # deleted, or no longer selected (it finished)
                self.pods.pop(pod.get("metadata", {}).get("uid", ""), None)
            elif kind in ("ADDED", "MODIFIED"):
                await self.handle(pod)

    async def handle(self, pod: dict[str, Any]) -> None:
        meta, spec = pod["metadata"], pod["spec"]
        uid = meta["uid"]
        node = spec.get("nodeName")
        if not node:
            if not self.scheduled:
                await self.bind(pod)
            return
        if node != self.node:
            return
        running = self.pods.get(uid)
        if meta.get("deletionTimestamp"):
            if running is None or not running.deleting:
                running = running or self.pods.setdefault(uid, Running(pod, self._dir(pod)))
                running.deleting = True
                running.deleter = asyncio.create_task(self.delete(running))
            return
        phase = (pod.get("status") or {}).get("phase")
        if running is None and phase in (None, "Pending"):
            running = self.pods[uid] = Running(pod, self._dir(pod))
            running.task = asyncio.create_task(self.start(running))

    def faults(self) -> dict[str, Any]:
        """What the node suffers, as a test sets it (``--faults-file``, read each time): images
        its registry lacks (``missingImages``) and Jobs whose pods it evicts for memory
        pressure (``evictJobs``, names or name prefixes ending in ``*``)."""
        if self.faults_file is None or not self.faults_file.exists():
            return {}
        return json.loads(self.faults_file.read_text() or "{}")

    def _evicting(self, running: Running, faults: dict[str, Any]) -> bool:
        job = (running.pod["metadata"].get("labels") or {}).get("job-name", "")
        return any(job == p or (p.endswith("*") and job.startswith(p[:-1]))
                   for p in faults.get("evictJobs") or [])

    async def retry_config_errors(self) -> None:
        """A container that could not be configured (a missing Secret, an image not in the
        registry): try again. And evict the pods the faults file names."""
        while True:
            await asyncio.sleep(self.interval)
            faults = self.faults()
            for running in list(self.pods.values()):
                if (not running.evicted and running.procs and not running.deleting
                        and self._evicting(running, faults)):
                    running.evicted = True  # as the kubelet's eviction manager: kill, then
                    for proc in running.procs.values():  # report the pod Failed/Evicted
                        with contextlib.suppress(ProcessLookupError):
                            os.killpg(proc.pid, signal.SIGKILL)
                if (running.task is not None and running.task.done() and running.config_error
                        and not running.deleting):
                    running.config_error = False
                    running.task = asyncio.create_task(self.start(running))

    def _dir(self, pod: dict[str, Any]) -> Path:
        d = self.root / "pods" / pod["metadata"]["uid"]
        d.mkdir(parents=True, exist_ok=True)
        return d

    async def bind(self, pod: dict[str, Any]) -> None:
        meta = pod["metadata"]
        if meta.get("deletionTimestamp") or (pod["spec"].get("schedulingGates")):
            return
        binding = {"apiVersion": "v1", "kind": "Binding",
                   "metadata": {"name": meta["name"], "namespace": meta["namespace"]},
                   "target": {"apiVersion": "v1", "kind": "Node", "name": self.node}}
        status, body = await self.api.call(
            "POST", f"/api/v1/namespaces/{meta['namespace']}/pods/{meta['name']}/binding",
            binding)
        if status not in (201, 409):
            log.warning("bind %s/%s: %s %s", meta["namespace"], meta["name"], status, body)

    # -- one pod -------------------------------------------------------------------------------
    async def patch_status(self, running: Running, phase: str, extra: dict[str, Any] | None = None
                           ) -> None:
        pod = running.pod
        meta = pod["metadata"]
        statuses = []
        for c in pod["spec"]["containers"]:
            state = running.states.get(c["name"]) or {"waiting": {"reason": "ContainerCreating"}}
            statuses.append({"name": c["name"], "image": c.get("image", ""),
                             "imageID": "", "ready": "running" in state,
                             "restartCount": running.restarts.get(c["name"], 0),
                             "started": "running" in state, "state": state})
        ready = "True" if phase == "Running" else "False"
        body = {"status": {"phase": phase, "hostIP": "127.0.0.1", "podIP": "127.0.0.1",
                           "podIPs": [{"ip": "127.0.0.1"}], "startTime": running.started_at,
                           "containerStatuses": statuses,
                           "conditions": [
                               {"type": "PodScheduled", "status": "True"},
                               {"type": "Initialized", "status": "True"},
                               {"type": "ContainersReady", "status": ready},
                               {"type": "Ready", "status": ready}],
                           **(extra or {})}}
        path = f"/api/v1/namespaces/{meta['namespace']}/pods/{meta['name']}/status"
        for _ in range(STATUS_TRIES):  # an apiserver restarting must not lose a pod's outcome
            try:
                status, out = await self.api.call("PATCH", path, body,
                                                  "application/merge-patch+json")
            except (TimeoutError, aiohttp.ClientError, OSError) as exc:
                log.warning("pod status %s/%s: %s; retrying", meta["namespace"], meta["name"],
                            exc)
                await asyncio.sleep(0.5)
                continue
            if status in (200, 404):
                return
            log.warning("pod status %s/%s: %s %s", meta["namespace"], meta["name"], status, out)
            if status < 500 and status not in (403, 429):  # 403: a fresh apiserver's RBAC
                return
            await asyncio.sleep(0.5)

    async def start(self, running: Running) -> None:
        pod = running.pod
        if self.fast is not None:
            message = self.fast(pod)
            for c in pod["spec"]["containers"]:
                running.states[c["name"]] = {"terminated": {
                    "exitCode": 0, "reason": "Completed", "message": message[:MESSAGE_LIMIT],
                    "startedAt": now(), "finishedAt": now()}}
            await self.patch_status(running, "Succeeded")
            return
        missing = [c.get("image", "") for c in pod["spec"]["containers"]
                   if c.get("image") in (self.faults().get("missingImages") or [])]
        if missing:  # as a kubelet whose registry answers "not found"
            reason = "ImagePullBackOff" if running.pulls else "ErrImagePull"
            message = (f'Back-off pulling image "{missing[0]}"' if running.pulls else
                       f'failed to pull and unpack image "{missing[0]}": not found')
            running.pulls += 1
            for c in pod["spec"]["containers"]:
                running.states[c["name"]] = {"waiting": {"reason": reason, "message": message}}
            running.config_error = True
            await self.patch_status(running, "Pending")
            await asyncio.sleep(1)
            return
        try:
            plans = [await self.plan(running, c) for c in pod["spec"]["containers"]]
        except ConfigError as exc:
            for c in pod["spec"]["containers"]:
                running.states[c["name"]] = {"waiting": {"reason": "CreateContainerConfigError",
                                                         "message": str(exc)}}
            running.config_error = True
            await self.patch_status(running, "Pending")
            await asyncio.sleep(1)
            return
        codes = await asyncio.gather(*(self.run_container(running, *p) for p in plans))
        if running.deleting:
            return
        if running.evicted:
            await self.patch_status(running, "Failed", {
                "reason": "Evicted", "message": "The node was low on resource: memory. "
                "Threshold quantity: 100Mi, available: 64Mi."})
            return
        await self.patch_status(running, "Succeeded" if all(c == 0 for c in codes) else "Failed")

    async def lookup(self, kind: str, ns: str, name: str, optional: bool) -> dict[str, str]:
        status, body = await self.api.call("GET", f"/api/v1/namespaces/{ns}/{kind}/{name}")
        if status == 404:
            if optional:
                return {}
            raise ConfigError(f'{kind[:-1]} "{name}" not found')
        if status != 200:
            raise ConfigError(f"{kind}/{name}: {status}")
        if kind == "secrets":
            return {k: base64.b64decode(v).decode() for k, v in (body.get("data") or {}).items()}
        return dict(body.get("data") or {})

    async def plan(self, running: Running, c: dict[str, Any]
                   ) -> tuple[dict[str, Any], list[str], dict[str, str], Path]:
        pod = running.pod
        ns = pod["metadata"]["namespace"]
        mounts = await self.volumes(running)
        term = running.folder / c["name"] / "termination-log"
        term.parent.mkdir(parents=True, exist_ok=True)
        term.write_text("")
        path_map = {m["mountPath"].rstrip("/") or "/": mounts[m["name"]]
                    for m in c.get("volumeMounts", []) if m["name"] in mounts}
        path_map[c.get("terminationMessagePath", "/dev/termination-log")] = term

        def host(value: str) -> str:
            for cpath, hpath in sorted(path_map.items(), key=lambda kv: -len(kv[0])):
                if value == cpath or value.startswith(cpath + "/"):
                    return str(hpath) + value[len(cpath):]
            return value

        # The "image" is this machine: its Python environment's commands come first.
        path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
        env: dict[str, str] = {"PATH": path, "HOME": str(running.folder),
                               "HOSTNAME": pod["metadata"]["name"]}
        for src in c.get("envFrom", []):
            prefix = src.get("prefix", "")
            if "secretRef" in src:
                ref = src["secretRef"]
                data = await self.lookup("secrets", ns, ref["name"], ref.get("optional", False))
            else:
                ref = src["configMapRef"]
                data = await self.lookup("configmaps", ns, ref["name"],
                                         ref.get("optional", False))
            env.update({prefix + k: v for k, v in data.items()})
        for e in c.get("env", []):
            if "value" in e:
                env[e["name"]] = host(e["value"])
            elif "valueFrom" in e:
                vf = e["valueFrom"]
                if "secretKeyRef" in vf or "configMapKeyRef" in vf:
                    kind, ref = (("secrets", vf["secretKeyRef"]) if "secretKeyRef" in vf
                                 else ("configmaps", vf["configMapKeyRef"]))
                    data = await self.lookup(kind, ns, ref["name"], ref.get("optional", False))
                    if ref["key"] in data:
                        env[e["name"]] = data[ref["key"]]
                    elif not ref.get("optional"):
                        raise ConfigError(f"couldn't find key {ref['key']} in {kind[:-1]} "
                                          f"{ns}/{ref['name']}")
                elif "fieldRef" in vf:
                    env[e["name"]] = _field(pod, vf["fieldRef"]["fieldPath"])
        env.update(self.extra_env)
        if self.env_file is not None and self.env_file.exists():  # read at each start, so a
            env.update(json.loads(self.env_file.read_text() or "{}"))  # test can inject faults
        argv = [host(a) for a in [*c.get("command", []), *c.get("args", [])]]
        if not argv:
            raise ConfigError(f"container {c['name']}: no command (the process kubelet runs "
                              "commands, not images)")
        return c, argv, env, term

    async def volumes(self, running: Running) -> dict[str, Path]:
        pod = running.pod
        ns = pod["metadata"]["namespace"]
        out: dict[str, Path] = {}
        for v in pod["spec"].get("volumes", []):
            name = v["name"]
            if "emptyDir" in v:
                out[name] = running.folder / "volumes" / name
            elif "persistentVolumeClaim" in v:
                out[name] = self.root / "pvc" / ns / v["persistentVolumeClaim"]["claimName"]
            elif "hostPath" in v:
                out[name] = Path(v["hostPath"]["path"])
            elif "secret" in v or "configMap" in v:
                kind, ref = (("secrets", v["secret"]) if "secret" in v
                             else ("configmaps", v["configMap"]))
                ref_name = ref.get("secretName") or ref.get("name")
                data = await self.lookup(kind, ns, ref_name, ref.get("optional", False))
                out[name] = running.folder / "volumes" / name
                out[name].mkdir(parents=True, exist_ok=True)
                for k, val in data.items():
                    (out[name] / k).write_text(val)
            else:
                continue
            out[name].mkdir(parents=True, exist_ok=True)
        return out

    async def run_container(self, running: Running, c: dict[str, Any], argv: list[str],
                            env: dict[str, str], term: Path) -> int:
        name = c["name"]
        logfile = running.folder / f"{name}.log"
        cwd = running.folder
        while True:
            started = now()
            try:
                with logfile.open("ab") as out:
                    proc = await asyncio.create_subprocess_exec(
                        *argv, env=env, cwd=cwd, stdout=out, stderr=asyncio.subprocess.STDOUT,
                        stdin=asyncio.subprocess.DEVNULL, start_new_session=True)
            except OSError as exc:
                running.states[name] = {"terminated": {
                    "exitCode": 128, "reason": "StartError", "message": str(exc),
                    "startedAt": started, "finishedAt": now()}}
                return 128
            running.procs[name] = proc
            running.states[name] = {"running": {"startedAt": started}}
            limit = quantity_bytes(((c.get("resources") or {}).get("limits") or {}).get("memory"))
            oom = (asyncio.create_task(enforce_memory(proc, limit)) if limit is not None
                   else None)
            await self.patch_status(running, "Running")
            code = await proc.wait()
            if code < 0:
                code = 128 - code  # killed by a signal: 128 + its number, as a runtime reports
            killed = oom is not None and await oom
            message = term.read_bytes()[:MESSAGE_LIMIT].decode(errors="replace")
            if not message.strip() and code != 0 and (
                    c.get("terminationMessagePolicy") == "FallbackToLogsOnError"):
                lines = logfile.read_bytes().splitlines()[-FALLBACK_LINES:]
                message = b"\n".join(lines)[-FALLBACK_BYTES:].decode(errors="replace")
            reason = "OOMKilled" if killed else "Completed" if code == 0 else "Error"
            running.states[name] = {"terminated": {
                "exitCode": code, "reason": reason,
                "message": message, "startedAt": started, "finishedAt": now()}}
            if running.deleting or code == 0 or running.pod["spec"].get(
                    "restartPolicy") != "OnFailure":
                return code
            running.restarts[name] = running.restarts.get(name, 0) + 1

    async def delete(self, running: Running) -> None:
        meta = running.pod["metadata"]
        grace = meta.get("deletionGracePeriodSeconds")
        grace = 30 if grace is None else grace
        procs = [p for p in running.procs.values() if p.returncode is None]
        for p in procs:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(p.pid, signal.SIGTERM)
        end = time.monotonic() + grace
        while any(p.returncode is None for p in procs) and time.monotonic() < end:
            await asyncio.sleep(0.1)
        for p in procs:
            if p.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(p.pid, signal.SIGKILL)
                await p.wait()
        if procs:
            if running.task is not None:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(running.task, 5)
            await self.patch_status(running, "Failed")
        path = f"/api/v1/namespaces/{meta['namespace']}/pods/{meta['name']}"
        await self.api.call("DELETE", path, {"apiVersion": "v1", "kind": "DeleteOptions",
                                             "gracePeriodSeconds": 0,
                                             "preconditions": {"uid": meta["uid"]}})


def _field(pod: dict[str, Any], path: str) -> str:
    meta = pod["metadata"]
    simple = {"metadata.name": meta["name"], "metadata.namespace": meta["namespace"],
              "metadata.uid": meta["uid"], "spec.nodeName": pod["spec"].get("nodeName", ""),
              "spec.serviceAccountName": pod["spec"].get("serviceAccountName", ""),
              "status.podIP": "127.0.0.1", "status.hostIP": "127.0.0.1"}
    if path in simple:
        return simple[path]
    for prefix, source in (("metadata.labels", "labels"), ("metadata.annotations",
                                                            "annotations")):
        if path.startswith(prefix + "['"):
            return (meta.get(source) or {}).get(path[len(prefix) + 2:-2], "")
    return ""


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="process-kubelet", description=__doc__.split("\n\n")[0])
    p.add_argument("--kubeconfig", type=Path, required=True)
    p.add_argument("--node", required=True)
    p.add_argument("--root", type=Path, required=True)
    p.add_argument("--env", action="append", default=[], help="K=V added to every process")
    p.add_argument("--env-file", type=Path, help="JSON object of K: V, read at each start")
    p.add_argument("--fast", action="store_true")
    p.add_argument("--faults-file", type=Path,
                   help="JSON: missingImages, evictJobs (read each time; kubelet.faults)")
    p.add_argument("--scheduled", action="store_true",
                   help="a real kube-scheduler binds the pods: run only those bound here")
    p.add_argument("--fast-message", default="", help="MODULE:FUNCTION(pod) -> message")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    fast = None
    if args.fast:
        fast = lambda pod: ""  # noqa: E731
        if args.fast_message:
            mod, fn = args.fast_message.split(":")
            fast = getattr(importlib.import_module(mod), fn)
    extra = dict(kv.split("=", 1) for kv in args.env)
    kubelet = ProcessKubelet(Api.from_kubeconfig(args.kubeconfig), args.node, args.root, extra,
                             fast, env_file=args.env_file, scheduled=args.scheduled,
                             faults_file=args.faults_file)

    def stop(*_: Any) -> None:
        for r in kubelet.pods.values():
            for proc in r.procs.values():
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
        sys.exit(0)

    signal.signal(signal.SIGTERM, stop)
    logging.getLogger("asyncio").setLevel(logging.CRITICAL)  # unclosed session at SIGTERM
    asyncio.run(kubelet.run())


if __name__ == "__main__":
    main()
