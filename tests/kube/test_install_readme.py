"""The README's "Install on Kubernetes" commands, verbatim, against real clusters.

Three kubectl contexts as a user has them: ``hub``, ``hospital-a``, ``hospital-b``. To keep to
two clusters at once, ``hospital-a`` is the session's hub cluster (its fedma-silo namespace is
free) and ``hospital-b`` shares a fresh cluster with ``hub`` (hub and silo in one cluster is a
supported layout). The README's silo steps run for hospital-a and, as its comment says, the
same for hospital-b; its "build the kubeconfig" step runs docs/deploy.md's block verbatim. The
prometheus-operator CRDs are installed first (the README assumes kube-prometheus-stack for
examples/values-hub.yaml's monitors). No container runs an image here: the process kubelet runs
the local ``fedma`` in place of the trainer image, and the operator runs as its Deployment
says with the chart's ServiceAccount.

The example trains LLaVA-scale models from ``/models`` over ``s3://fedma-artifacts``, neither of
which this machine has: after every install step worked, the test follows the training until
each silo's first attempt fails (on the unreachable store, the first thing a silo reads) and
checks that the user sees why, in the pod's termination message.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.kube.cluster import ROOT, ControlPlane, start_kubelet
from tests.kube.conftest import POD_ENV
from tests.kube.deployed import OperatorProcess, deployment_args, service_account_kubeconfig
from tests.kube.waiting import items, wait_until

pytestmark = [pytest.mark.kube]
OWN_CLUSTER = True  # starts a cluster of its own: runs before the silo cluster (conftest.py)


def bash_block(doc: Path, after: str, containing: str = "") -> list[str]:
    """The lines of the first ```bash block after the heading ``after`` (and containing
    ``containing``)."""
    text = doc.read_text()
    text = text[text.index(after):]
    for block in re.findall(r"```bash\n(.*?)```", text, re.S):
        if containing in block:
            return block.splitlines()
    raise AssertionError(f"{doc}: no bash block after {after!r} containing {containing!r}")


def script_from_the_docs() -> tuple[str, str]:
    """(install script, the watch command) as the README and docs/deploy.md give them."""
    readme = bash_block(ROOT / "README.md", "## Install on Kubernetes")
    kubeconfig = bash_block(ROOT / "docs" / "deploy.md", "## A hub and two silos",
                            "ctx=hospital-a")
    split = readme.index("# in the hub cluster")
    silo, hub = readme[:split], readme[split:]
    watch = [line for line in hub if " get ft,fr" in line]
    hub = [line for line in hub if line not in watch]
    lines = ["set -euo pipefail"]
    for ctx in ("hospital-a", "hospital-b"):
        for line in silo:
            if line.startswith("#   then build"):
                lines += [ln.replace("hospital-a", ctx) for ln in kubeconfig]
            else:
                lines.append(line.replace("hospital-a", ctx))
    lines += hub
    return "\n".join(lines) + "\n", "\n".join(watch)


def merged_kubeconfig(path: Path, contexts: dict[str, ControlPlane]) -> Path:
    cfg = {"apiVersion": "v1", "kind": "Config", "current-context": "hub",
           "clusters": [], "users": [], "contexts": []}
    for name, cp in contexts.items():
        admin = yaml.safe_load(cp.admin_kubeconfig.read_text())
        cfg["clusters"].append({"name": name, "cluster": admin["clusters"][0]["cluster"]})
        cfg["users"].append({"name": name, "user": admin["users"][0]["user"]})
        cfg["contexts"].append({"name": name, "context": {"cluster": name, "user": name}})
    path.write_text(yaml.safe_dump(cfg))
    return path


@pytest.fixture
def readme_hub(hub, tmp_path_factory):
    """A fresh cluster: the README's ``hub`` and ``hospital-b``."""
    cp = ControlPlane("readme-hub", tmp_path_factory.mktemp("readme-hub"), scheduler=True).start()
    try:
        start_kubelet(cp, "readme-node", POD_ENV)
        yield cp
    finally:
        cp.stop()


@pytest.fixture
def short_store_retry(hub, readme_hub):
    """The trainers retry an unreachable store for $FEDMA_STORE_RETRY_S (120 s by default)
    before they give up; a few seconds show the same failure."""
    with hub.pod_env(FEDMA_STORE_RETRY_S="5"), readme_hub.pod_env(FEDMA_STORE_RETRY_S="5"):
        yield


def test_the_readmes_install_commands_work_verbatim(hub, readme_hub, short_store_retry,
                                                    tmp_path):
    crds = readme_hub.bin.parent / "crds" / "monitoring"
    for cp in (readme_hub, hub):  # what kube-prometheus-stack would have installed
        cp.kubectl("apply", "--server-side", "-f", str(crds))
        cp.kubectl("wait", "--for=condition=Established", "--timeout=60s", "-f", str(crds))
    work = tmp_path / "work"
    work.mkdir()
    for name in ("charts", "examples"):
        (work / name).symlink_to(ROOT / name)
    kubeconfig = merged_kubeconfig(tmp_path / "config", {
        "hub": readme_hub, "hospital-a": hub, "hospital-b": readme_hub})
    script, watch = script_from_the_docs()
    env = {**os.environ, "KUBECONFIG": str(kubeconfig),
           "PATH": f"{readme_hub.bin}{os.pathsep}{os.environ['PATH']}",
           "HELM_CACHE_HOME": str(tmp_path / "helm"), "HELM_CONFIG_HOME": str(tmp_path / "helm"),
           "HELM_DATA_HOME": str(tmp_path / "helm")}
    out = subprocess.run(["bash", "-c", script], cwd=work, env=env, capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0, f"{script}\n--- stdout\n{out.stdout}\n--- stderr\n{out.stderr}"
    assert (work / "hospital-b.kubeconfig").exists()

    # The operator the hub chart deployed, with its ServiceAccount only.
    op = OperatorProcess(deployment_args(readme_hub), service_account_kubeconfig(
        readme_hub, "fedma", "fedma-operator", tmp_path / "op.kubeconfig"), tmp_path).start()
    try:
        def silo_jobs():
            found = {}
            for ctx, cp in (("hospital-a", hub), ("hospital-b", readme_hub)):
                jobs = items(cp, "/apis/batch/v1/namespaces/fedma-silo/jobs?labelSelector="
                                 "fedma.io/training%3Dradiology-align")
                if jobs:
                    found[ctx] = jobs[0]
            return found if len(found) == 2 else None

        jobs = wait_until(silo_jobs, 90, "a silo Job in each silo cluster", op.tail)
        for ctx, job in jobs.items():
            pod = job["spec"]["template"]["spec"]
            (claim,) = [v["persistentVolumeClaim"]["claimName"] for v in pod["volumes"]
                        if "persistentVolumeClaim" in v]
            assert claim == f"{ctx}-data"
            assert pod["containers"][0]["envFrom"] == [{"secretRef": {"name": "fedma-s3"}}]
        # The watch command, once (not -w), shows the printer columns.
        table = subprocess.run(["bash", "-c", watch.replace(" -w", "")], cwd=work, env=env,
                               capture_output=True, text=True, timeout=60).stdout
        assert "radiology-align" in table and "radiology-align-r0001" in table, table
        assert {"ROUND", "ROUNDS", "PHASE", "SILOS"} <= set(table.split()), table

        # Each silo's first attempt fails on what this machine lacks; the user reads why in the
        # pod's termination message (kubectl describe pod), as the Job controller left it.
        def failed_messages():
            out = {}
            for ctx, cp in (("hospital-a", hub), ("hospital-b", readme_hub)):
                for pod in items(cp, "/api/v1/namespaces/fedma-silo/pods?labelSelector="
                                     "fedma.io/training%3Dradiology-align"):
                    for c in (pod.get("status") or {}).get("containerStatuses") or []:
                        term = (c.get("state") or {}).get("terminated") or {}
                        if term.get("exitCode"):
                            out[ctx] = term.get("message", "")
            return out if len(out) == 2 else None

        messages = wait_until(failed_messages, 300, "each silo's first attempt to fail",
                              op.tail, step=1)
        for ctx, message in messages.items():
            summary = json.loads(message)  # the trainer's own summary, not a log tail
            assert summary["status"] == "Failed" and summary["silo"] == ctx, summary
            # The example's store (s3://fedma-artifacts) cannot be reached from here.
            assert "StoreUnavailable" in summary["reason"], summary
            assert "fedma-artifacts" in summary["reason"], summary
    finally:
        op.stop()
