"""The few Kubernetes API calls the operator makes, on the hub and on silo clusters.

Objects travel as plain dicts (``_preload_content=False``): the operator reads a handful of
fields and never needs the generated model classes. Every call tolerates what a restarted or
duplicated reconcile meets: 409 on create (adopt what exists), 404 on delete. Lists carry a
server-side label selector (the apiserver sends only the round's objects, not the
namespace's history), are paged (at most :data:`PAGE` items an answer) and are filtered
again client-side.

Every call has a deadline (``timeout_s``): kubernetes_asyncio sends none unless asked, so an
endpoint that accepts the connection and never answers would stall a reconcile for good. A
call past its deadline raises :class:`NoAnswer`, which the round treats like a refused
connection (the silo's cluster is unreachable: grace, then exclusion).
"""

from __future__ import annotations

import asyncio
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


DEFAULT_TIMEOUT_S = 30.0
# Items per list answer: a round at the schema's 1,000 silos reads its Jobs (about 5 KiB each)
# in two answers of a few MiB at most, not one that grows with the round; 100 silos: one.
PAGE = 500


def why(exc: BaseException) -> str:
    """An API error's reason (the server's message) rather than its whole repr."""
    return str(getattr(exc, "reason", None) or exc)


class NoAnswer(RuntimeError):
    """A call that got no complete answer within its deadline; the message says which."""


async def _timed(observe: Observer, verb: str, resource: str,
                 call: Callable[[], Awaitable[Any]], where: str = "hub",
                 timeout_s: float = DEFAULT_TIMEOUT_S, decode: bool = True) -> dict[str, Any]:
    """Run one raw call; returns the decoded body (``decode``: a create's or delete's echo
    of the object is not worth parsing), raises ApiException on a non-2xx status (raw
    responses are not status-checked by the client itself) and NoAnswer past ``timeout_s``
    (connecting, the TLS handshake and reading the body all count)."""
    t0 = time.perf_counter()
    try:
        async with asyncio.timeout(timeout_s):
            resp = await call()
            body = await resp.read()
        if not 200 <= resp.status <= 299:
            raise ApiException(status=resp.status, reason=body.decode(errors="replace")[:500])
    except ApiException as exc:
        observe(verb, resource, time.perf_counter() - t0, exc.status not in (404, 409))
        raise
    except TimeoutError:
        observe(verb, resource, time.perf_counter() - t0, True)
        raise NoAnswer(f"{verb} {resource} in {where}: no answer within {timeout_s:g} s") \
            from None
    observe(verb, resource, time.perf_counter() - t0, False)
    return json.loads(body) if body and decode else {}


Selector = dict[str, "str | frozenset[str]"]


def matches(obj: dict[str, Any], selector: Selector) -> bool:
    got = obj.get("metadata", {}).get("labels") or {}
    return all(got.get(k) in v if isinstance(v, frozenset) else got.get(k) == v
               for k, v in selector.items())


def label_selector(selector: Selector) -> str:
    """Equality terms, and set terms (``k in (a,b)``) for frozenset values: a list of only
    the Jobs or pods still worth reading, not all of the round's."""
    return ",".join(f"{k} in ({','.join(sorted(v))})" if isinstance(v, frozenset) else
                    f"{k}={v}" for k, v in sorted(selector.items()))


