"""``lepton-edge inspect``: operator counts, MACs and quantization checked against LiteRT; bad inputs."""

from __future__ import annotations

import collections
import json
import math
from pathlib import Path

import flatbuffers
import pytest

from conftest import MLPERF_FLOAT, MLPERF_INT8, assert_one_line_error, require_shared, run_cli
from lepton_edge.inspection import inspect_model
from lepton_edge.runtime.op_support import TFLM_BUILTIN_OPS, unsupported_ops, unsupported_types
from lepton_edge.tflite.macs import op_macs
from lepton_edge.tflite.reader import read_model_file
from lepton_edge.tflite.vendor import schema_py_generated as fb

Interpreter = pytest.importorskip("ai_edge_litert.interpreter").Interpreter


def _inspect_json(*args: str) -> dict:
    proc = run_cli("inspect", *args, "--json")
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def test_json_matches_litert(mlperf_int8: Path) -> None:
    report = _inspect_json(str(mlperf_int8))
    interp = Interpreter(model_path=str(mlperf_int8))
    litert_ops = collections.Counter(op["op_name"] for op in interp._get_ops_details())

    assert {k["opcode"]: k["count"] for k in report["ops_by_kind"]} == dict(litert_ops)
    assert report["operator_count"] == sum(litert_ops.values())
    assert [op["opcode"] for op in report["operators"]] == [op["op_name"] for op in interp._get_ops_details()]
    assert report["tensor_count"] == len(interp.get_tensor_details())
    assert report["file_size"] == mlperf_int8.stat().st_size
    assert report["total_macs"] == sum(k["macs"] for k in report["ops_by_kind"]) > 0
    assert 0 < report["weight_bytes"] < report["file_size"]
    assert report["activation_bytes"] > 0
    assert report["profile"] is None

    for ours, theirs in ((report["inputs"], interp.get_input_details()),
                         (report["outputs"], interp.get_output_details())):
        assert len(ours) == len(theirs)
        for o, t in zip(ours, theirs, strict=False):
            scale, zero_point = t["quantization"]
            assert o["name"] == t["name"]
            assert o["shape"] == t["shape"].tolist()
            assert o["dtype"] == "int8"
            assert o["scale"] == pytest.approx(scale, rel=1e-7)
            assert o["zero_point"] == zero_point


def test_kws_first_conv_macs() -> None:
    path = require_shared(MLPERF_INT8["kws"])
    interp = Interpreter(model_path=str(path))
    shapes = {t["index"]: t["shape"].tolist() for t in interp.get_tensor_details()}
    first = interp._get_ops_details()[0]
    assert first["op_name"] == "CONV_2D"
    out_shape = shapes[int(first["outputs"][0])]
    _, kh, kw, in_c = shapes[int(first["inputs"][1])]  # filter [out_c, kh, kw, in_c]
    expected = math.prod(out_shape) * kh * kw * in_c
    assert expected == 25 * 5 * 64 * 10 * 4 * 1 == 320_000

    model = read_model_file(path)
    assert op_macs(model, model.main.operators[0]) == expected
    report = _inspect_json(str(path))
    assert report["operators"][0]["macs"] == expected
    # Depthwise: output elements x kh x kw (3x3 filters on a 25x5x64 map in DS-CNN).
    dw = report["operators"][1]
    assert dw["opcode"] == "DEPTHWISE_CONV_2D"
    assert dw["macs"] == 25 * 5 * 64 * 3 * 3
    # The classifier: 64 features to 12 classes.
    fc = [op for op in report["operators"] if op["opcode"] == "FULLY_CONNECTED"]
    assert [op["macs"] for op in fc] == [64 * 12]


def test_profile_estimate_and_support(mlperf_int8: Path) -> None:
    report = _inspect_json(str(mlperf_int8), "--profile", "stm32l4r5")
    prof = report["profile"]
    assert prof["profile"] == "stm32l4r5"
    assert prof["unsupported_ops"] == []
    assert prof["unsupported_types"] == []
    assert prof["supported"] is True
    assert prof["latency_ms_estimate"] > 0
    assert prof["latency_is_estimate"] is True


def test_human_output_labels_estimate() -> None:
    path = require_shared(MLPERF_INT8["kws"])
    proc = run_cli("inspect", str(path), "--profile", "stm32l4r5")
    assert proc.returncode == 0, proc.stderr
    for word in ("CONV_2D", "DEPTHWISE_CONV_2D", "input_1", "stm32l4r5", "estimate", "MACs"):
        assert word in proc.stdout


