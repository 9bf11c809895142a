"""`lepton-edge convert` and `lepton-edge keys` as a user runs them: bad input exits 2 with one line and
leaves no output directory; a model too big for a profile's flash exits 1 naming flash; float .tflite
packaging for LiteRT boards; signing keys."""

from __future__ import annotations

import json
import os
import stat

import numpy as np
import pytest

from conftest import MLPERF, MLPERF_FLOAT, assert_one_line_error, require_shared, run_cli
from convert_helpers import replay_self_test
from lepton_edge.artifact import load_artifact, load_public_key

IC_H5 = MLPERF / "ic" / "pretrainedResnet.h5"


@pytest.fixture
def data(tmp_path):
    np.save(tmp_path / "wrong_shape.npy", np.zeros((4, 28, 28), np.float32))
    np.save(tmp_path / "strings.npy", np.array(["a", "b"]))
    np.save(tmp_path / "ic_cal.npy", np.zeros((4, 32, 32, 3), np.uint8))
    np.savez(tmp_path / "nolabels.npz", x=np.zeros((4, 32, 32, 3), np.float32))
    (tmp_path / "junk.h5").write_bytes(b"not an hdf5 file")
    (tmp_path / "junk.tflite").write_bytes(b"\x00" * 64)
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("keep me")
    return tmp_path


# Each case: arguments after MODEL (with {d} the data directory), and a fragment of the message.
FAST_CASES = {
    "int8 from a .tflite": ("{float_ic}", "--calibration {d}/ic_cal.npy", "cannot be quantized to int8"),
    "int8 without calibration": ("{ic_h5}", "", "needs --calibration"),
    "float16 on tflm": ("{ic_h5}", "--quantize float16", "runs TFLite Micro"),
    "dynamic on tflm": ("{ic_h5}", "--quantize dynamic", "runs TFLite Micro"),
    "corrupt .h5": ("{d}/junk.h5", "--calibration synthetic", "not an HDF5 file"),
    "corrupt .tflite": ("{d}/junk.tflite", "--quantize none", "not a TFLite model"),
    "missing model": ("{d}/nothere.keras", "--quantize none", "no such file"),
    "unknown format": ("{d}/wrong_shape.npy", "--quantize none", "unknown model format"),
    "unknown profile": ("{ic_h5}", "--calibration synthetic --profile nosuch", "unknown profile"),
    "missing calibration": ("{ic_h5}", "--calibration {d}/missing.npy", "no such file"),
    "prune out of range": ("{ic_h5}", "--calibration synthetic --prune 1.5", "--prune 1.5"),
    "train without pruning": ("{ic_h5}", "--calibration synthetic --train {d}/nolabels.npz", "--train"),
    "missing signing key": ("{ic_h5}", "--calibration synthetic --sign-key {d}/nokey", "no such signing key"),
}
SLOW_CASES = {  # these load the model (TensorFlow) before they can tell
    "calibration shape": ("{ic_h5}", "--calibration {d}/wrong_shape.npy", "shape [4, 28, 28] float32 does not match"),
    "calibration dtype": ("{ic_h5}", "--calibration {d}/strings.npy", "dtype <U1"),
    "train data without labels": ("{ic_h5}", "--calibration {d}/ic_cal.npy --prune 0.2 --train {d}/nolabels.npz",
                                  "needs labels"),
}


def _run_bad(case, data):
    model, extra, fragment = case
    fmt = {"d": data, "float_ic": MLPERF_FLOAT["ic"], "ic_h5": IC_H5}
    out = data / "out"
    args = [model.format(**fmt), *extra.format(**fmt).split()]
    if "--profile" not in args:
        args += ["--profile", "stm32h743"]
    proc = run_cli("convert", *args, "-o", out)
    line = assert_one_line_error(proc, 2)
    assert fragment in line
    assert line.startswith("lepton-edge convert: error:")
    assert not out.exists()
    assert not [p for p in data.iterdir() if p.name.startswith(".out.")], "staging directory left behind"


@pytest.mark.parametrize("case", sorted(FAST_CASES))
def test_bad_input_exits_2_with_one_line_and_no_output(case, data):
    require_shared(IC_H5)
    _run_bad(FAST_CASES[case], data)


@pytest.mark.slow
@pytest.mark.parametrize("case", sorted(SLOW_CASES))
def test_bad_data_exits_2_after_loading_the_model(case, data):
    require_shared(IC_H5)
    _run_bad(SLOW_CASES[case], data)


def test_non_empty_outdir_is_refused_without_force(data):
    src = require_shared(MLPERF_FLOAT["kws"])
    proc = run_cli("convert", src, "--profile", "raspberry-pi-4", "--quantize", "none", "-o", data / "full")
    assert "not empty" in assert_one_line_error(proc, 2)
    assert (data / "full" / "x").read_text() == "keep me"


def test_model_too_big_for_flash_exits_1_naming_flash(tmp_path):
    src = require_shared(MLPERF_FLOAT["ad"])  # 1 MB of float weights; the Nano 33 BLE allows 614 KB
    out = tmp_path / "out"
    proc = run_cli("convert", src, "--profile", "arduino-nano-33-ble", "--quantize", "none", "-o", out)
    line = assert_one_line_error(proc, 1)
    assert "flash: model is 1067968 bytes, budget 629145" in line
    assert "does not fit arduino-nano-33-ble" in line
    assert not out.exists()
    assert "NO" in proc.stdout  # the step table still shows the figures


def test_tflm_profile_refuses_a_model_tflite_micro_cannot_run(tmp_path):
    src = require_shared(MLPERF_FLOAT["kws"])  # MLPerf's "float" KWS is a hybrid model
    proc = run_cli("convert", src, "--profile", "stm32h743", "--quantize", "none", "-o", tmp_path / "out")
    line = assert_one_line_error(proc, 1)
    assert "TFLite Micro cannot run this model" in line and "Hybrid" in line
    assert not (tmp_path / "out").exists()


def test_float_tflite_packaged_for_a_litert_board_signed(tmp_path):
    src = require_shared(MLPERF_FLOAT["kws"])
    keys = tmp_path / "keys"
    proc = run_cli("keys", "generate", keys)
    assert proc.returncode == 0, proc.stderr
    assert stat.S_IMODE(os.stat(keys / "signing.key").st_mode) == 0o600
    assert_one_line_error(run_cli("keys", "generate", keys), 2)  # never overwrites a key pair

    out = tmp_path / "art"
    proc = run_cli("convert", src, "--profile", "raspberry-pi-4", "--quantize", "none", "-o", out,
                   "--sign-key", keys / "signing.key", "--name", "kws-float", "--version", "7", "--json")
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""
    report = json.loads(proc.stdout)
    assert report["written"] and report["fits"]
    art = load_artifact(out, [load_public_key(keys / "signing.pub")])
    m = art.manifest
    assert (m["name"], m["version"], m["runtime"], m["layout"]) == ("kws-float", 7, "litert", "NHWC")
    assert m["model"]["sha256"] == report["model"]["sha256"]
    assert m["conversion"]["quantize"] == "none" and m["conversion"]["source_format"] == "tflite"
    assert m["arena"]["measured"]["recommended_bytes"].startswith("estimated")  # TFLite Micro cannot run it
    assert set(m["self_test"]["output_sha256"]) == {"litert"}
    assert replay_self_test(m, art.model_bytes) == m["self_test"]["output_sha256"]
    assert m["fidelity"]["exact"] is True
    assert sorted(p.name for p in (out / "firmware").iterdir()) == ["model_config.h", "model_data.cc",
                                                                  "model_data.h", "op_resolver.h"]
