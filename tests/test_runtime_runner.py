"""The Runner over real interpreters: artifacts' arenas, the RAM budget, float helpers, input checks."""

from __future__ import annotations

import base64
import hashlib

import numpy as np
import pytest

from lepton_edge.agent.codec import split_tensor_bytes
from lepton_edge.artifact import load_artifact, load_public_key
from lepton_edge.errors import BadInput, CheckFailed
from lepton_edge.profiles import load_profile
from lepton_edge.runtime.base import dequantize, quantize
from lepton_edge.runtime.factory import artifact_arena_bytes, choose_backend, open_artifact_runner


def tiny_profile(tmp_path, ram_bytes: int):
    text = load_profile("stm32l4r5").path.read_text()
    path = tmp_path / "tiny-board.toml"
    path.write_text(text.replace('name = "stm32l4r5"', 'name = "tiny-board"')
                    .replace("ram_bytes = 655360", f"ram_bytes = {ram_bytes}"))
    return load_profile(str(path))


def load_pub(signing):
    return load_public_key(signing[1])


@pytest.mark.parametrize("backend", ["litert", "tflm"])
@pytest.mark.parametrize("model", ["kws", "ic", "ad"])
def test_artifact_runner_matches_the_self_test_digest(make_artifact, signing, model, backend):
    art = load_artifact(make_artifact(model, profile="stm32l4r5"), [load_pub(signing)])
    runner = open_artifact_runner(art.manifest, art.model_bytes, backend=backend,
                                  profile=load_profile("stm32l4r5"))
    assert runner.backend == backend
    if backend == "tflm":
        assert runner.arena_bytes == art.manifest["arena"]["total_bytes"] == artifact_arena_bytes(art.manifest)
    raw = base64.b64decode(art.manifest["self_test"]["input_b64"])
    outputs, latency_ms = runner.run_timed(split_tensor_bytes(raw, runner.inputs))
    digest = hashlib.sha256(b"".join(o.tobytes() for o in outputs)).hexdigest()
    assert digest == art.manifest["self_test"]["output_sha256"][backend]
    assert latency_ms > 0 and runner.stats.invocations == 1


def test_tflm_arena_over_the_ram_share_is_refused_before_loading(make_artifact, signing, tmp_path):
    art = load_artifact(make_artifact("kws", profile="stm32l4r5"), [load_pub(signing)])
    arena = art.manifest["arena"]["total_bytes"]
    small = tiny_profile(tmp_path, ram_bytes=int(arena / 0.75) - 64)  # ram_share 0.75: budget just under
    assert small.ram_budget_bytes < arena
    with pytest.raises(CheckFailed, match="exceeds the device's RAM budget"):
        open_artifact_runner(art.manifest, art.model_bytes, backend="tflm", profile=small)
    roomy = tiny_profile(tmp_path, ram_bytes=int(arena / 0.75) + 64)
    assert open_artifact_runner(art.manifest, art.model_bytes, backend="tflm", profile=roomy).arena_bytes == arena


def test_auto_follows_the_profile_runtime():
    assert choose_backend("auto", "tflm") == "tflm"
    assert choose_backend("auto", "litert") == "litert"
    with pytest.raises(BadInput, match="unknown backend"):
        choose_backend("coreml")


def test_runner_checks_inputs_and_speaks_float(make_artifact, signing):
    art = load_artifact(make_artifact("kws", profile="stm32l4r5"), [load_pub(signing)])
    runner = open_artifact_runner(art.manifest, art.model_bytes, backend="litert")
    spec = runner.inputs[0]
    with pytest.raises(BadInput, match="wants int8"):
        runner.run([np.zeros(spec.shape, np.float32)])
    with pytest.raises(BadInput, match="wants int8"):
        runner.run([np.zeros(spec.num_elements - 1, np.int8)])
    with pytest.raises(BadInput, match="takes 1 input"):
        runner.run([])
    flat = np.zeros(spec.num_elements, np.int8)  # any shape with the right size is accepted
    assert runner.run([flat])[0].shape == runner.outputs[0].shape

    values = np.linspace(-20, 20, spec.num_elements, dtype=np.float32).reshape(spec.shape)
    q = quantize(values, spec)
    assert q.dtype == np.int8
    assert np.max(np.abs(dequantize(q, spec) - values)) <= spec.scale / 2 + 1e-6
    floats = runner.run_float([values])[0]
    assert floats.dtype == np.float32
    np.testing.assert_allclose(floats, dequantize(runner.run([q])[0], runner.outputs[0]))
    assert np.isclose(floats.sum(), 1.0, atol=0.05)  # the KWS model ends in a softmax
    with pytest.raises(BadInput, match="wants 490 values"):
        quantize(np.zeros(3), spec)
