"""A real Kubernetes control plane on loopback: etcd, kube-apiserver, kube-controller-manager
and, where asked (``ControlPlane(scheduler=True)``), kube-scheduler.

Built by tests/kube/build.sh from the Go modules pinned in tests/kube/tools (no binary is
committed). Each ``ControlPlane`` is one cluster with its own PKI, etcd and apiserver: RBAC
authorization, the default admission plugins plus OwnerReferencesPermissionEnforcement, an
audit log of every request (JSON lines, ``Metadata`` level) and a controller-manager running the
Job, garbage-collector, namespace, service-account and token controllers. What it does not
have: kubelets and a container runtime (tests/kube/kubelet.py stands in; without the scheduler it
binds pods itself).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import ssl
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from tests.kube.pki import Pair, Pki
from tests.operator.conftest import free_port

ROOT = Path(__file__).resolve().parents[2]
BUILD = Path(__file__).resolve().parent / "build.sh"
CONTROLLERS = ["job-controller", "garbage-collector-controller", "namespace-controller",
               "serviceaccount-controller", "serviceaccount-token-controller",
               "ttl-after-finished-controller", "root-ca-certificate-publisher-controller",
               "resourcequota-controller"]
AUDIT_POLICY = {"apiVersion": "audit.k8s.io/v1", "kind": "Policy",
                "omitStages": ["RequestReceived"], "rules": [{"level": "Metadata"}]}


def built(env: str, script: Path) -> Path:
    """``$env``, else the folder ``script`` prints (it builds the first time, then answers at
    once)."""
    given = os.environ.get(env)
    if given:
        return Path(given)
    out = subprocess.run(["bash", str(script)], check=True, capture_output=True, text=True)
    return Path(out.stdout.strip().splitlines()[-1])


def kube_bin() -> Path:
    """Where build.sh put the binaries."""
    return built("FEDMA_KUBE_BIN", BUILD)


def kubeconfig(server: str, ca: Path, user: dict[str, Any], name: str = "cluster",
               namespace: str | None = None) -> dict[str, Any]:
    """A kubeconfig dict with one cluster, one user and one context (``name``)."""
    ctx: dict[str, Any] = {"cluster": name, "user": name}
    if namespace:
        ctx["namespace"] = namespace
    return {"apiVersion": "v1", "kind": "Config", "current-context": name,
            "clusters": [{"name": name, "cluster": {"server": server,
                                                    "certificate-authority": str(ca)}}],
            "users": [{"name": name, "user": user}],
            "contexts": [{"name": name, "context": ctx}]}


@dataclass
class Proc:
    """A child process in its own process group, its output in ``log``."""
    name: str
    popen: subprocess.Popen
    log: Path

    def alive(self) -> bool:
        return self.popen.poll() is None

    def kill(self) -> None:
        """SIGKILL to the whole group: what the OOM killer or a lost node does."""
        if self.alive():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.popen.pid, signal.SIGKILL)
        self.popen.wait()

    def stop(self, timeout: float = 10) -> None:
        if self.alive():
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()

    def tail(self, n: int = 40) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-n:])
        return ""


def spawn(name: str, argv: list[str], log: Path, env: dict[str, str] | None = None,
          cwd: Path | None = None) -> Proc:
    """Start ``argv`` in a new session, stdout and stderr appended to ``log``."""
    with log.open("ab") as f:
        p = subprocess.Popen(argv, stdout=f, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                             env=env, cwd=cwd, start_new_session=True)
    return Proc(name, p, log)


@dataclass
class ControlPlane:
    """One cluster. ``start()`` brings it up and waits until /readyz answers."""
    name: str
    folder: Path
    bin: Path = field(default_factory=kube_bin)
    procs: dict[str, Proc] = field(default_factory=dict)
    restarts: list[tuple[float, float]] = field(default_factory=list)  # (stopped, ready again)
    scheduler: bool = False  # the real kube-scheduler binds pods (else the process kubelet)

    def __post_init__(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        self.pki = Pki(self.folder / "pki")
        self.etcd_port, self.etcd_peer = free_port(), free_port()
        self.port = free_port()
        self.server = f"https://127.0.0.1:{self.port}"
        self.audit_log = self.folder / "audit.log"
        self.pod_env_file = self.folder / "pod-env.json"  # the kubelet adds it to every pod
        self.node_faults_file = self.folder / "node-faults.json"  # kubelet.py --faults-file
        self.admin = self._client("admin", "kubernetes-admin", "system:masters")
        self.admin_kubeconfig = self._kubeconfig_file("admin", self.admin)

    # -- files ---------------------------------------------------------------------------------
    def _client(self, name: str, cn: str, org: str | None = None) -> Pair:
        return self.pki.issue(name, cn, org)

    def _kubeconfig_file(self, name: str, pair: Pair) -> Path:
        path = self.folder / f"{name}.kubeconfig"
        cfg = kubeconfig(self.server, self.pki.ca, {"client-certificate": str(pair.cert),
                                                     "client-key": str(pair.key)}, self.name)
        path.write_text(yaml.safe_dump(cfg))
        return path

    def token_kubeconfig(self, token: str, path: Path, namespace: str | None = None) -> Path:
        """A kubeconfig that authenticates with a bearer token (a ServiceAccount's)."""
        path.write_text(yaml.safe_dump(kubeconfig(self.server, self.pki.ca, {"token": token},
                                                  self.name, namespace)))
        return path

    # -- processes -----------------------------------------------------------------------------
    def _spawn(self, name: str, argv: list[str], **kw: Any) -> Proc:
        self.procs[name] = spawn(name, argv, self.folder / f"{name}.log", **kw)
        return self.procs[name]

    def start(self) -> ControlPlane:
        self.start_etcd()
        self.start_apiserver()
        self.wait_ready()
        self.start_controller_manager()
        if self.scheduler:
            self.start_scheduler()
        return self

    def start_etcd(self) -> None:
        peer = f"http://127.0.0.1:{self.etcd_peer}"
        self._spawn("etcd", [
            str(self.bin / "etcd"), "--name", "default", "--data-dir", str(self.folder / "etcd"),
            "--listen-client-urls", f"http://127.0.0.1:{self.etcd_port}",
            "--advertise-client-urls", f"http://127.0.0.1:{self.etcd_port}",
            "--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer,
            "--initial-cluster", f"default={peer}", "--unsafe-no-fsync",
            "--listen-metrics-urls", f"http://127.0.0.1:{free_port()}", "--log-level", "warn"])

    def start_apiserver(self) -> None:
        serving = self.pki.issue("apiserver", "kube-apiserver", server=True)
        policy = self.folder / "audit-policy.yaml"
        policy.write_text(yaml.safe_dump(AUDIT_POLICY))
        self._spawn("kube-apiserver", [
            str(self.bin / "kube-apiserver"),
            f"--etcd-servers=http://127.0.0.1:{self.etcd_port}",
            "--bind-address=127.0.0.1", "--advertise-address=127.0.0.1",
            f"--secure-port={self.port}",
            f"--tls-cert-file={serving.cert}", f"--tls-private-key-file={serving.key}",
            f"--client-ca-file={self.pki.ca}",
            f"--requestheader-client-ca-file={self.pki.ca}",
            "--requestheader-allowed-names=front-proxy-client",
            "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
            f"--service-account-key-file={self.pki.sa_pub}",
            f"--service-account-signing-key-file={self.pki.sa_key}",
            "--service-cluster-ip-range=10.96.0.0/16",
            "--authorization-mode=RBAC",
            "--enable-admission-plugins=OwnerReferencesPermissionEnforcement",
            f"--audit-policy-file={policy}", f"--audit-log-path={self.audit_log}",
            "--audit-log-format=json", "--audit-log-mode=blocking",
            f"--cert-dir={self.folder / 'apiserver-certs'}",
            "--endpoint-reconciler-type=none", "--profiling=false", "--v=0"])

    def start_controller_manager(self) -> None:
        pair = self._client("controller-manager", "system:kube-controller-manager")
        kcfg = self._kubeconfig_file("controller-manager", pair)
        self._spawn("kube-controller-manager", [
            str(self.bin / "kube-controller-manager"), f"--kubeconfig={kcfg}",
            f"--authentication-kubeconfig={kcfg}", f"--authorization-kubeconfig={kcfg}",
            # With a scheduler, nodes and claims are handled as in a real cluster: the
            # node-lifecycle controller lifts the not-ready taint admission puts on a new node
            # once its kubelet's Lease is renewed, and the PV controller binds claims to the
            # volumes the process kubelet provisions (the scheduler places neither otherwise).
            "--controllers=" + ",".join(CONTROLLERS + (
                ["node-lifecycle-controller", "persistentvolume-binder-controller"]
                if self.scheduler else [])),
            "--leader-elect=false",
            f"--service-account-private-key-file={self.pki.sa_key}",
            f"--root-ca-file={self.pki.ca}", "--use-service-account-credentials=true",
            "--bind-address=127.0.0.1", f"--secure-port={free_port()}",
            "--concurrent-job-syncs=10", "--concurrent-gc-syncs=10",
            # Its client's default, 20 requests/s, paces a Job's pod create and status writes:
            # 300 Jobs at once (the load test) would wait on it, not on the operator.
            "--kube-api-qps=500", "--kube-api-burst=1000", "--v=0"])

    def start_scheduler(self) -> None:
        """The real scheduler with its default profile, as ``system:kube-scheduler`` (the
        apiserver's bootstrap RBAC gives that user exactly the scheduler's rights)."""
        pair = self._client("scheduler", "system:kube-scheduler")
        kcfg = self._kubeconfig_file("scheduler", pair)
        self._spawn("kube-scheduler", [
            str(self.bin / "kube-scheduler"), f"--kubeconfig={kcfg}",
            f"--authentication-kubeconfig={kcfg}", f"--authorization-kubeconfig={kcfg}",
            "--leader-elect=false", "--bind-address=127.0.0.1", f"--secure-port={free_port()}",
            "--kube-api-qps=500", "--kube-api-burst=1000", "--v=0"])

    def wait_ready(self, timeout: float = 90) -> None:
        deadline = time.monotonic() + timeout
        last = ""
        while time.monotonic() < deadline:
            for p in self.procs.values():
                if p.popen.poll() is not None:
                    raise RuntimeError(f"{self.name}: {p.name} exited with {p.popen.returncode}:"
                                       f"\n{p.tail()}")
            try:
                if self.request("GET", "/readyz")[0] == 200:
                    return
            except OSError as exc:
                last = str(exc)
            time.sleep(0.2)
        raise RuntimeError(f"{self.name}: apiserver not ready in {timeout:.0f} s ({last}):\n"
                           + self.procs["kube-apiserver"].tail())

    def stop(self) -> None:
        """Everything this cluster started, kubelets first (they kill their pods' processes)."""
        core = ["kube-scheduler", "kube-controller-manager", "kube-apiserver", "etcd"]
        order = [n for n in self.procs if n.startswith("kubelet-")]
        order += [n for n in self.procs if n not in core and n not in order] + core
        for name in order:
            self.stop_process(name)

    def stop_process(self, name: str) -> None:
        """Stop one of this cluster's processes and forget it: ``wait_ready`` treats every
        process still listed as one that must be running."""
        if name in self.procs:
            self.procs.pop(name).stop()

    def stop_apiserver(self) -> None:
        self.restarts.append((time.time(), float("inf")))
        self.procs.pop("kube-apiserver").stop()

    def restart_apiserver(self) -> None:
        self.start_apiserver()
        self.wait_ready()
        self.restarts[-1] = (self.restarts[-1][0], time.time())

    def restarting(self, at: float, settle: float = 10.0) -> bool:
        """Whether ``at`` (epoch seconds) fell while the apiserver was stopped or in the first
        ``settle`` seconds after it was ready again (its RBAC cache still syncing)."""
        return any(a <= at <= b + settle for a, b in self.restarts)

    # -- requests as the admin -----------------------------------------------------------------
    def ssl_context(self) -> ssl.SSLContext:
        ctx = ssl.create_default_context(cafile=str(self.pki.ca))
        ctx.load_cert_chain(str(self.admin.cert), str(self.admin.key))
        return ctx

    def request(self, method: str, path: str, body: Any = None,
                content_type: str = "application/json", timeout: float = 15) -> tuple[int, Any]:
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(self.server + path, data=data, method=method,
                                     headers={"Content-Type": content_type,
                                              "User-Agent": "fedma-tests"})
        try:
            with urllib.request.urlopen(req, context=self.ssl_context(), timeout=timeout) as r:
                raw = r.read()
                status = r.status
        except urllib.error.HTTPError as err:
            raw, status = err.read(), err.code
        try:
            return status, json.loads(raw) if raw else None
        except ValueError:
            return status, raw.decode(errors="replace")

    def _tool(self, tool: str, args: tuple[str, ...], env: dict[str, str], check: bool,
              timeout: float, input: str | None = None) -> subprocess.CompletedProcess:
        out = subprocess.run([str(self.bin / tool), *args], env={**os.environ, **env},
                             capture_output=True, text=True, input=input, timeout=timeout,
                             cwd=ROOT)
        if check and out.returncode != 0:
            raise AssertionError(f"{tool} {' '.join(args)} -> {out.returncode}\n{out.stderr}")
        return out

    def kubectl(self, *args: str, kubeconfig: Path | None = None, check: bool = True,
                input: str | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
        return self._tool("kubectl", args, {"KUBECONFIG": str(kubeconfig or
                                                              self.admin_kubeconfig)},
                          check, timeout, input)

    def helm(self, *args: str, check: bool = True, timeout: float = 180
             ) -> subprocess.CompletedProcess:
        home = self.folder / "helm"
        return self._tool("helm", args, {"KUBECONFIG": str(self.admin_kubeconfig),
                                         "HELM_CACHE_HOME": str(home / "cache"),
                                         "HELM_CONFIG_HOME": str(home / "config"),
                                         "HELM_DATA_HOME": str(home / "data")}, check, timeout)

    @contextlib.contextmanager
    def _json_file(self, path: Path, value: dict[str, Any]) -> Iterator[None]:
        """``value`` in ``path`` (a file the process kubelet reads at each use) inside the
        block, ``{}`` after it."""
        path.write_text(json.dumps(value))
        try:
            yield
        finally:
            path.write_text("{}")

    def pod_env(self, **env: str) -> contextlib.AbstractContextManager[None]:
        """Extra environment for the processes of pods started inside the block."""
        return self._json_file(self.pod_env_file, env)

    def node_faults(self, **faults: Any) -> contextlib.AbstractContextManager[None]:
        """What the process kubelet's node suffers inside the block (kubelet.py ``faults``)."""
        return self._json_file(self.node_faults_file, faults)

    def audit(self) -> Iterator[dict[str, Any]]:
        """The audit log's events (ResponseComplete stage), oldest first."""
        with contextlib.suppress(FileNotFoundError), self.audit_log.open() as f:
            for line in f:
                with contextlib.suppress(ValueError):
                    yield json.loads(line)


def start_kubelet(cp: ControlPlane, node: str, env: dict[str, str] | None = None,
                  fast_message: str | None = None) -> Proc:
    """The process kubelet (tests/kube/kubelet.py) for ``cp`` as a child process."""
    argv = [sys.executable, "-m", "tests.kube.kubelet", "--kubeconfig",
            str(cp.admin_kubeconfig), "--node", node, "--root", str(cp.folder / node),
            "--env-file", str(cp.pod_env_file), "--faults-file", str(cp.node_faults_file)]
    if cp.scheduler:
        argv.append("--scheduled")
    for k, v in (env or {}).items():
        argv += ["--env", f"{k}={v}"]
    if fast_message is not None:
        argv += ["--fast", "--fast-message", fast_message] if fast_message else ["--fast"]
    return cp._spawn(f"kubelet-{node}", argv, cwd=ROOT,
                     env={**os.environ, "PYTHONPATH": str(ROOT)})
