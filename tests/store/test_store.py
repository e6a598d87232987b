import pickle

import pytest
import torch

from fedma.store import ArtifactError, Store, global_rel, update_rel


@pytest.fixture
def store(tmp_path):
    return Store(f"file://{tmp_path}/root", retry_s=0)


def test_roundtrip_with_manifest(store):
    t = {"0.weight": torch.randn(3, 4), "0.bias": torch.zeros(3)}
    ref = store.put_tensors("x/w.safetensors", t, {"samples": 5})
    m = store.get_manifest("x/w.safetensors")
    assert m["sha256"] == ref.digest and m["samples"] == 5
    assert m["tensors"]["0.weight"] == {"shape": [3, 4], "dtype": "float32"}
    back = store.get_tensors("x/w.safetensors", ref.digest)
    assert torch.equal(back["0.weight"], t["0.weight"])
    assert store.rel(ref.uri) == "x/w.safetensors"


@pytest.mark.faults
def test_tampered_artifact_is_refused_naming_it(store, tmp_path):
    ref = store.put_tensors("w.safetensors", {"a": torch.ones(8)})
    path = tmp_path / "root" / "w.safetensors"
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(ArtifactError, match=r"w\.safetensors: sha256 mismatch"):
        store.get_tensors("w.safetensors", ref.digest)
    with pytest.raises(ArtifactError, match="sha256 mismatch"):
        store.get_tensors("w.safetensors")  # the manifest's digest is checked too


@pytest.mark.faults
def test_truncated_and_missing(store, tmp_path):
    ref = store.put_tensors("w.safetensors", {"a": torch.ones(8)})
    path = tmp_path / "root" / "w.safetensors"
    path.write_bytes(path.read_bytes()[:20])
    with pytest.raises(ArtifactError, match="sha256 mismatch"):
        store.get_tensors("w.safetensors", ref.digest)
    with pytest.raises(ArtifactError, match="no committed manifest"):
        store.get_tensors("nope.safetensors")


@pytest.mark.faults
def test_pickle_is_never_loaded(store, tmp_path):
    """A pickled state dict put where weights belong is refused, not unpickled."""
    payload = pickle.dumps({"a": torch.ones(2)})
    ref = store.put_bytes("evil.bin", payload)
    store.put_json("evil.bin.manifest.json", {"sha256": ref.digest})
    with pytest.raises(ArtifactError, match="not a valid safetensors file"):
        store.get_tensors("evil.bin")


@pytest.mark.faults
def test_atomic_write_leaves_no_partial_file(store, tmp_path, monkeypatch):
    store.put_bytes("f.bin", b"old")

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr("os.replace", boom)
    with pytest.raises(Exception, match="disk full"):
        store.put_bytes("f.bin", b"new")
    files = sorted(p.name for p in (tmp_path / "root").iterdir())
    assert files == ["f.bin"]
    assert (tmp_path / "root" / "f.bin").read_bytes() == b"old"


@pytest.mark.faults
def test_paths_cannot_escape_the_root(store):
    with pytest.raises(ArtifactError, match=r"'\.\.' is not allowed"):
        store.put_bytes("../x", b"1")
    with pytest.raises(ArtifactError, match="not inside the store"):
        store.rel("file:///etc/passwd")


def test_layout_keeps_rounds_apart():
    assert global_rel("t", 3) == "t/round-0003/global.safetensors"
    assert update_rel("t", 3, "a") == "t/round-0003/silos/a/update.safetensors"
