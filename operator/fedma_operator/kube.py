"""The few Kubernetes API calls the operator makes, on the hub and on silo clusters.

Objects travel as plain dicts (``_preload_content=False``): the operator reads a handful of
fields and never needs the generated model classes. Every call tolerates what a restarted or
duplicated reconcile meets: 409 on create (adopt what exists), 404 on delete. Lists are
filtered client-side by label, so nothing relies on server-side selectors.
"""

from __future__ import annotations

import json
import time
from collections.abc import Awaitable, Callable
from typing import Any

from kubernetes_asyncio import client
from kubernetes_asyncio.client.exceptions import ApiException

from fedma.spec import GROUP

VERSION = "v1alpha1"
Observer = Callable[[str, str, float, bool], None]  # (verb, resource, seconds, error)


def _noop(verb: str, resource: str, seconds: float, error: bool) -> None:
    return None


async def _timed(observe: Observer, verb: str, resource: str,
                 call: Callable[[], Awaitable[Any]]) -> dict[str, Any]:
    """Run one raw call; returns the decoded body, raises ApiException on a non-2xx status
    (raw responses are not status-checked by the client itself)."""
    t0 = time.perf_counter()
    try:
        resp = await call()
        body = await resp.read()
        if not 200 <= resp.status <= 299:
            raise ApiException(status=resp.status, reason=body.decode(errors="replace")[:500])
    except ApiException as exc:
        observe(verb, resource, time.perf_counter() - t0, exc.status not in (404, 409))
        raise
    observe(verb, resource, time.perf_counter() - t0, False)
    return json.loads(body) if body else {}


def matches(obj: dict[str, Any], selector: dict[str, str]) -> bool:
    got = obj.get("metadata", {}).get("labels") or {}
    return all(got.get(k) == v for k, v in selector.items())


class Cluster:
    """Jobs and their pods in one cluster (the hub, or a silo's through its kubeconfig)."""

    def __init__(self, api: client.ApiClient, name: str = "hub",
                 observe: Observer = _noop):
        self.api = api
        self.name = name
        self.observe = observe
        self.batch = client.BatchV1Api(api)
        self.core = client.CoreV1Api(api)

    async def list_jobs(self, namespace: str, selector: dict[str, str]) -> list[dict[str, Any]]:
        out = await _timed(self.observe, "list", "jobs", lambda: self.batch.list_namespaced_job(
            namespace, _preload_content=False))
        return [j for j in out.get("items", []) if matches(j, selector)]

    async def create_job(self, namespace: str, body: dict[str, Any]) -> bool:
        """True if created, False if it already existed (adopted)."""
        try:
            await _timed(self.observe, "create", "jobs", lambda: self.batch.create_namespaced_job(
                namespace, body, _preload_content=False))
        except ApiException as exc:
            if exc.status == 409:
                return False
            raise
        return True

    async def delete_job(self, namespace: str, name: str) -> None:
        try:
            await _timed(self.observe, "delete", "jobs", lambda: self.batch.delete_namespaced_job(
                name, namespace, propagation_policy="Background", _preload_content=False))
        except ApiException as exc:
            if exc.status != 404:
                raise

    async def list_pods(self, namespace: str, selector: dict[str, str]) -> list[dict[str, Any]]:
        out = await _timed(self.observe, "list", "pods", lambda: self.core.list_namespaced_pod(
            namespace, _preload_content=False))
        return [p for p in out.get("items", []) if matches(p, selector)]


class Hub(Cluster):
    """The hub also holds the custom resources and the silo kubeconfig Secrets."""

    def __init__(self, api: client.ApiClient, observe: Observer = _noop):
        super().__init__(api, "hub", observe)
        self.custom = client.CustomObjectsApi(api)

    async def get_round(self, namespace: str, name: str) -> dict[str, Any] | None:
        try:
            return await _timed(self.observe, "get", "federatedrounds",
                                lambda: self.custom.get_namespaced_custom_object(
                                    GROUP, VERSION, namespace, "federatedrounds", name,
                                    _preload_content=False))
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise

    async def patch_status(self, plural: str, namespace: str, name: str,
                           status: dict[str, Any]) -> dict[str, Any]:
        """Merge-patch ``.status`` of a FederatedRound/-Training; returns the updated object."""
        return await _timed(self.observe, "patch", f"{plural}/status",
                            lambda: self.custom.patch_namespaced_custom_object_status(
                                GROUP, VERSION, namespace, plural, name, {"status": status},
                                # The client's default for a dict is a JSON patch, which an
                                # API server refuses (400) for an object body.
                                _content_type="application/merge-patch+json",
                                _preload_content=False))

    async def create_round(self, namespace: str, body: dict[str, Any]) -> bool:
        try:
            await _timed(self.observe, "create", "federatedrounds",
                         lambda: self.custom.create_namespaced_custom_object(
                             GROUP, VERSION, namespace, "federatedrounds", body,
                             _preload_content=False))
        except ApiException as exc:
            if exc.status == 409:
                return False
            raise
        return True

    async def get_secret(self, namespace: str, name: str) -> dict[str, Any]:
        return await _timed(self.observe, "get", "secrets",
                            lambda: self.core.read_namespaced_secret(
                                name, namespace, _preload_content=False))