def _edit_opcode(src: Path, dst: Path, opcode_name: str, new_code: int, custom: bytes | None = None) -> Path:
    """Copy ``src`` with the operator code ``opcode_name`` replaced by builtin ``new_code``."""
    model = fb.ModelT.InitFromPackedBuf(src.read_bytes(), 0)
    names = {v: k for k, v in vars(fb.BuiltinOperator).items() if isinstance(v, int)}
    hit = [oc for oc in model.operatorCodes if names[max(oc.builtinCode, oc.deprecatedBuiltinCode)] == opcode_name]
    assert hit, opcode_name
    hit[0].builtinCode = new_code
    hit[0].deprecatedBuiltinCode = min(new_code, 127)
    hit[0].customCode = custom
    builder = flatbuffers.Builder(1024)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    dst.write_bytes(bytes(builder.Output()))
    return dst


def test_unsupported_and_custom_ops_listed(tmp_path: Path) -> None:
    src = require_shared(MLPERF_INT8["kws"])
    lrn = fb.BuiltinOperator.LOCAL_RESPONSE_NORMALIZATION
    assert "LOCAL_RESPONSE_NORMALIZATION" not in TFLM_BUILTIN_OPS
    edited = _edit_opcode(src, tmp_path / "lrn.tflite", "AVERAGE_POOL_2D", lrn)
    prof = _inspect_json(str(edited), "--profile", "stm32l4r5")["profile"]
    assert prof["unsupported_ops"] == ["LOCAL_RESPONSE_NORMALIZATION"]
    assert prof["supported"] is False

    custom = _edit_opcode(src, tmp_path / "custom.tflite", "SOFTMAX", fb.BuiltinOperator.CUSTOM, b"MySoftmax")
    report = _inspect_json(str(custom), "--profile", "stm32l4r5")
    assert "CUSTOM:MySoftmax" in {k["opcode"] for k in report["ops_by_kind"]}
    assert report["profile"]["unsupported_ops"] == ["CUSTOM:MySoftmax"]

    proc = run_cli("inspect", str(custom), "--profile", "stm32l4r5")
    assert proc.returncode == 0 and "CUSTOM:MySoftmax" in proc.stdout


def test_op_support_rules() -> None:
    ops = ["CONV_2D", "LOCAL_RESPONSE_NORMALIZATION", "CUSTOM:X", "CONV_2D", "CUSTOM:X"]
    assert unsupported_ops(ops, "tflm") == ["LOCAL_RESPONSE_NORMALIZATION", "CUSTOM:X"]
    assert unsupported_ops(ops, "litert") == ["CUSTOM:X"]
    assert unsupported_types(["int8", "float32", "int32", "float32"], ["int8", "int32"]) == ["float32"]
    for name in TFLM_BUILTIN_OPS:  # every name is a real schema builtin
        assert isinstance(getattr(fb.BuiltinOperator, name), int), name


def test_profile_types_checked() -> None:
    from dataclasses import dataclass

    @dataclass
    class Int8Only:
        name: str = "int8-only"
        runtime: str = "tflm"
        kernel_library: str = "reference"
        tensor_types: tuple = ("int8",)
        clock_mhz: float = 100.0
        macs_per_cycle: float = 0.5

    model = read_model_file(require_shared(MLPERF_INT8["kws"]))
    report = inspect_model(model, profile=Int8Only())
    assert report.profile.unsupported_types == []  # int32 biases are kernel parameters, not data
    assert report.profile.latency_ms_estimate == pytest.approx(report.total_macs / (100e6 * 0.5) * 1e3)

    float_model = read_model_file(require_shared(MLPERF_FLOAT["kws"]))
    assert inspect_model(float_model, profile=Int8Only()).profile.unsupported_types == ["float32"]


@pytest.mark.parametrize("case", ["text", "truncated", "empty", "directory", "missing", "profile"])
def test_bad_input_one_line(case: str, tmp_path: Path) -> None:
    real = require_shared(MLPERF_INT8["kws"])
    args: list[str]
    if case == "text":
        (tmp_path / "notes.tflite").write_text("this is not a model\n" * 20)
        args = [str(tmp_path / "notes.tflite")]
    elif case == "truncated":
        data = real.read_bytes()
        (tmp_path / "half.tflite").write_bytes(data[: len(data) // 2])
        args = [str(tmp_path / "half.tflite")]
    elif case == "empty":
        (tmp_path / "empty.tflite").write_bytes(b"")
        args = [str(tmp_path / "empty.tflite")]
    elif case == "directory":
        args = [str(tmp_path)]
    elif case == "missing":
        args = [str(tmp_path / "nope.tflite")]
    else:
        args = [str(real), "--profile", "no-such-board"]
    for extra in ([], ["--json"]):
        proc = run_cli("inspect", *args, *extra)
        line = assert_one_line_error(proc, 2)
        assert line.startswith("lepton-edge inspect: error:"), line
        assert proc.stdout == ""
