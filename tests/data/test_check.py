"""Checking a training's data before compute is spent: every bad line at once, every image
decoded (a truncated JPEG whose header reads fine included), in seconds for thousands."""

import io
import json
import time

import pytest
from PIL import Image

from fedma.data.check import check_data, check_one, require_data
from fedma.data.manifest import MAX_LISTED, DataError, read_manifest
from fedma.spec import parse
from tests.conftest import make_silo_data


def truncated_jpeg(path):
    buf = io.BytesIO()
    Image.effect_noise((256, 256), 60).convert("RGB").save(buf, "JPEG")
    path.write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])


def bad_silo(folder):
    """Seven lines: 3 has an empty caption, 5 a missing image, 7 a JPEG cut in half."""
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(7):
        Image.new("RGB", (8, 8)).save(folder / f"{i}.png")
    truncated_jpeg(folder / "cut.jpg")
    rows = [{"image": f"{i}.png", "caption": f"c{i}"} for i in range(7)]
    rows[2]["caption"] = ""
    rows[4]["image"] = "gone.png"
    rows[6]["image"] = "cut.jpg"
    (folder / "data.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return folder / "data.jsonl"


def test_every_bad_line_is_named_at_once_and_a_truncated_jpeg_is_found(tmp_path):
    manifest = bad_silo(tmp_path / "a")
    # The header of the cut JPEG reads: only a full decode finds it.
    with Image.open(tmp_path / "a" / "cut.jpg") as img:
        assert img.size == (256, 256)
    got = check_one("silo a", manifest)
    assert got.records == 5 and len(got.errors) == 3, got.errors
    assert [e.split(": ", 1)[0] for e in got.errors] == [f"{manifest}:{n}" for n in (3, 5, 7)]
    assert "'caption' is empty" in got.errors[0]
    assert "not found" in got.errors[1]
    assert "cut.jpg is unreadable" in got.errors[2] and "truncated" in got.errors[2]
    # read_manifest (what a silo reads) names every line too, the first one first.
    with pytest.raises(DataError) as exc:
        read_manifest(manifest)
    first, *rest = str(exc.value).splitlines()
    assert first.startswith(f"{manifest}:3: 'caption' is empty") and "(2 bad lines" in first
    assert rest == [f"{manifest}:5: image 'gone.png' not found at {tmp_path / 'a' / 'gone.png'}"]


def test_long_lists_are_cut_with_a_count(tmp_path):
    rows = [json.dumps({"image": f"{i}.png", "caption": "c"}) for i in range(MAX_LISTED + 7)]
    (tmp_path / "data.jsonl").write_text("\n".join(rows))
    with pytest.raises(DataError) as exc:
        read_manifest(tmp_path / "data.jsonl")
    lines = str(exc.value).splitlines()
    assert len(lines) == MAX_LISTED + 1 and lines[-1] == "... and 7 more"
    assert f"({MAX_LISTED + 7} bad lines in all)" in lines[0]


def _training(silos, evaluation=None):
    spec = {"rounds": 1,
            "model": {"vision": {"path": "/m/v"}, "languageModel": {"path": "/m/l"}},
            "silos": [{"name": n, "data": {"path": str(p)}} for n, p in silos.items()],
            "artifacts": {"uri": "file:///tmp/store"}}
    if evaluation:
        spec["evaluation"] = {"data": {"path": str(evaluation)}}
    return parse({"apiVersion": "fedma.io/v1alpha1", "kind": "FederatedTraining",
                  "metadata": {"name": "t"}, "spec": spec})


def test_validate_lists_paths_not_here_and_run_refuses_them(tmp_path):
    good = make_silo_data(tmp_path / "good", 4)
    bad = bad_silo(tmp_path / "bad")
    training = _training({"good": good, "bad": bad, "remote": "/data/in/the/pod.jsonl"},
                         evaluation=good)
    checks = check_data(training)
    assert [c.what for c in checks] == ["silo good", "silo bad", "silo remote", "evaluation"]
    assert checks[0].line() == f"silo good: 4 records, every image decoded ({good})"
    assert checks[2].missing and "not on this machine (not checked)" in checks[2].line()
    with pytest.raises(DataError) as exc:
        require_data(training)
    text = str(exc.value)
    for n in (3, 5, 7):
        assert f"{bad}:{n}: " in text
    assert "/data/in/the/pod.jsonl: data manifest of silo remote not found" in text


def test_thousands_of_images_are_checked_in_seconds(tmp_path):
    manifest = make_silo_data(tmp_path / "big", 3000)
    t0 = time.perf_counter()
    got = check_one("silo big", manifest)
    seconds = time.perf_counter() - t0
    print(f"3000 images (32x32 PNG) read and decoded in {seconds:.2f} s")
    assert got.records == 3000 and not got.errors
    assert seconds < 15, seconds
