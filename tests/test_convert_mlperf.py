"""The MLPerf Tiny float models (Keras 2 era .h5, SavedModel) converted to int8 with calibration data
resembling real inputs: at most 1.05x the benchmark's own int8 model, and on the same held-out inputs
at least as faithful to the float model (SQNR within 1 dB, top-1 agreement within 2 points)."""

from __future__ import annotations

import numpy as np
import pytest

from conftest import MLPERF, SHARED, require_shared
from convert_helpers import compile_model_array, replay_self_test

pytestmark = pytest.mark.slow

CASES = {
    "kws": (MLPERF / "kws" / "kws_ref_model_savedmodel", MLPERF / "kws" / "kws_ref_model_int8.tflite"),
    "ic": (MLPERF / "ic" / "pretrainedResnet.h5", MLPERF / "ic" / "pretrainedResnet_int8.tflite"),
    "ad": (MLPERF / "ad" / "ad01.h5", MLPERF / "ad" / "ad01_int8.tflite"),
}


def _data(name: str):
    from lepton_edge.convert.tfenv import tensorflow

    tensorflow()
    import mlperf_inputs as mi

    if name == "kws":
        return mi.kws_features(160, 1), mi.kws_features(160, 2)
    if name == "ad":
        return mi.ad_features(160, 1), mi.ad_features(160, 2)
    photos = mi.ic_images(require_shared(SHARED / "data" / "photos32.npz"))
    return photos[:128], photos[128:]


@pytest.mark.parametrize("name", sorted(CASES))
def test_int8_matches_the_benchmark_reference(name, tmp_path):
    from lepton_edge.artifact import generate_keypair, load_artifact, load_public_key
    from lepton_edge.convert.calibration import load_dataset
    from lepton_edge.convert.fidelity import compare, run_converted
    from lepton_edge.convert.load import float_predictor, load_source
    from lepton_edge.convert.options import ConvertOptions
    from lepton_edge.convert.pipeline import convert

    source, reference = (require_shared(p) for p in CASES[name])
    cal, ev = _data(name)
    np.save(tmp_path / "cal.npy", cal)
    np.savez(tmp_path / "eval.npz", x=ev)
    priv, pub = generate_keypair(tmp_path / "keys")
    out = tmp_path / "artifact"
    result = convert(ConvertOptions(model=str(source), profile="stm32h743", outdir=str(out),
                                    calibration=str(tmp_path / "cal.npy"), eval=str(tmp_path / "eval.npz"),
                                    sign_key=str(priv)))
    assert result.written, result.failure
    ours = result.chosen

    ref_bytes = reference.read_bytes()
    with load_source(source) as src:
        data = load_dataset(str(tmp_path / "eval.npz"), src.inputs, what="eval")
        ref = compare(float_predictor(src)(data.xs), run_converted(ref_bytes, data), data, reference_label="float")

    assert len(ours.model_bytes) <= 1.05 * len(ref_bytes), (len(ours.model_bytes), len(ref_bytes))
    assert ours.fidelity.sqnr_db >= ref.sqnr_db - 1.0, (ours.fidelity.sqnr_db, ref.sqnr_db)
    assert ours.fidelity.top1_agreement >= ref.top1_agreement - 2.0, (ours.fidelity.top1_agreement,
                                                                      ref.top1_agreement)

    # The artifact: signed, the model's hash checks, the self-test replays on both runtimes,
    # and the firmware's C array is the model, 16-byte aligned.
    art = load_artifact(out, [load_public_key(pub)])
    m = art.manifest
    assert m["runtime"] == "tflm" and m["inputs"][0]["dtype"] == "int8" and m["outputs"][0]["dtype"] == "int8"
    # measured on the target (qemu-m7 plays stm32h743, when its build is cached) no margin is added
    margin = 0 if m["arena"]["measured_on"].startswith("cortex-m7") else 4096
    assert m["arena"]["margin_bytes"] == margin
    assert m["arena"]["total_bytes"] == -(-(m["arena"]["recommended_bytes"] + margin) // 16) * 16
    assert m["arena"]["measured"]["recommended_bytes"].startswith("measured")
    assert m["fidelity"]["samples"] == len(ev)
    assert set(m["self_test"]["output_sha256"]) == {"tflm", "litert"}
    assert replay_self_test(m, art.model_bytes) == m["self_test"]["output_sha256"]
    config = (out / "firmware" / "model_config.h").read_text()
    assert f"kTensorArenaSize = {m['arena']['total_bytes']};" in config
    dumped, misalignment = compile_model_array(out / "firmware", tmp_path)
    assert dumped == art.model_bytes and misalignment == 0
