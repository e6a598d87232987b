"""The hub's Job watch: which round a Job event wakes, read from the raw watch stream.

A round's loop sleeps until one of its Jobs finishes or goes (handlers.py). Those events
came through a kopf handler, and kopf turns every event into a body, a cause, a diff base
and a handler invocation; at 100 silos a round's Jobs send about six events each (created,
pod started, ready, terminated, counted, complete) and only the last one or two matter. Under
the load test that was about a third of the operator's CPU. This watch reads the stream
itself (``GET .../jobs?watch=1`` with the same server-side label selector) and decodes an event
only when its bytes could describe a settled Job (:data:`MARKERS`): a necessary condition of
:func:`settled`, so no event that kopf's handler acted on is skipped; the decision on a
decoded event is :func:`settled` itself. The resourceVersion to resume from is read from the
bytes of the events it does not decode.

After a relist (start-up, an expired resourceVersion, a broken stream) every loop is woken
once: what finished while the watch was away is read by the reconcile (which reads the Jobs
afresh in any case), never lost.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import aiohttp
from kubernetes_asyncio import client
from kubernetes_asyncio.client.exceptions import ApiException

from fedma.rounds import JobState
from fedma_operator.jobs import MANAGED_BY
from fedma_operator.observe import job_state

log = logging.getLogger("fedma.operator.jobwatch")
MANAGED = "=".join(MANAGED_BY)  # the label every fedma Job carries (jobs.labels)
WATCH_S = 300  # the server ends each watch after this; the next resumes where it stopped
# An event for a Job that has finished mentions one of these; an event that mentions none
# cannot be settled (job_state reads exactly these conditions and counters), so it is not
# decoded. ``"failed":``/``"succeeded":`` match the counters and uncountedTerminatedPods.
MARKERS = (b'"succeeded":', b'"failed":', b'"Complete"', b'"Failed"', b'"FailureTarget"',
           b'"SuccessCriteriaMet"')
_QUIET = (b'{"type":"ADDED"', b'{"type":"MODIFIED"')
_VERSION = re.compile(rb'"resourceVersion":"([0-9]+)"')


def settled(job: Any, event: str | None) -> bool:
    """A Job event a round acts on: the Job finished (a terminal condition) or is gone. A
    Job's other changes (its pod created, running, ready) would each wake a full reconcile
    that finds nothing to do: five or six per Job, hundreds per round at 100 silos."""
    return event == "DELETED" or job_state(job)[0] != JobState.ACTIVE


@dataclass(frozen=True)
class Seen:
    """One watch event, as far as a round cares."""
    version: str = ""  # the resourceVersion to resume from ("" if the event has none)
    wake: tuple[str, str] | None = None  # (namespace, round name) to wake
    expired: bool = False  # an ERROR event (410 Gone: the version is too old): list again


def read_event(line: bytes) -> Seen:
    """What one line of the watch stream means. Only an event that could be settled is
    decoded; the others give their resourceVersion from the bytes (an apiserver writes the
    object's metadata, resourceVersion included, before anything a label could hold)."""
    if line.startswith(_QUIET) and not any(m in line for m in MARKERS):
        found = _VERSION.search(line)
        if found:
            return Seen(found.group(1).decode())
    event = json.loads(line)
    kind, job = event.get("type"), event.get("object") or {}
    if kind == "ERROR":
        return Seen(expired=True)
    meta = job.get("metadata") or {}
    version = str(meta.get("resourceVersion") or "")
    if kind == "BOOKMARK" or not settled(job, kind):
        return Seen(version)
    labels = meta.get("labels") or {}
    name = labels.get("fedma.io/round-name")
    if not name:
        return Seen(version)
    return Seen(version, (labels.get("fedma.io/round-namespace") or meta.get("namespace")
                          or "default", name))


def lines(buffer: bytearray, chunk: bytes) -> list[bytes]:
    """The complete lines in ``buffer`` + ``chunk``; the incomplete rest stays in ``buffer``
    (a Job can be larger than aiohttp's line limit: the aggregation Job of 1,000 silos)."""
    buffer.extend(chunk)
    *done, rest = bytes(buffer).split(b"\n")
    buffer[:] = rest
    return [line for line in done if line.strip()]


class JobWatch:
    """One watch of fedma's Jobs (cluster-wide, or in one namespace)."""

    def __init__(self, api: client.ApiClient, namespace: str | None,
                 wake: Callable[[str, str], None], resync: Callable[[], None],
                 retry_s: float = 2.0):
        self.batch = client.BatchV1Api(api)
        self.namespace = namespace
        self.wake, self.resync, self.retry_s = wake, resync, retry_s

    def _call(self, **kw: Any) -> Any:
        kw.update(label_selector=MANAGED, _preload_content=False)
        if self.namespace is None:
            return self.batch.list_job_for_all_namespaces(**kw)
        return self.batch.list_namespaced_job(self.namespace, **kw)

    async def _version(self) -> str:
        """The collection's current resourceVersion (a list of one item: the history of
        Jobs is not read; reconciles read what they need)."""
        resp = await asyncio.wait_for(self._call(limit=1, _request_timeout=30), 35)
        body = json.loads(await resp.read())
        if resp.status != 200:
            raise ApiException(status=resp.status, reason=str(body)[:300])
        return str((body.get("metadata") or {}).get("resourceVersion") or "")

    async def _stream(self, version: str) -> str:
        """Watch from ``version`` until the server ends the watch; returns the version to
        resume from ("" if it expired)."""
        # "true", not True: the client would send "True", which the apiserver's ParseBool
        # accepts and simpler servers (kmock) do not.
        resp = await self._call(watch="true", resource_version=version,
                                allow_watch_bookmarks="true", timeout_seconds=WATCH_S,
                                _request_timeout=WATCH_S + 30)
        try:
            if resp.status != 200:
                raise ApiException(status=resp.status, reason=(await resp.text())[:300])
            buffer = bytearray()
            async for chunk in resp.content.iter_any():
                for line in lines(buffer, chunk):
                    seen = read_event(line)
                    if seen.expired:
                        return ""
                    version = seen.version or version
                    if seen.wake is not None:
                        self.wake(*seen.wake)
            return version
        finally:
            resp.release()

    async def run(self) -> None:
        version = ""
        while True:
            try:
                if not version:
                    version = await self._version()
                    self.resync()  # whatever finished while nobody watched
                version = await self._stream(version)
            except asyncio.CancelledError:
                raise
            except (ApiException, aiohttp.ClientError, OSError, TimeoutError, ValueError) as exc:
                log.warning("Job watch%s: %s; listing again in %.0f s",
                            f" in {self.namespace}" if self.namespace else "", exc,
                            self.retry_s)
                version = ""
                await asyncio.sleep(self.retry_s)
