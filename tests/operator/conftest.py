"""The operator against kmock (a Kubernetes API emulator), with the test as Job controller.

kmock has no controllers and no garbage collection; the operator needs neither. Equality label
selectors on lists are added here (``Emulator._serve_list``). What the tests stand in for: the
Job controller and kubelet (``JobController`` marks Jobs finished and writes the pod's
termination message), and, in the e2e test, the container runtime (the Job's command runs as
a local process).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import socket
import sys
import uuid
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import jsonpatch
import kmock
import kopf
import pytest
import pytest_asyncio
from kmock._internal.k8s import KubernetesObjectConflictError
from kubernetes_asyncio import client

from fedma_operator.handlers import OperatorConfig, build_registry
from fedma_operator.jobs import JobSettings

CRD_RESOURCES = {
    "fedma.io/v1alpha1/federatedtrainings": ("FederatedTraining", "federatedtraining"),
    "fedma.io/v1alpha1/federatedrounds": ("FederatedRound", "federatedround"),
}
TEST_AGENT = "fedma-tests"  # the tests' own requests, told apart from the operator's
VERBS = {"list", "watch", "get", "create", "update", "patch", "delete"}


class Emulator(kmock.KubernetesEmulator):
    """Stamps what a real API server stamps: uid, creationTimestamp, generation (bumped when
    the spec changes) and an increasing resourceVersion."""

    _rv = itertools.count(1)

    async def _handle(self, request: Any) -> Any:
        data = getattr(request, "data", None)
        if request.resource is not None and isinstance(data, dict):
            rv = str(next(self._rv))
            meta = data.setdefault("metadata", {})
            if request.action == kmock.action.CREATE:
                if not meta.get("name") and meta.get("generateName"):
                    meta["name"] = meta["generateName"] + uuid.uuid4().hex[:8]
                meta.setdefault("uid", str(uuid.uuid4()))
                meta.setdefault("creationTimestamp",
                                datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"))
                meta["generation"] = 1
                meta["resourceVersion"] = rv
            elif request.action == kmock.action.UPDATE:
                meta["resourceVersion"] = rv
                if "spec" in data and request.subresource is None:
                    key = (request.resource, request.namespace, request.name)
                    if key in self.objects:
                        old = self.objects[key]
                        if old.get("spec") != {**(old.get("spec") or {}), **data["spec"]}:
                            meta["generation"] = int(old["metadata"].get("generation", 1)) + 1
        try:
            return await super()._handle(request)
        except jsonpatch.JsonPatchTestFailed:  # kopf's optimistic-concurrency test op
            raise KubernetesObjectConflictError() from None

    async def _serve_list(self, request: Any) -> Any:
        """Lists honour equality label selectors (``a=b,c=d``), as an API server's do: kmock
        returns every object, which made a list's size grow with the whole cluster."""
        payload = await super()._serve_list(request)
        selector = str((getattr(request, "params", None) or {}).get("labelSelector") or "")
        wanted = dict(term.split("=", 1) for term in selector.split(",") if "=" in term)
        if wanted and isinstance(payload, dict):
            payload["items"] = [o for o in payload["items"] if all(
                ((o.get("metadata") or {}).get("labels") or {}).get(k) == v
                for k, v in wanted.items())]
        return payload


@pytest.fixture
def kmock_options(kmock_options: dict[str, Any]) -> dict[str, Any]:
    return {**kmock_options, "cls": Emulator}


def declare(k: Any) -> None:
    for res, kind in (("v1/namespaces", ("Namespace", False)), ("v1/events", ("Event", True)),
                      ("v1/pods", ("Pod", True)), ("v1/secrets", ("Secret", True)),
                      ("v1/configmaps", ("ConfigMap", True)),
                      ("batch/v1/jobs", ("Job", True)),
                      ("apiextensions.k8s.io/v1/customresourcedefinitions",
                       ("CustomResourceDefinition", False))):
        k.resources[res] = kmock.ResourceInfo(kind=kind[0], namespaced=kind[1], verbs=VERBS,
                                              subresources={"status"} if res.endswith("jobs")
                                              else set())
    for res, (kind, singular) in CRD_RESOURCES.items():
        k.resources[res] = kmock.ResourceInfo(kind=kind, singular=singular, namespaced=True,
                                              verbs=VERBS, subresources={"status"})


@pytest_asyncio.fixture
async def k8s(kmock: Any) -> AsyncIterator[Any]:
    declare(kmock)
    yield kmock


async def api_client(url: str) -> client.ApiClient:
    cfg = client.Configuration(host=url.rstrip("/"))
    return client.ApiClient(cfg)


