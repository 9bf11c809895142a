"""``convert --preprocess``: the new user's path of issue 14, with real photos (../shared/data).

Two trained image models: MLPerf Tiny's IC ResNet-8 (takes raw 0..255) and a small CNN trained here on
[0, 1] inputs. Each is converted from a folder of JPEGs of mixed sizes with the right spec, and reaches the
SQNR of calibrating with the same photos prepared by hand (Pillow, then scaled) within 1 dB. A wrong spec,
or none, makes the converter warn, naming the cause and the spec that fixes it; --min-sqnr then refuses
(exit 1, nothing written). A corrupt JPEG, a WAV at another sample rate and a spec the model cannot take
are one line and exit 2, nothing written. The spec is in the signed manifest and ``inspect`` shows it.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from conftest import MLPERF, SHARED, assert_one_line_error, require_shared, run_cli

pytestmark = pytest.mark.slow
Image = pytest.importorskip("PIL.Image")

PROFILE = "stm32h743"
IC = MLPERF / "ic" / "pretrainedResnet.h5"
SIZES = [(96, 96), (64, 80), (120, 90), (40, 60), (32, 32), (75, 100)]  # (height, width)
PER_FOLDER = 24


def _write_jpegs(folder: Path, photos: np.ndarray) -> list[Path]:
    folder.mkdir()
    paths = []
    for i, photo in enumerate(photos):
        h, w = SIZES[i % len(SIZES)]
        path = folder / f"photo{i:02d}.jpg"
        Image.fromarray(photo).resize((w, h), Image.BICUBIC).save(path, quality=90)
        paths.append(path)
    return paths


def _by_hand(paths: list[Path], scale: float) -> np.ndarray:
    """What a user does without the spec: decode with Pillow, resize to 32x32 (bilinear), scale."""
    return np.stack([np.asarray(Image.open(p).convert("RGB").resize((32, 32), Image.BILINEAR), dtype=np.float32)
                     * np.float32(scale) for p in paths])


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    root = tmp_path_factory.mktemp("photos")
    crops = np.load(require_shared(SHARED / "data" / "photos96.npz"))["x"]
    cal = _write_jpegs(root / "cal", crops[:PER_FOLDER])
    ev = _write_jpegs(root / "eval", crops[PER_FOLDER:2 * PER_FOLDER])
    return root, cal, ev


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    from lepton_edge.artifact import generate_keypair

    return generate_keypair(tmp_path_factory.mktemp("keys"))


@pytest.fixture(scope="module")
def small_model(tmp_path_factory):
    """A small CNN trained on [0, 1] photo crops to tell their brightness quartile (4 classes)."""
    from lepton_edge.convert.tfenv import keras_module, quiet

    keras = keras_module("keras3")
    x = np.load(require_shared(SHARED / "data" / "photos32.npz"))["x"].astype(np.float32) / 255.0
    brightness = x.mean(axis=(1, 2, 3))
    y = np.searchsorted(np.quantile(brightness, [0.25, 0.5, 0.75]), brightness)
    keras.utils.set_random_seed(0)
    inp = keras.Input((32, 32, 3))
    h = keras.layers.Conv2D(8, 3, strides=2, activation="relu")(inp)
    h = keras.layers.Conv2D(16, 3, strides=2, activation="relu")(h)
    h = keras.layers.GlobalAveragePooling2D()(h)
    model = keras.Model(inp, keras.layers.Dense(4, activation="softmax")(h))
    model.compile(optimizer=keras.optimizers.Adam(1e-2), loss="sparse_categorical_crossentropy",
                  metrics=["accuracy"])
    with quiet():
        model.fit(x, y, epochs=25, batch_size=32, verbose=0)
        accuracy = model.evaluate(x, y, verbose=0)[1]
    assert accuracy > 0.6  # trained: it tells the quartiles apart
    path = tmp_path_factory.mktemp("small") / "bright.keras"
    model.save(path)
    return path


def _convert(model: Path, out: Path, **kwargs):
    from lepton_edge.convert.options import ConvertOptions
    from lepton_edge.convert.pipeline import convert

    return convert(ConvertOptions(model=str(model), profile=PROFILE, outdir=str(out), measure="host", **kwargs))


def _untrained_warnings(result) -> list[str]:
    return [w for w in result.warnings if "behaves untrained" in w]


@pytest.mark.parametrize("which", ["ic", "small"])
def test_right_spec_matches_hand_prepared_tensors(which, photos, small_model, keys, tmp_path):
    from lepton_edge.artifact import load_artifact, load_public_key

    model = require_shared(IC) if which == "ic" else small_model
    spec, scale = ("kind=image,size=32x32", 1.0) if which == "ic" else ("kind=image,size=32x32,scale=1/255", 1 / 255)
    root, cal, ev = photos
    out = tmp_path / "artifact"
    raw = _convert(model, out, calibration=str(root / "cal"), eval=str(root / "eval"), preprocess=spec,
                   sign_key=str(keys[0]))
    assert raw.written, raw.failure
    np.save(tmp_path / "cal.npy", _by_hand(cal, scale))
    np.savez(tmp_path / "eval.npz", x=_by_hand(ev, scale))
    hand = _convert(model, tmp_path / "hand", calibration=str(tmp_path / "cal.npy"), eval=str(tmp_path / "eval.npz"))
    assert hand.written, hand.failure
    ours, theirs = raw.chosen.fidelity.sqnr_db, hand.chosen.fidelity.sqnr_db
    print(f"{which}: SQNR {ours:.2f} dB from the JPEG folder with --preprocess {spec}, "
          f"{theirs:.2f} dB from hand-prepared tensors")
    assert abs(ours - theirs) <= 1.0
    assert ours >= 15.0  # well above the warning threshold (and above --min-sqnr 15 below)
    assert not _untrained_warnings(raw) and not _untrained_warnings(hand)
    assert raw.chosen.fidelity.samples == PER_FOLDER

    # The spec travels in the signed manifest; inspect shows it.
    art = load_artifact(out, [load_public_key(keys[1])])
    assert art.manifest["preprocess"] == raw.preprocess == raw.to_dict()["preprocess"]
    assert art.manifest["preprocess"]["kind"] == "image" and art.manifest["preprocess"]["size"] == [32, 32]
    assert "preprocess" not in hand.manifest
    proc = run_cli("inspect", out, "--json")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["preprocess"] == art.manifest["preprocess"]
    text = run_cli("inspect", out / "model.tflite").stdout
    assert f"preprocess (manifest.json, signed with the model): {spec}" in text


def test_wrong_spec_warns_and_min_sqnr_refuses_naming_the_cause(photos, tmp_path):
    """IC ResNet-8 takes 0..255; calibrating it with [0, 1] pixels is the mistake of the issue."""
    root, _, _ = photos
    out = tmp_path / "artifact"
    proc = run_cli("convert", require_shared(IC), "--profile", PROFILE, "--measure", "host", "-o", out,
                   "--calibration", root / "cal", "--preprocess", "kind=image,size=32x32,scale=1/255",
                   "--min-sqnr", "15", "--json")
    line = assert_one_line_error(proc, 1)
    assert not out.exists()
    assert "SQNR" in line and "below --min-sqnr 15 dB" in line
    assert "likely cause: the input range" in line and "fix: --preprocess kind=image,size=32x32" in line
    report = json.loads(proc.stdout)
    assert report["written"] is False and report["artifact"] is None
    assert report["fidelity"]["sqnr_db"] < 15.0
    untrained = [w for w in report["warnings"] if "behaves untrained" in w]
    assert untrained and "class " in untrained[0] and "expect [0, 255]" in untrained[0]
    assert "with --preprocess kind=image,size=32x32 it behaves trained" in untrained[0]
    assert any(w.startswith("WARNING: SQNR") for w in report["warnings"])


def test_no_spec_warns_with_the_fix(photos, small_model, tmp_path):
    """The small model takes [0, 1]: photos of its own size, cast as is (0..255), make it warn."""
    _, cal, _ = photos
    same_size = tmp_path / "cal32"
    same_size.mkdir()
    for p in cal[:16]:
        Image.open(p).convert("RGB").resize((32, 32), Image.BILINEAR).save(same_size / f"{p.stem}.png")
    result = _convert(small_model, tmp_path / "artifact", calibration=str(same_size))
    assert result.written  # a warning, not a refusal
    untrained = _untrained_warnings(result)
    assert untrained, result.warnings
    assert "the inputs were pixels scaled to [0, 255] (pixels as is), RGB, as the data were given" in untrained[0]
    assert "expect [0, 1]" in untrained[0] and "--preprocess kind=image,size=32x32,scale=1/255" in untrained[0]
    assert result.to_dict()["warnings"] == result.warnings


def test_mixed_sizes_without_a_spec_point_to_it(photos, tmp_path):
    root, _, _ = photos
    out = tmp_path / "artifact"
    proc = run_cli("convert", require_shared(IC), "--profile", PROFILE, "--measure", "host", "-o", out,
                   "--calibration", root / "cal")
    line = assert_one_line_error(proc, 2)
    assert "give --preprocess kind=image,size=32x32" in line
    assert not out.exists()


def test_corrupt_jpeg_is_one_line_and_nothing_is_written(photos, small_model, tmp_path):
    _, cal, _ = photos
    folder = tmp_path / "cal"
    folder.mkdir()
    for p in cal[:4]:
        (folder / p.name).write_bytes(p.read_bytes())
    (folder / "broken.jpg").write_bytes(cal[4].read_bytes()[:300])
    out = tmp_path / "artifact"
    proc = run_cli("convert", small_model, "--profile", PROFILE, "--measure", "host", "-o", out,
                   "--calibration", folder, "--preprocess", "kind=image,size=32x32,scale=1/255")
    line = assert_one_line_error(proc, 2)
    assert f"calibration data {folder / 'broken.jpg'}: not a readable image" in line
    assert not out.exists()


@pytest.mark.parametrize("spec, message", [
    ("kind=image,size=32x32,colour=rgb", "--preprocess colour: unknown key for kind image"),
    ("kind=image,size=32x32,scale=0", "--preprocess scale: 0 would make every input the same"),
])
def test_bad_spec_is_one_line_before_loading(spec, message, tmp_path):
    out = tmp_path / "artifact"
    proc = run_cli("convert", tmp_path / "missing.h5", "--profile", PROFILE, "-o", out, "--calibration", tmp_path,
                   "--preprocess", spec)
    line = assert_one_line_error(proc, 2)
    assert line == f"lepton-edge convert: error: {message}" or message in line
    assert not out.exists()


def test_spec_the_model_cannot_take_and_wrong_sample_rate(photos, small_model, tmp_path):
    from lepton_edge.errors import BadInput
    from lepton_edge.preprocess.wav import write_wav

    root, _, _ = photos
    spec_file = tmp_path / "pre.toml"
    spec_file.write_text('[preprocess]\nkind = "image"\nsize = [96, 96]\nscale = 0.00392156862745098\n')
    with pytest.raises(BadInput, match=r"^bright\.keras: preprocess size: \[96, 96\], but the model's input is "
                                       r"1x32x32x3 \(size = \[32, 32\]\)$"):
        _convert(small_model, tmp_path / "a1", calibration=str(root / "cal"), preprocess=str(spec_file))
    with pytest.raises(BadInput, match=r"^bright\.keras: preprocess kind: audio"):
        _convert(small_model, tmp_path / "a2", calibration=str(root / "cal"), preprocess="kind=audio")
    assert not (tmp_path / "a1").exists() and not (tmp_path / "a2").exists()

    # A WAV at 8 kHz for MLPerf's KWS front end (16 kHz): one line naming the file, through the CLI.
    kws = require_shared(MLPERF / "kws" / "kws_ref_model_savedmodel")
    wavs = tmp_path / "wavs"
    wavs.mkdir()
    t = np.arange(16000) / 16000
    (wavs / "a.wav").write_bytes(write_wav(0.3 * np.sin(2 * np.pi * 440 * t), 16000))
    (wavs / "b.wav").write_bytes(write_wav(0.3 * np.sin(2 * np.pi * 440 * t[:8000]), 8000))
    out = tmp_path / "kws"
    proc = run_cli("convert", kws, "--profile", PROFILE, "--measure", "host", "-o", out, "--calibration", wavs,
                   "--preprocess", "kind=audio")
    line = assert_one_line_error(proc, 2)
    assert f"calibration data {wavs / 'b.wav'}: audio at 8000 Hz, the model's preprocessing takes 16000 Hz" in line
    assert not out.exists()
