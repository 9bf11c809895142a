"""Calibration and evaluation data: the accepted forms, layouts, and one-line refusals that show both
the data's shape and dtype and the model input's."""

from __future__ import annotations

import numpy as np
import pytest

from lepton_edge.convert.calibration import load_dataset, synthetic_dataset
from lepton_edge.convert.load import InputInfo
from lepton_edge.errors import BadInput

IMAGE = [InputInfo("image", (1, 8, 6, 3), "float32")]


def test_npy_npz_and_a_single_sample(tmp_path):
    x = np.random.default_rng(0).uniform(0, 1, (5, 8, 6, 3)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    np.savez(tmp_path / "xy.npz", x=x, y=np.arange(5))
    np.save(tmp_path / "one.npy", x[0])
    assert np.array_equal(load_dataset(str(tmp_path / "x.npy"), IMAGE, what="calibration").xs[0], x)
    both = load_dataset(str(tmp_path / "xy.npz"), IMAGE, what="eval")
    assert len(both) == 5 and both.y.tolist() == [0, 1, 2, 3, 4]
    assert load_dataset(str(tmp_path / "one.npy"), IMAGE, what="calibration").xs[0].shape == (1, 8, 6, 3)


def test_directory_of_images_and_npy(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(1)
    pixels = rng.integers(0, 256, (2, 8, 6, 3), dtype=np.uint8)
    for i, p in enumerate(pixels):
        Image.fromarray(p).save(tmp_path / f"img{i}.png")
    np.save(tmp_path / "extra.npy", pixels[0].astype(np.float32))
    data = load_dataset(str(tmp_path), IMAGE, what="calibration")
    assert len(data) == 3 and data.xs[0].dtype == np.float32
    assert np.array_equal(data.xs[0][1:], pixels.astype(np.float32))  # 0..255, no rescaling
    Image.fromarray(rng.integers(0, 256, (9, 9, 3), dtype=np.uint8)).save(tmp_path / "big.png")
    with pytest.raises(BadInput, match=r"image is \[9, 9, 3\].*takes \[8, 6, 3\]"):
        load_dataset(str(tmp_path), IMAGE, what="calibration")


def test_nchw_data_is_transposed_for_an_onnx_source(tmp_path):
    nchw = np.random.default_rng(2).normal(size=(4, 3, 8, 6)).astype(np.float32)
    np.save(tmp_path / "nchw.npy", nchw)
    data = load_dataset(str(tmp_path / "nchw.npy"), IMAGE, what="calibration", source_layout="NCHW", layout="NHWC")
    assert np.array_equal(data.xs[0], nchw.transpose(0, 2, 3, 1))
    with pytest.raises(BadInput, match=r"does not match"):  # the same data for a NHWC source is wrong
        load_dataset(str(tmp_path / "nchw.npy"), IMAGE, what="calibration", source_layout="NHWC", layout="NHWC")


@pytest.mark.parametrize("array, message", [
    (np.zeros((4, 28, 28), np.float32), r"shape \[4, 28, 28\] float32 does not match the model's input 'image' "
                                        r"\[1, 8, 6, 3\] float32"),
    (np.array(["a"]), r"dtype <U1 does not suit the model's input 'image' \[1, 8, 6, 3\] float32"),
    (np.full((2, 8, 6, 3), np.nan, np.float32), "NaN"),
])
def test_refusals_show_both_sides(tmp_path, array, message):
    np.save(tmp_path / "bad.npy", array)
    with pytest.raises(BadInput, match=message):
        load_dataset(str(tmp_path / "bad.npy"), IMAGE, what="calibration")


def test_labels_and_keys(tmp_path):
    x = np.zeros((3, 8, 6, 3), np.float32)
    np.savez(tmp_path / "nolabels.npz", x=x)
    np.savez(tmp_path / "wrongkey.npz", images=x)
    np.savez(tmp_path / "short.npz", x=x, y=np.arange(2))
    with pytest.raises(BadInput, match="needs labels"):
        load_dataset(str(tmp_path / "nolabels.npz"), IMAGE, what="train", need_labels=True)
    with pytest.raises(BadInput, match=r"no key 'x' \(keys: images\)"):
        load_dataset(str(tmp_path / "wrongkey.npz"), IMAGE, what="eval")
    with pytest.raises(BadInput, match="2 labels 'y' for 3 samples"):
        load_dataset(str(tmp_path / "short.npz"), IMAGE, what="eval")


def test_synthetic_is_seeded_and_flagged():
    a, b = synthetic_dataset(IMAGE, 4, seed=3), synthetic_dataset(IMAGE, 4, seed=3)
    assert a.synthetic and np.array_equal(a.xs[0], b.xs[0]) and a.xs[0].shape == (4, 8, 6, 3)
