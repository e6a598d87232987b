"""Artifacts: projector weights as safetensors plus a JSON manifest, on any fsspec store.

Why this shape:
- safetensors, never pickle: weights cross organisational boundaries, and a pickle is code.
- every file is addressed together with its sha256; each read recomputes and compares it, so a
  tampered or truncated artifact is a clear error naming it, not a silently different model.
- writes are atomic: a local file is written beside its target and renamed into place; an
  object store PUT is all-or-nothing. The manifest is written last and acts as the commit
  marker: an artifact without its manifest does not exist as far as a reader is concerned.

A store that does not answer is retried with exponential backoff (0.5 s doubling, at most
15 s apart) for ``$FEDMA_STORE_RETRY_S`` seconds (default 120): an outage shorter than that
is ridden out; a longer one is a ``StoreUnavailable`` naming the path, and nothing is left
half-written (see above). fedma's retry is the only one: the S3 client's own retry layers
(botocore's and s3fs's) are set to one attempt so the budget means what it says.

Store credentials come from the environment (``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY``,
``AWS_ENDPOINT_URL``), which a Kubernetes Job fills from a Secret — never from a spec.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import fsspec
import torch
from safetensors import SafetensorError
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from fedma.spec import ALLOWED_URI_SCHEMES

T = TypeVar("T")
MANIFEST_SUFFIX = ".manifest.json"
DISCARDED_SUFFIX = ".discarded.json"  # a manifest un-committed by Store.discard
COPY_BLOCK = 8 << 20  # bytes per read when copying an artifact to a local file


class ArtifactError(RuntimeError):
    """An artifact is missing, corrupt or tampered with; the message names it."""


class StoreUnavailable(ArtifactError):
    """The store could not be reached after retrying."""


class StoreRefused(ArtifactError):
    """The store answered but refused: no credentials, or credentials without the right.
    Retrying cannot help, so it is raised at once."""


# Where credentials come from, said wherever the store refuses them.
CREDENTIALS_HINT = (
    "set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (and AWS_ENDPOINT_URL for a store "
    "other than AWS S3) in this command's environment; spec.artifacts.credentialsSecret names "
    "the Kubernetes Secret the operator gives its Jobs and is not read by a local run")


def _refused_errors() -> tuple[type[BaseException], ...]:
    errors: tuple[type[BaseException], ...] = (PermissionError,)
    try:
        from botocore.exceptions import NoCredentialsError, PartialCredentialsError
    except ImportError:
        return errors
    return (*errors, NoCredentialsError, PartialCredentialsError)


@dataclass(frozen=True)
class ArtifactRef:
    uri: str
    digest: str

    def as_dict(self) -> dict[str, str]:
        return {"uri": self.uri, "digest": self.digest}


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _split(uri: str) -> tuple[str, str]:
    if "://" not in uri:
        return "file", str(Path(uri).resolve())
    scheme, rest = uri.split("://", 1)
    if scheme not in ALLOWED_URI_SCHEMES:
        raise ArtifactError(f"{uri}: store scheme {scheme!r} is not supported")
    return scheme, (str(Path(rest).resolve()) if scheme == "file" else rest.rstrip("/"))


DEFAULT_RETRY_S = 120.0
MAX_BACKOFF_S = 15.0


def _transient_errors() -> tuple[type[BaseException], ...]:
    """What a store that is down or flaky raises (the S3 client's own connection errors are
    not OSErrors)."""
    errors: tuple[type[BaseException], ...] = (OSError, ConnectionError, TimeoutError)
    try:
        from botocore.exceptions import ConnectionError as BotoConnectionError
        from botocore.exceptions import HTTPClientError
    except ImportError:
        return errors
    return (*errors, BotoConnectionError, HTTPClientError)


class Store:
    """A root URI plus retrying, digest-checked, atomic reads and writes below it."""

    def __init__(self, root: str, retry_s: float | None = None, backoff_s: float = 0.5,
                 storage_options: dict[str, Any] | None = None):
        self.scheme, self.root = _split(root)
        self.retry_s = (float(os.environ.get("FEDMA_STORE_RETRY_S", DEFAULT_RETRY_S))
                        if retry_s is None else retry_s)
        self.backoff_s = backoff_s
        opts = dict(storage_options or {})
        if self.scheme == "s3":
            if os.environ.get("AWS_ENDPOINT_URL"):
                opts.setdefault("endpoint_url", os.environ["AWS_ENDPOINT_URL"])
            opts.setdefault("config_kwargs", {"retries": {"max_attempts": 1}})
        self.fs = fsspec.filesystem(self.scheme, **opts)
        if self.scheme == "s3":
            self.fs.retries = 1  # s3fs's own loop; ours below is the one that counts

    # -- addressing -------------------------------------------------------------------------
    def uri(self, rel: str) -> str:
        return f"{self.scheme}://{self._path(rel)}"

    def _path(self, rel: str) -> str:
        rel = rel.strip("/")
        if ".." in rel.split("/"):
            raise ArtifactError(f"{rel}: '..' is not allowed in artifact paths")
        return f"{self.root}/{rel}" if rel else self.root

    def rel(self, uri: str) -> str:
        """The path of ``uri`` relative to this store's root (refuses URIs outside it)."""
        scheme, path = _split(uri)
        if scheme != self.scheme or not (path == self.root or path.startswith(self.root + "/")):
            raise ArtifactError(f"{uri}: not inside the store {self.uri('')}")
        return path[len(self.root):].strip("/")

    # -- retries ----------------------------------------------------------------------------
    def _retry(self, what: str, fn: Callable[[], T]) -> T:
        delay = self.backoff_s
        start = time.monotonic()
        attempt = 0
        while True:
            attempt += 1
            try:
                return fn()
            except (FileNotFoundError, ArtifactError):
                raise
            except _refused_errors() as exc:
                kind = ("no credentials for the store" if not isinstance(exc, PermissionError)
                        else "the store refused access")
                raise StoreRefused(f"{what}: {kind} ({exc}): {CREDENTIALS_HINT}") from None
            except _transient_errors() as exc:
                waited = time.monotonic() - start
                if waited + delay > self.retry_s:
                    raise StoreUnavailable(
                        f"{what}: store unreachable after {attempt} attempts over "
                        f"{waited:.1f} s (retry budget {self.retry_s:g} s, "
                        f"$FEDMA_STORE_RETRY_S): {exc}; check that the store is up and "
                        "its address (spec.artifacts.uri; AWS_ENDPOINT_URL for S3)") from exc
                time.sleep(delay)
                delay = min(delay * 2, MAX_BACKOFF_S)

    # -- bytes ------------------------------------------------------------------------------
    def put_bytes(self, rel: str, data: bytes) -> ArtifactRef:
        path = self._path(rel)
        try:
            if self.scheme == "file":
                self._retry(path, lambda: _atomic_local_write(path, data))
            else:
                self._retry(path, lambda: self.fs.pipe_file(path, data))
        except FileNotFoundError as exc:  # S3: the bucket does not exist
            raise ArtifactError(f"{self.uri(rel)}: cannot write ({exc}): check the bucket "
                                "in spec.artifacts.uri") from None
        return ArtifactRef(self.uri(rel), sha256(data))

    def get_bytes(self, rel: str, digest: str | None = None) -> bytes:
        path = self._path(rel)
        try:
            data = self._retry(path, lambda: self.fs.cat_file(path))
        except FileNotFoundError:
            raise ArtifactError(f"{self.uri(rel)}: artifact not found") from None
        if digest is not None and sha256(data) != digest:
            raise ArtifactError(
                f"{self.uri(rel)}: sha256 mismatch (expected {digest[:12]}…, got "
                f"{sha256(data)[:12]}…): the artifact was modified or truncated"
            )
        return data

    def fetch_verified(self, rel: str, digest: str, dest: Path) -> Path:
        """Copy ``rel`` to the local file ``dest`` in blocks, hashing as it goes; the copy
        exists only if its sha256 is ``digest``. What is then read is the verified local copy,
        never the store's file again (which its writer could change in between)."""
        path = self._path(rel)
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.with_name(f".{dest.name}.part")

        def copy() -> str:
            h = hashlib.sha256()
            with self.fs.open(path, "rb") as src, open(tmp, "wb") as out:
                while block := src.read(COPY_BLOCK):
                    h.update(block)
                    out.write(block)
            return h.hexdigest()

        try:
            got = self._retry(path, copy)
        except FileNotFoundError:
            tmp.unlink(missing_ok=True)
            raise ArtifactError(f"{self.uri(rel)}: artifact not found") from None
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        if got != digest:
            tmp.unlink(missing_ok=True)
            raise ArtifactError(
                f"{self.uri(rel)}: sha256 mismatch (expected {digest[:12]}…, got "
                f"{got[:12]}…): the artifact was modified or truncated")
        os.replace(tmp, dest)
        return dest

    def exists(self, rel: str) -> bool:
        path = self._path(rel)
        return bool(self._retry(path, lambda: self.fs.exists(path)))

    # -- JSON -------------------------------------------------------------------------------
    def put_json(self, rel: str, obj: Any) -> ArtifactRef:
        return self.put_bytes(rel, json.dumps(obj, indent=2, sort_keys=True).encode())

    def get_json(self, rel: str, digest: str | None = None) -> Any:
        raw = self.get_bytes(rel, digest)
        try:
            return json.loads(raw)
        except json.JSONDecodeError as exc:
            raise ArtifactError(f"{self.uri(rel)}: not valid JSON: {exc}") from None

    # -- tensors ----------------------------------------------------------------------------
    def put_tensors(self, rel: str, tensors: dict[str, torch.Tensor],
                    manifest: dict[str, Any] | None = None) -> ArtifactRef:
        """Write ``rel`` (safetensors) then its manifest; returns the weights' reference."""
        data = st_save({k: v.detach().contiguous().cpu() for k, v in sorted(tensors.items())})
        ref = self.put_bytes(rel, data)
        body = dict(manifest or {})
        body.update({
            "file": Path(rel).name,
            "sha256": ref.digest,
            "bytes": len(data),
            "tensors": {k: {"shape": list(v.shape), "dtype": str(v.dtype).removeprefix("torch.")}
                        for k, v in sorted(tensors.items())},
        })
        self.put_json(rel + MANIFEST_SUFFIX, body)
        return ref

    def get_tensors(self, rel: str, digest: str | None = None) -> dict[str, torch.Tensor]:
        """Read weights, verifying ``digest`` (or, without one, the manifest's digest)."""
        if digest is None:
            digest = self.get_manifest(rel)["sha256"]
        data = self.get_bytes(rel, digest)
        try:
            return st_load(data)
        except (SafetensorError, ValueError) as exc:
            raise ArtifactError(f"{self.uri(rel)}: not a valid safetensors file: {exc}") from None

    def get_manifest(self, rel: str) -> dict[str, Any]:
        try:
            body = self.get_json(rel + MANIFEST_SUFFIX)
        except ArtifactError as exc:
            raise ArtifactError(f"{self.uri(rel)}: no committed manifest ({exc})") from None
        if not isinstance(body, dict) or "sha256" not in body:
            raise ArtifactError(f"{self.uri(rel + MANIFEST_SUFFIX)}: manifest lacks 'sha256'")
        return body

    def committed(self, rel: str) -> bool:
        return self.exists(rel + MANIFEST_SUFFIX)

    def discard(self, rel: str) -> bool:
        """Un-commit ``rel`` so that whoever produces it runs again: its manifest moves to
        ``<rel>.discarded.json`` (kept for whoever investigates), the bytes stay until
        they are written anew. Returns whether ``rel`` was committed."""
        if not self.committed(rel):
            return False
        manifest = self._path(rel + MANIFEST_SUFFIX)
        self.put_bytes(rel + DISCARDED_SUFFIX, self.get_bytes(rel + MANIFEST_SUFFIX))
        self._retry(manifest, lambda: self.fs.rm_file(manifest))
        return True


def _atomic_local_write(path: str, data: bytes) -> None:
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


# -- layout: one folder per round, so a late update can never leak into another round --------
def round_dir(training: str, round_index: int) -> str:
    return f"{training}/round-{round_index:04d}"


def global_rel(training: str, round_index: int) -> str:
    """The global projector *produced by* round ``round_index`` (round 0 = initialisation)."""
    return f"{round_dir(training, round_index)}/global.safetensors"


def server_state_rel(training: str, round_index: int) -> str:
    return f"{round_dir(training, round_index)}/server-state.safetensors"


def update_rel(training: str, round_index: int, silo: str) -> str:
    return f"{round_dir(training, round_index)}/silos/{silo}/update.safetensors"
