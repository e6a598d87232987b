"""The same Store code against the S3 protocol, served by moto on loopback."""

import pytest
import torch

from fedma.store import ArtifactError, Store

pytestmark = pytest.mark.s3


def test_s3_roundtrip_and_tamper_detection(s3_env):
    import boto3

    store = Store("s3://fedma/runs", retry_s=0)
    t = {"w": torch.arange(12, dtype=torch.float32).view(3, 4)}
    ref = store.put_tensors("t/round-0001/global.safetensors", t, {"round": 1})
    assert ref.uri == "s3://fedma/runs/t/round-0001/global.safetensors"
    assert store.committed("t/round-0001/global.safetensors")
    assert torch.equal(store.get_tensors("t/round-0001/global.safetensors", ref.digest)["w"],
                       t["w"])
    client = boto3.client("s3", endpoint_url=s3_env)
    client.put_object(Bucket="fedma", Key="runs/t/round-0001/global.safetensors", Body=b"x" * 64)
    fresh = Store("s3://fedma/runs", retry_s=0)  # no cached listing or bytes
    with pytest.raises(ArtifactError, match=r"global\.safetensors: sha256 mismatch"):
        fresh.get_tensors("t/round-0001/global.safetensors", ref.digest)
