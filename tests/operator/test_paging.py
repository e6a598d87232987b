"""Lists are paged: every item of every page is read, each answer bounded by ``PAGE``; an
expired continue token starts the list again once. Against the real apiserver (which pages
for real, 1,000 silos in two answers): tests/kube/test_load.py."""

from __future__ import annotations

import pytest
from kubernetes_asyncio.client.exceptions import ApiException

from fedma_operator import kube


class Answer:
    """What ``_timed`` reads of a raw response."""

    def __init__(self, status: int, body: bytes):
        self.status, self._body = status, body

    async def read(self) -> bytes:
        return self._body


def pages(items: list[int], size: int, expire_at: str | None = None):
    import json

    calls: list[str | None] = []

    async def call(token: str | None):
        calls.append(token)
        if token is not None and token == expire_at:
            return Answer(410, b"continue token expired")
        start = int(token or 0)
        chunk = items[start:start + size]
        more = str(start + size) if start + size < len(items) else None
        return Answer(200, json.dumps({"metadata": {"continue": more} if more else {},
                                       "items": [{"n": i} for i in chunk]}).encode())
    return call, calls


def bare() -> kube.Cluster:
    """A Cluster without a client: ``_pages`` is given its call."""
    cluster = object.__new__(kube.Cluster)
    cluster.name, cluster.observe, cluster.timeout_s = "hub", kube._noop, 5.0
    return cluster


@pytest.mark.asyncio
async def test_every_page_is_read_and_the_token_passed_on():
    cluster = bare()
    call, calls = pages(list(range(1200)), 500)
    got = await cluster._pages("jobs", call)
    assert [g["n"] for g in got] == list(range(1200))
    assert calls == [None, "500", "1000"]


@pytest.mark.asyncio
async def test_an_expired_token_starts_the_list_again_once():
    cluster = bare()
    call, calls = pages(list(range(700)), 500, expire_at="500")
    with pytest.raises(ApiException):  # it expires again: the reconcile fails and retries
        await cluster._pages("jobs", call)
    assert calls == [None, "500", None, "500"]
