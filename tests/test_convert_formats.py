"""Source formats and modes: a Keras 2 .h5 Keras 3 cannot read (tf_keras fallback), float16 and dynamic
range for LiteRT boards (self-test on LiteRT only), --io float, --auto-fit stepping up to int8, channel
pruning of a Keras-made SavedModel (and why one Keras did not make cannot be pruned), synthetic calibration
recorded loudly."""

from __future__ import annotations

import numpy as np
import pytest

from conftest import MLPERF, require_shared
from convert_helpers import replay_self_test

pytestmark = pytest.mark.slow


def _convert(**kwargs):
    from lepton_edge.convert.options import ConvertOptions
    from lepton_edge.convert.pipeline import convert

    return convert(ConvertOptions(**kwargs))


@pytest.fixture(scope="module")
def tf_keras_h5(tmp_path_factory):
    """A depthwise model saved by tf_keras: Keras 3 refuses its DepthwiseConv2D config ('groups')."""
    from lepton_edge.convert.tfenv import keras_module, quiet

    k = keras_module("tf_keras")
    k.utils.set_random_seed(0)
    inp = k.Input((16, 16, 3))
    x = k.layers.Conv2D(8, 3, padding="same", activation="relu")(inp)
    x = k.layers.DepthwiseConv2D(3, padding="same")(x)
    x = k.layers.BatchNormalization()(x)
    x = k.layers.ReLU()(x)
    x = k.layers.Conv2D(16, 1)(x)
    x = k.layers.GlobalAveragePooling2D()(x)
    model = k.Model(inp, k.layers.Dense(4, activation="softmax")(x))
    root = tmp_path_factory.mktemp("tfk")
    with quiet():
        model.save(root / "dw.h5")
    rng = np.random.default_rng(0)
    np.save(root / "cal.npy", rng.uniform(0, 1, (32, 16, 16, 3)).astype(np.float32))
    np.savez(root / "eval.npz", x=rng.uniform(0, 1, (32, 16, 16, 3)).astype(np.float32))
    return root


def test_keras2_h5_falls_back_to_tf_keras(tf_keras_h5, tmp_path):
    from lepton_edge.convert.load import load_source

    with load_source(tf_keras_h5 / "dw.h5") as src:
        assert src.keras_flavor == "tf_keras"
    result = _convert(model=str(tf_keras_h5 / "dw.h5"), profile="esp32-s3", outdir=str(tmp_path / "a"),
                      calibration=str(tf_keras_h5 / "cal.npy"), eval=str(tf_keras_h5 / "eval.npz"),
                      prune_channels=0.5)
    assert result.written and any("tf_keras" in n for n in result.notes)
    assert result.chosen.fidelity.top1_agreement is not None
    assert {r["layer"] for r in result.chosen.pruning[0]["layers"]} >= {"conv2d", "conv2d_1"}


@pytest.mark.parametrize("mode", ["float16", "dynamic"])
def test_litert_only_modes_on_a_litert_board(tf_keras_h5, tmp_path, mode):
    from lepton_edge.artifact import load_artifact

    out = tmp_path / mode
    result = _convert(model=str(tf_keras_h5 / "dw.h5"), profile="raspberry-pi-4", outdir=str(out), quantize=mode,
                      eval=str(tf_keras_h5 / "eval.npz"))
    assert result.written
    art = load_artifact(out, require_signature=False)
    m = art.manifest
    assert m["conversion"]["quantize"] == mode and m["conversion"]["io"] == "float"
    assert set(m["self_test"]["output_sha256"]) == {"litert"}
    assert replay_self_test(m, art.model_bytes) == m["self_test"]["output_sha256"]
    assert result.chosen.fit.verdict.ram_estimated
    assert result.chosen.fidelity.sqnr_db > 25


def test_io_float_keeps_float_edges_and_synthetic_calibration_warns(tf_keras_h5, tmp_path):
    result = _convert(model=str(tf_keras_h5 / "dw.h5"), profile="stm32h743", outdir=str(tmp_path / "f"),
                      calibration="synthetic", io="float")
    m = result.manifest
    assert m["inputs"][0]["dtype"] == "float32" and m["outputs"][0]["dtype"] == "float32"
    assert m["conversion"]["calibration_synthetic"] is True and "NOT real" in m["conversion"]["calibration"]
    assert any("SYNTHETIC" in w for w in result.warnings)
    assert set(m["self_test"]["output_sha256"]) == {"tflm", "litert"}


def test_auto_fit_steps_from_float_to_int8(tmp_path):
    source = require_shared(MLPERF / "ad" / "ad01.h5")
    rng = np.random.default_rng(0)
    np.save(tmp_path / "cal.npy", rng.normal(-40, 10, (64, 640)).astype(np.float32))
    result = _convert(model=str(source), profile="arduino-nano-33-ble", outdir=str(tmp_path / "ad"),
                      quantize="none", auto_fit=True, calibration=str(tmp_path / "cal.npy"))
    steps = [a.settings.label for a in result.attempts]
    assert steps == ["none", "int8"]
    assert not result.attempts[0].fit.fits and "flash" in result.attempts[0].fit.verdict.reasons[0]
    assert result.written and result.manifest["conversion"]["quantize"] == "int8"
    rows = result.to_dict()["steps"]
    assert all(r["size_bytes"] and r["arena_total_bytes"] and r["fidelity"] for r in rows)


def test_keras_savedmodel_can_lose_channels(tmp_path):
    source = require_shared(MLPERF / "kws" / "kws_ref_model_savedmodel")
    rng = np.random.default_rng(0)
    np.save(tmp_path / "cal.npy", rng.normal(0, 5, (32, 49, 10, 1)).astype(np.float32))
    result = _convert(model=str(source), profile="stm32h743", outdir=str(tmp_path / "kws"),
                      calibration=str(tmp_path / "cal.npy"), prune_channels=0.25)
    assert result.written
    assert len(result.chosen.pruning[0]["layers"]) == 5
    assert len(result.chosen.model_bytes) < 40_000  # the unpruned int8 model is about 48 KB


def test_pruning_a_savedmodel_keras_did_not_make_says_why(tmp_path):
    import tensorflow as tf

    from lepton_edge.errors import BadInput

    class Double(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([1, 4], tf.float32)])
        def __call__(self, x):
            return {"y": x * 2.0}

    model = Double()
    tf.saved_model.save(model, str(tmp_path / "sm"), signatures=model.__call__)
    with pytest.raises(BadInput, match=r"pruning needs a Keras model .*; this SavedModel was not saved by Keras"):
        _convert(model=str(tmp_path / "sm"), profile="raspberry-pi-4", outdir=str(tmp_path / "out"),
                 quantize="none", io="float", prune_channels=0.25)
