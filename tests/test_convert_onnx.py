"""ONNX input: a small NCHW graph (Conv, Relu, GlobalAveragePool, Gemm) built here with onnx.helper,
converted to int8 with no network at all (in a network namespace when the machine allows one); the
artifact takes NHWC and agrees with onnxruntime running the original (SQNR at least 20 dB)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest

from conftest import REPO

pytestmark = pytest.mark.slow


def _tiny_onnx(path) -> None:
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    weights = {
        "W1": rng.normal(0, 0.3, (8, 3, 3, 3)), "B1": rng.normal(0, 0.1, 8),
        "W2": rng.normal(0, 0.2, (16, 8, 3, 3)), "B2": rng.normal(0, 0.1, 16),
        "Wg": rng.normal(0, 0.3, (5, 16)), "Bg": rng.normal(0, 0.1, 5),
    }
    nodes = [
        helper.make_node("Conv", ["input", "W1", "B1"], ["c1"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"]),
        helper.make_node("Conv", ["r1", "W2", "B2"], ["c2"], pads=[1, 1, 1, 1], strides=[2, 2]),
        helper.make_node("Relu", ["c2"], ["r2"]),
        helper.make_node("GlobalAveragePool", ["r2"], ["gap"]),
        helper.make_node("Flatten", ["gap"], ["flat"], axis=1),
        helper.make_node("Gemm", ["flat", "Wg", "Bg"], ["logits"], transB=1),
    ]
    graph = helper.make_graph(
        nodes, "tiny", [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, 16, 16])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 5])],
        [numpy_helper.from_array(v.astype(np.float32), k) for k, v in weights.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))


def _offline_prefix() -> list[str]:
    """``unshare -rn``: a new network namespace with no interfaces up, when the kernel lets us."""
    unshare = shutil.which("unshare")
    if unshare and subprocess.run([unshare, "-rn", "true"], capture_output=True).returncode == 0:
        return [unshare, "-rn"]
    return []


def test_onnx_int8_agrees_with_onnxruntime_offline(tmp_path):
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx2tf")
    model = tmp_path / "tiny.onnx"
    _tiny_onnx(model)
    rng = np.random.default_rng(1)
    np.save(tmp_path / "cal.npy", rng.uniform(0, 1, (64, 3, 16, 16)).astype(np.float32))  # NCHW, as ONNX takes it
    held_out = rng.uniform(0, 1, (64, 3, 16, 16)).astype(np.float32)
    np.savez(tmp_path / "eval.npz", x=held_out)
    out = tmp_path / "artifact"
    cmd = [*_offline_prefix(), sys.executable, "-m", "lepton_edge", "convert", str(model), "--profile", "rp2040",
           "-o", str(out), "--calibration", str(tmp_path / "cal.npy"), "--eval", str(tmp_path / "eval.npz"),
           "--json"]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report["written"] and report["layout"] == "NHWC" and report["source"]["layout"] == "NCHW"

    from lepton_edge.artifact import load_artifact
    from lepton_edge.runtime.litert import load_litert

    art = load_artifact(out, require_signature=False)
    assert art.manifest["layout"] == "NHWC" and art.manifest["inputs"][0]["shape"] == [1, 16, 16, 3]
    assert art.manifest["conversion"]["source_format"] == "onnx"
    session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    runner = load_litert(art.model_bytes)
    expected = np.concatenate([session.run(None, {"input": x[None]})[0] for x in held_out])
    got = np.concatenate([runner.run_float([x[None].transpose(0, 2, 3, 1)])[0] for x in held_out])
    sqnr = 10 * np.log10(np.sum(expected ** 2) / np.sum((expected - got) ** 2))
    assert sqnr >= 20.0, sqnr
    assert report["fidelity"]["reference"].startswith("ONNX model (onnxruntime)")
    assert report["fidelity"]["sqnr_db"] == pytest.approx(sqnr, abs=0.5)
