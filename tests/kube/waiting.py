"""Polling helpers for the kube suites (the objects come from the real apiserver)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, TypeVar

from tests.kube.cluster import ControlPlane

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
