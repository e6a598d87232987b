"""Polling helpers for the kube suites (the objects come from the real apiserver)."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any, TypeVar

import yaml

from tests.kube.cluster import ControlPlane
from tests.kube.deployed import NAMESPACE

T = TypeVar("T")
GROUP_PATH = "/apis/fedma.io/v1alpha1"


def wait_until(probe: Callable[[], T | None], timeout: float, what: str,
               on_timeout: Callable[[], str] = lambda: "", step: float = 0.3) -> T:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = probe()
        if last:
            return last
        time.sleep(step)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what} (last: "
                         f"{str(last)[:1500]})\n{on_timeout()}")


def get(cp: ControlPlane, path: str) -> dict[str, Any] | None:
    status, body = cp.request("GET", path)
    if status == 404:
        return None
    assert status == 200, (path, status, body)
    return body


def items(cp: ControlPlane, path: str) -> list[dict[str, Any]]:
    return (get(cp, path) or {}).get("items", [])


def fedma_path(namespace: str, plural: str, name: str = "") -> str:
    return f"{GROUP_PATH}/namespaces/{namespace}/{plural}" + (f"/{name}" if name else "")


def phase(obj: dict[str, Any] | None) -> str | None:
    return ((obj or {}).get("status") or {}).get("phase")


def apply(cp: ControlPlane, obj: dict[str, Any], *flags: str) -> Any:
    """``kubectl apply -f -`` of one object."""
    return cp.kubectl("apply", *flags, "-f", "-", input=yaml.safe_dump(obj))


def finished_training(hub: ControlPlane, name: str, operator: Any, timeout: float = 300
                      ) -> dict[str, Any]:
    """The FederatedTraining once Succeeded or Failed; on a timeout, its rounds' status and
    the operator's log."""
    def probe():
        obj = get(hub, fedma_path(NAMESPACE, "federatedtrainings", name))
        return obj if phase(obj) in ("Succeeded", "Failed") else None

    def diagnose():
        rounds = items(hub, fedma_path(NAMESPACE, "federatedrounds"))
        return ("rounds: " + json.dumps([r.get("status") for r in rounds])[:3000]
                + "\noperator:\n" + operator.tail())

    return wait_until(probe, timeout, f"training {name} to finish", diagnose, step=0.5)