class Cluster:
    """Jobs and their pods in one cluster (the hub, or a silo's through its kubeconfig)."""

    def __init__(self, api: client.ApiClient, name: str = "hub",
                 observe: Observer = _noop, timeout_s: float = DEFAULT_TIMEOUT_S):
        self.api = api
        self.name = name
        self.observe = observe
        self.timeout_s = timeout_s
        self.batch = client.BatchV1Api(api)
        self.core = client.CoreV1Api(api)

    async def _call(self, verb: str, resource: str,
                    call: Callable[[], Awaitable[Any]]) -> dict[str, Any]:
        # A create's, delete's or patch's echo of the object is not worth parsing.
        return await _timed(self.observe, verb, resource, call, self.name, self.timeout_s,
                            decode=verb not in ("create", "delete", "patch"))

    async def _pages(self, resource: str,
                     call: Callable[[str | None], Awaitable[Any]]) -> list[dict[str, Any]]:
        """Every item of a paged list (``limit`` = :data:`PAGE`, then ``continue``): each
        answer is bounded, whatever the round's size. An expired continue token (410: the
        list took longer than etcd keeps its revision) starts the list again, once."""
        items: list[dict[str, Any]] = []
        token: str | None = None
        restarted = False
        while True:
            try:
                out = await self._call("list", resource, lambda t=token: call(t))
            except ApiException as exc:
                if exc.status != 410 or token is None or restarted:
                    raise
                items, token, restarted = [], None, True
                continue
            items += out.get("items") or []
            token = (out.get("metadata") or {}).get("continue") or None
            if token is None:
                return items

    async def list_jobs(self, namespace: str, selector: Selector) -> list[dict[str, Any]]:
        out = await self._pages("jobs", lambda token: self.batch.list_namespaced_job(
            namespace, label_selector=label_selector(selector), limit=PAGE, _continue=token,
            _preload_content=False))
        return [j for j in out if matches(j, selector)]

    async def _create(self, resource: str, call: Callable[[], Awaitable[Any]]) -> bool:
        """True if created, False if one of its name already existed (409: the caller tells
        whether that one is its own)."""
        try:
            await self._call("create", resource, call)
        except ApiException as exc:
            if exc.status == 409:
                return False
            raise
        return True

    async def _delete(self, resource: str, call: Callable[[], Awaitable[Any]]) -> None:
        """Deleted, or already gone (404)."""
        try:
            await self._call("delete", resource, call)
        except ApiException as exc:
            if exc.status != 404:
                raise

    async def create_job(self, namespace: str, body: dict[str, Any]) -> bool:
        return await self._create("jobs", lambda: self.batch.create_namespaced_job(
            namespace, body, _preload_content=False))

    async def delete_job(self, namespace: str, name: str) -> None:
        await self._delete("jobs", lambda: self.batch.delete_namespaced_job(
            name, namespace, propagation_policy="Background", _preload_content=False))

    async def create_config_map(self, namespace: str, body: dict[str, Any]) -> bool:
        return await self._create("configmaps", lambda: self.core.create_namespaced_config_map(
            namespace, body, _preload_content=False))

    async def delete_config_map(self, namespace: str, name: str) -> None:
        await self._delete("configmaps", lambda: self.core.delete_namespaced_config_map(
            name, namespace, _preload_content=False))

    async def list_pods(self, namespace: str, selector: Selector) -> list[dict[str, Any]]:
        out = await self._pages("pods", lambda token: self.core.list_namespaced_pod(
            namespace, label_selector=label_selector(selector), limit=PAGE, _continue=token,
            _preload_content=False))
        return [p for p in out if matches(p, selector)]


class Hub(Cluster):
    """The hub also holds the custom resources and the silo kubeconfig Secrets."""

    def __init__(self, api: client.ApiClient, observe: Observer = _noop,
                 timeout_s: float = DEFAULT_TIMEOUT_S):
        super().__init__(api, "hub", observe, timeout_s)
        self.custom = client.CustomObjectsApi(api)

    async def get_round(self, namespace: str, name: str) -> dict[str, Any] | None:
        try:
            return await self._call("get", "federatedrounds",
                                lambda: self.custom.get_namespaced_custom_object(
                                    GROUP, VERSION, namespace, "federatedrounds", name,
                                    _preload_content=False))
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise

    async def patch_status(self, plural: str, namespace: str, name: str,
                           status: dict[str, Any]) -> None:
        """Merge-patch ``.status`` of a FederatedRound/-Training (the caller knows the
        result: status.merge_patch)."""
        await self._call("patch", f"{plural}/status",
                            lambda: self.custom.patch_namespaced_custom_object_status(
                                GROUP, VERSION, namespace, plural, name, {"status": status},
                                # The client's default for a dict is a JSON patch, which an
                                # API server refuses (400) for an object body.
                                _content_type="application/merge-patch+json",
                                _preload_content=False))

    async def create_round(self, namespace: str, body: dict[str, Any]) -> bool:
        return await self._create("federatedrounds",
                                  lambda: self.custom.create_namespaced_custom_object(
                                      GROUP, VERSION, namespace, "federatedrounds", body,
                                      _preload_content=False))

    async def get_secret(self, namespace: str, name: str) -> dict[str, Any]:
        return await self._call("get", "secrets",
                            lambda: self.core.read_namespaced_secret(
                                name, namespace, _preload_content=False))
