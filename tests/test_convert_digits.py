"""A real labelled data set (scikit-learn's bundled 8x8 digits) and a small CNN trained here:
int8 loses at most 0.5 points; --prune 0.5 --train keeps at least 45 % of the large kernels' int8
weights at zero and loses at most 1 point; --prune-channels 0.5 --train makes the artifact and the arena
smaller and loses at most 2 points; --max-drop refuses an artifact past its loss and names the layers."""

from __future__ import annotations

import numpy as np
import pytest

from conftest import assert_one_line_error, run_cli

pytestmark = pytest.mark.slow
PROFILE = "stm32l4r5"


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    sklearn = pytest.importorskip("sklearn.datasets")
    from lepton_edge.convert.tfenv import keras_module, quiet

    keras = keras_module("keras3")
    d = sklearn.load_digits()
    x = (d.images.astype(np.float32) / 16.0)[..., None]
    y = d.target.astype(np.int64)
    order = np.random.default_rng(0).permutation(len(x))
    train, test = order[:1300], order[1300:]
    keras.utils.set_random_seed(0)
    inp = keras.Input((8, 8, 1))
    h = keras.layers.Conv2D(32, 3, padding="same", activation="relu")(inp)
    h = keras.layers.Conv2D(64, 3, padding="same", activation="relu")(h)
    h = keras.layers.MaxPooling2D(2)(h)
    h = keras.layers.Conv2D(64, 3, padding="same", activation="relu")(h)
    h = keras.layers.Flatten()(h)
    h = keras.layers.Dense(64, activation="relu")(h)
    model = keras.Model(inp, keras.layers.Dense(10, activation="softmax")(h))
    model.compile(optimizer=keras.optimizers.Adam(2e-3), loss="sparse_categorical_crossentropy")
    with quiet():
        model.fit(x[train], y[train], epochs=12, batch_size=32, verbose=0)
    root = tmp_path_factory.mktemp("digits")
    model.save(root / "digits.keras")
    np.save(root / "cal.npy", x[train][:300])
    np.savez(root / "eval.npz", x=x[test], y=y[test])
    np.savez(root / "train.npz", x=x[train], y=y[train])
    return root


def _convert(root, out, **kwargs):
    from lepton_edge.convert.options import ConvertOptions
    from lepton_edge.convert.pipeline import convert

    result = convert(ConvertOptions(model=str(root / "digits.keras"), profile=PROFILE, outdir=str(out),
                                    calibration=str(root / "cal.npy"), eval=str(root / "eval.npz"), **kwargs))
    assert result.written, result.failure
    return result


def _zero_fraction_of_large_kernels(model_bytes: bytes) -> float:
    from lepton_edge.tflite.reader import parse_model
    from lepton_edge.tflite.writer import unpack

    model, obj = parse_model(model_bytes), unpack(model_bytes)
    zeros = total = 0
    for op in model.main.operators:
        if op.opcode in ("CONV_2D", "FULLY_CONNECTED"):
            t = model.main.tensors[op.inputs[1]]
            if t.num_elements >= 1024:
                w = np.asarray(obj.buffers[t.buffer].data, dtype=np.uint8).view(np.int8)
                zeros += int(np.sum(w == 0))
                total += w.size
    return zeros / total


@pytest.fixture(scope="module")
def plain(digits, tmp_path_factory):
    return _convert(digits, tmp_path_factory.mktemp("o") / "int8")


def test_int8_loses_at_most_half_a_point(plain):
    fid = plain.chosen.fidelity
    assert fid.accuracy_float >= 95.0  # the model learned the task
    assert fid.accuracy_drop <= 0.5, fid.to_dict()
    assert plain.manifest["fidelity"]["accuracy_converted"] == fid.accuracy_converted


def test_prune_half_the_weights_with_training(digits, plain, tmp_path):
    result = _convert(digits, tmp_path / "pruned", prune=0.5, train=str(digits / "train.npz"), epochs=5)
    assert result.chosen.fidelity.accuracy_float - result.chosen.fidelity.accuracy_converted <= 1.0
    assert _zero_fraction_of_large_kernels(result.chosen.model_bytes) >= 0.45
    assert result.chosen.pruning[0]["fine_tuned_epochs"] == 5
    # The file does not shrink, but it compresses, and the report says so.
    assert len(result.chosen.model_bytes) == pytest.approx(len(plain.chosen.model_bytes), rel=0.01)
    assert result.chosen.compressed_bytes < 0.85 * plain.chosen.compressed_bytes
    assert any("does not shrink" in n for n in result.notes)
    # A low SQNR against the model before pruning is pruning's doing: the warning says so, not "check the data".
    sqnr_warnings = [w for w in result.warnings if "SQNR" in w]
    assert all("pruned" in w and "range and channel order" not in w for w in sqnr_warnings), sqnr_warnings


def test_prune_half_the_channels_with_training(digits, plain, tmp_path):
    result = _convert(digits, tmp_path / "channels", prune_channels=0.5, train=str(digits / "train.npz"), epochs=5)
    fid = result.chosen.fidelity
    assert fid.accuracy_float - fid.accuracy_converted <= 2.0, fid.to_dict()
    assert len(result.chosen.model_bytes) < 0.5 * len(plain.chosen.model_bytes)
    assert result.manifest["arena"]["total_bytes"] < plain.manifest["arena"]["total_bytes"]
    assert result.manifest["conversion"]["prune_channels"] == 0.5
    pruned = {row["layer"]: (row["channels"], row["kept"]) for row in result.chosen.pruning[0]["layers"]}
    assert len(pruned) == 4 and all(kept == ch // 2 for ch, kept in pruned.values())


def test_max_drop_refuses_and_names_the_layers(digits, tmp_path):
    out = tmp_path / "refused"
    proc = run_cli("convert", digits / "digits.keras", "--profile", PROFILE, "-o", out,
                   "--calibration", digits / "cal.npy", "--eval", digits / "eval.npz",
                   "--prune-channels", "0.5", "--max-drop", "1")
    line = assert_one_line_error(proc, 1)
    assert "more than --max-drop 1" in line
    assert "one shot (no --train)" in proc.stdout
    assert "layers that lose the most" in proc.stdout
    assert not out.exists()


def test_the_low_sqnr_hint_blames_pruning_only_when_the_model_was_pruned():
    from lepton_edge.convert.options import Settings
    from lepton_edge.convert.pipeline import _low_sqnr_hint

    assert "pruned" in _low_sqnr_hint(Settings("int8", prune=0.5))
    assert "pruned" in _low_sqnr_hint(Settings("int8", prune_channels=0.25))
    plain = _low_sqnr_hint(Settings("int8"))
    assert "pruned" not in plain and "range and channel order" in plain
