import json

import numpy as np
import pytest
from PIL import Image

from fedma.data import DataError, dirichlet_partition, read_manifest
from fedma.data.manifest import load_image
from tests.conftest import make_silo_data


def write_lines(tmp_path, rows):
    p = tmp_path / "data.jsonl"
    p.write_text("\n".join(r if isinstance(r, str) else json.dumps(r) for r in rows) + "\n")
    return p


def test_reads_valid_manifest(tmp_path):
    p = make_silo_data(tmp_path, 5)
    recs = read_manifest(p)
    assert len(recs) == 5 and recs[0].line == 1 and recs[0].image.is_file()


def test_missing_image_names_the_line(tmp_path):
    Image.new("RGB", (4, 4)).save(tmp_path / "ok.png")
    p = write_lines(tmp_path, [{"image": "ok.png", "caption": "x"},
                               {"image": "gone.png", "caption": "y"}])
    with pytest.raises(DataError, match=r"data\.jsonl:2: image 'gone.png' not found"):
        read_manifest(p)


def test_empty_caption_names_the_line(tmp_path):
    Image.new("RGB", (4, 4)).save(tmp_path / "ok.png")
    p = write_lines(tmp_path, ["# comment", {"image": "ok.png", "caption": "   "}])
    with pytest.raises(DataError, match=r"data\.jsonl:2: 'caption' is empty"):
        read_manifest(p)


def test_bad_json_and_traversal(tmp_path):
    with pytest.raises(DataError, match=r":1: not valid JSON"):
        read_manifest(write_lines(tmp_path, ["{not json"]))
    with pytest.raises(DataError, match=r"must not contain '\.\.'"):
        read_manifest(write_lines(tmp_path, [{"image": "../x.png", "caption": "c"}]))


def test_unreadable_image_names_the_line(tmp_path):
    (tmp_path / "bad.png").write_bytes(b"not an image")
    p = write_lines(tmp_path, [{"image": "bad.png", "caption": "c"}])
    rec = read_manifest(p)[0]
    with pytest.raises(DataError, match=r"data\.jsonl:1: image .*bad\.png is unreadable"):
        load_image(rec, p)


def test_missing_manifest(tmp_path):
    with pytest.raises(DataError, match="data manifest not found"):
        read_manifest(tmp_path / "nope.jsonl")


def test_dirichlet_partition_is_a_partition_with_skew():
    labels = np.repeat(np.arange(10), 100)
    parts = dirichlet_partition(labels, 5, alpha=0.1, seed=3)
    flat = sorted(i for p in parts for i in p)
    assert flat == list(range(1000))
    # Small alpha: each silo is dominated by few classes.
    top_share = [np.bincount(labels[p], minlength=10).max() / len(p) for p in parts]
    assert np.mean(top_share) > 0.4
    iidish = dirichlet_partition(labels, 5, alpha=1000, seed=3)
    assert np.mean([np.bincount(labels[p], minlength=10).max() / len(p) for p in iidish]) < 0.2
    assert dirichlet_partition(labels, 5, 0.1, seed=3) == parts


def test_demo_captions_follow_measured_attributes():
    from fedma.data.demo import attributes, caption

    img = np.zeros((2, 28, 28), dtype=np.uint8)
    img[0, 4:24, 13:15] = 255  # thin vertical stroke
    img[1, 4:24, 10:18] = 255  # thick vertical stroke
    weight, slant = attributes(img, np.array([1, 1]))
    assert weight == ["thin", "bold"] and slant == ["upright", "upright"]
    lean = np.zeros((1, 28, 28), dtype=np.uint8)
    for y in range(4, 24):  # top of the stroke to the right
        x = 20 - (y - 4) // 2
        lean[0, y, x : x + 2] = 255
    assert attributes(lean, np.array([1]))[1] == ["leaning right"]
    assert caption(7, "bold", "upright") == "bold strokes, upright: the number seven"
