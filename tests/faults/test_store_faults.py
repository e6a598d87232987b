"""The artifact store going away: an S3 server (moto, on loopback) stopped and started again."""

from __future__ import annotations

import socket
import threading
import time
import uuid
from collections.abc import Iterator

import pytest
import torch

from fedma.store import Store, StoreUnavailable
from tests.conftest import training_manifest, write_yaml
from tests.faults.conftest import fedma

pytestmark = [pytest.mark.faults, pytest.mark.s3]


class S3Server:
    """A moto S3 server on a fixed port that can be stopped and started again; the objects
    live in the process (moto's backends), so they survive a restart, as a real store's do."""

    def __init__(self) -> None:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.server = None
        self.bucket = ""

    def start(self) -> None:
        from moto.server import ThreadedMotoServer

        self.server = ThreadedMotoServer(ip_address="127.0.0.1", port=self.port)
        self.server.start()

    def stop(self) -> None:
        if self.server is not None:
            self.server.stop()
            self.server = None


@pytest.fixture
def s3_server(monkeypatch) -> Iterator[S3Server]:
    import boto3

    srv = S3Server()
    srv.start()
    for k, v in {"AWS_ENDPOINT_URL": srv.url, "AWS_ACCESS_KEY_ID": "test",
                 "AWS_SECRET_ACCESS_KEY": "test", "AWS_DEFAULT_REGION": "us-east-1"}.items():
        monkeypatch.setenv(k, v)
    # moto's objects live in this process: a fresh bucket per test keeps tests apart.
    srv.bucket = f"outage-{uuid.uuid4().hex[:12]}"
    boto3.client("s3", endpoint_url=srv.url).create_bucket(Bucket=srv.bucket)
    yield srv
    srv.stop()


WEIGHTS = {"w": torch.arange(12, dtype=torch.float32).view(3, 4)}


def test_a_store_outage_within_the_retry_budget_is_ridden_out(s3_server):
    store = Store(f"s3://{s3_server.bucket}/runs", retry_s=30, backoff_s=0.2)
    store.put_json("before.json", {"ok": True})
    s3_server.stop()
    threading.Timer(1.5, s3_server.start).start()  # back after 1.5 s
    t0 = time.monotonic()
    ref = store.put_tensors("t/round-0001/global.safetensors", WEIGHTS, {"round": 1})
    assert time.monotonic() - t0 >= 1.0  # it really waited for the store
    fresh = Store(f"s3://{s3_server.bucket}/runs", retry_s=0)
    assert torch.equal(fresh.get_tensors("t/round-0001/global.safetensors", ref.digest)["w"],
                       WEIGHTS["w"])
    assert fresh.get_json("before.json") == {"ok": True}  # and lost nothing from before


def test_a_store_outage_past_the_budget_fails_naming_the_path_and_writes_nothing(s3_server):
    store = Store(f"s3://{s3_server.bucket}/runs", retry_s=1.0, backoff_s=0.2)
    s3_server.stop()
    t0 = time.monotonic()
    with pytest.raises(StoreUnavailable, match=r"/runs/t/round-0001/global\.safetensors: "
                       r"store unreachable after \d+ attempts over .* \(retry budget 1 s"):
        store.put_tensors("t/round-0001/global.safetensors", WEIGHTS, {"round": 1})
    assert time.monotonic() - t0 < 10  # the budget, not the S3 client's own retry layers
    s3_server.start()
    fresh = Store(f"s3://{s3_server.bucket}/runs", retry_s=0)
    assert not fresh.exists("t/round-0001/global.safetensors")
    assert not fresh.committed("t/round-0001/global.safetensors")


@pytest.mark.e2e
def test_a_run_whose_store_is_down_fails_with_the_store_named_and_no_traceback(
        tmp_path, tiny_models, s3_server):
    obj = training_manifest(tmp_path, tiny_models, rounds=1, store_uri=f"s3://{s3_server.bucket}/runs")
    s3_server.stop()
    proc = fedma("run", str(write_yaml(tmp_path / "t.yaml", obj)), "--out",
                 str(tmp_path / "out"), extra_env={"FEDMA_STORE_RETRY_S": "1"})
    assert proc.returncode != 0
    assert "store unreachable after" in proc.stderr and f"{s3_server.bucket}/runs" in proc.stderr
    assert "Traceback" not in proc.stderr