class OperatorHandle:
    """Start/stop a real kopf operator in this event loop (a restart is stop + start)."""

    def __init__(self, k: Any, interval: float = 0.2, settings: JobSettings | None = None,
                 liveness_port: int | None = None, cluster_grace_s: float = 60.0):
        self.k = k
        self.cluster_grace_s = cluster_grace_s
        self.liveness_port = liveness_port
        self.url = str(k.url).rstrip("/")
        self.interval = interval
        self.settings = settings or JobSettings(trainer_image="fedma-trainer:test")
        self.task: asyncio.Task | None = None
        self.stop_flag: asyncio.Event | None = None

    async def start(self) -> None:
        registry = build_registry(OperatorConfig(self.settings, self.interval,
                                                self.cluster_grace_s),
                                  api_factory=lambda: api_client(self.url))

        @kopf.on.login(registry=registry)
        def login(**_: Any) -> kopf.ConnectionInfo:
            return kopf.ConnectionInfo(server=self.url, insecure=True)

        self.stop_flag = asyncio.Event()
        self.task = asyncio.create_task(kopf.operator(
            registry=registry, standalone=True, clusterwide=True, stop_flag=self.stop_flag,
            liveness_endpoint=(f"http://127.0.0.1:{self.liveness_port}/healthz"
                               if self.liveness_port else None)))

    async def stop(self) -> None:
        """Kill the operator mid-flight (no graceful shutdown): what a crash or an evicted
        pod does to it."""
        if self.task is None:
            return
        self.task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await asyncio.wait_for(self.task, 10)
        self.task = None


@pytest_asyncio.fixture
async def operator(k8s: Any) -> AsyncIterator[OperatorHandle]:
    handle = OperatorHandle(k8s)
    await handle.start()
    try:
        yield handle
    finally:
        await handle.stop()


class Api:
    """The test's own client: what a user (kubectl) and the Job controller would do."""

    def __init__(self, k: Any):
        self.k = k

    async def call(self, method: str, path: str, body: Any = None,
                   content_type: str = "application/json") -> Any:
        headers = {"Content-Type": content_type, "User-Agent": TEST_AGENT}
        # A session of our own: kmock's bundled client hangs once a killed operator's
        # connections are dropped.
        async with aiohttp.ClientSession() as session, session.request(
                method, str(self.k.url).rstrip("/") + path,
                data=json.dumps(body) if body is not None else None, headers=headers,
                timeout=aiohttp.ClientTimeout(total=15)) as resp:
            text = await resp.text()
            if resp.status >= 400:
                raise RuntimeError(f"{method} {path}: {resp.status} {text}")
            return json.loads(text) if text else None

    async def create(self, path: str, body: dict[str, Any]) -> Any:
        return await self.call("POST", path, body)

    async def patch(self, path: str, body: dict[str, Any]) -> Any:
        return await self.call("PATCH", path, body, "application/merge-patch+json")

    async def get(self, path: str) -> Any:
        return await self.call("GET", path)

    async def items(self, path: str) -> list[dict[str, Any]]:
        return (await self.get(path))["items"]


def rounds_path(ns: str = "default") -> str:
    return f"/apis/fedma.io/v1alpha1/namespaces/{ns}/federatedrounds"


def trainings_path(ns: str = "default") -> str:
    return f"/apis/fedma.io/v1alpha1/namespaces/{ns}/federatedtrainings"


def jobs_path(ns: str = "default") -> str:
    return f"/apis/batch/v1/namespaces/{ns}/jobs"


async def create_kubeconfig_secret(api: Api, name: str, server: str,
                                   token: str = "t0ken") -> None:
    """A Secret (key ``kubeconfig``) on the hub pointing at a silo cluster's API server."""
    import base64

    import yaml

    kubeconfig = {"apiVersion": "v1", "kind": "Config", "current-context": "silo",
                  "clusters": [{"name": "silo", "cluster": {"server": server}}],
                  "users": [{"name": "fedma", "user": {"token": token}}],
                  "contexts": [{"name": "silo", "context": {"cluster": "silo",
                                                            "user": "fedma"}}]}
    await api.create("/api/v1/namespaces/default/secrets", {
        "apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": name, "namespace": "default"},
        "data": {"kubeconfig": base64.b64encode(yaml.safe_dump(kubeconfig).encode()).decode()}})


class JobController:
    """Plays the Job controller and kubelet: finishes Jobs and writes termination messages."""

    def __init__(self, api: Api):
        self.api = api

    async def jobs(self, ns: str = "default", **labels: str) -> list[dict[str, Any]]:
        out = []
        for j in await self.api.items(jobs_path(ns)):
            lbl = j["metadata"].get("labels") or {}
            if all(lbl.get(f"fedma.io/{k}") == v for k, v in labels.items()):
                out.append(j)
        return out

    async def finish(self, job: dict[str, Any], succeeded: bool, message: dict[str, Any] | None,
                     reason: str = "BackoffLimitExceeded") -> None:
        ns, name = job["metadata"]["namespace"], job["metadata"]["name"]
        # A Job's pods carry its template's labels plus job-name, as the Job controller's do.
        template = ((job.get("spec") or {}).get("template") or {}).get("metadata") or {}
        pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {
            "name": f"{name}-pod", "namespace": ns,
            "labels": {**(template.get("labels") or {}), "job-name": name}},
            "status": {"phase": "Succeeded" if succeeded else "Failed", "containerStatuses": [{
                "name": "c", "state": {"terminated": {
                    "exitCode": 0 if succeeded else 1,
                    "message": json.dumps(message) if message else ""}}}]}}
        with contextlib.suppress(RuntimeError):  # a retried finish finds its pod already there
            await self.api.create(f"/api/v1/namespaces/{ns}/pods", pod)
        cond = ({"type": "Complete", "status": "True"} if succeeded else
                {"type": "Failed", "status": "True", "reason": reason, "message": "boom"})
        await self.api.patch(f"{jobs_path(ns)}/{name}/status", {"status": {
            "succeeded": 1 if succeeded else 0, "failed": 0 if succeeded else 1,
            "conditions": [cond]}})


class Kubelet:
    """Runs each Job's container command as a local process with the Job's environment (the
    container runtime's stand-in), then reports back as the kubelet and Job controller would.
    A container that declares a ``metrics`` port gets a free local port instead (pods have a
    network namespace each; local processes share one); ``on_metrics(job, port)`` hears of it.
    """

    def __init__(self, api: Api, workdir: Path,
                 on_metrics: Callable[[dict[str, Any], int], None] | None = None):
        self.api = api
        self.on_metrics = on_metrics
        self.ctl = JobController(api)
        self.workdir = workdir
        self.started: set[str] = set()
        self.tasks: list[asyncio.Task] = []
        self.log: list[str] = []

    async def run(self) -> None:
        while True:
            for job in await self.api.items("/apis/batch/v1/jobs"):
                name = job["metadata"]["name"]
                if name not in self.started and not (job.get("status") or {}).get("conditions"):
                    self.started.add(name)
                    self.tasks.append(asyncio.create_task(self.execute(job)))
            await asyncio.sleep(0.2)

    async def execute(self, job: dict[str, Any]) -> None:
        c = job["spec"]["template"]["spec"]["containers"][0]
        cmd = list(c["command"])
        assert cmd[0] == "fedma", cmd
        term = self.workdir / f"{job['metadata']['name']}.termination"
        env = {**os.environ, "FEDMA_TERMINATION_LOG": str(term)}
        for e in c["env"]:
            if e["name"] not in ("HOME", "FEDMA_CACHE", "FEDMA_TERMINATION_LOG"):
                env[e["name"]] = e["value"]
        # The round's file, from the ConfigMap the Job mounts (as a kubelet would).
        (volume,) = [v for v in job["spec"]["template"]["spec"]["volumes"]
                     if v["name"] == "round"]
        ns = job["metadata"]["namespace"]
        cm = await self.api.get(f"/api/v1/namespaces/{ns}/configmaps/"
                                f"{volume['configMap']['name']}")
        round_file = self.workdir / f"{job['metadata']['name']}.round.json"
        round_file.write_text(cm["data"]["round.json"])
        env["FEDMA_ROUND_FILE"] = str(round_file)
        if any(p.get("name") == "metrics" for p in c.get("ports", [])):
            env["FEDMA_METRICS_PORT"] = str(free_port())
            if self.on_metrics:
                self.on_metrics(job, int(env["FEDMA_METRICS_PORT"]))
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "fedma.cli", *cmd[1:], env=env,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
        out, _ = await proc.communicate()
        self.log.append(f"$ {' '.join(cmd)} -> {proc.returncode}\n{out.decode()[-2000:]}")
        message = json.loads(term.read_text()) if term.exists() else None
        await self.ctl.finish(job, proc.returncode == 0, message)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def wait_for(predicate, timeout: float = 20.0, step: float = 0.1, what: str = "condition"):
    deadline = asyncio.get_running_loop().time() + timeout
    last = None
    while asyncio.get_running_loop().time() < deadline:
        last = await predicate()
        if last:
            return last
        await asyncio.sleep(step)
    raise AssertionError(f"timed out waiting for {what} (last: {last!r})")
