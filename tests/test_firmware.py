"""firmware/ sources: the C array compiles to the model's exact bytes at a 16-byte aligned address;
the config header compiles and its helpers quantize like the runtime; the op resolver lists exactly
the operators used, with the right template count."""

from __future__ import annotations

import re
import subprocess

import numpy as np
import pytest

from conftest import MLPERF_INT8, require_shared
from convert_helpers import compile_model_array, cxx
from lepton_edge.firmware import (
    TFLM_ADD_METHODS,
    IoTensor,
    model_config_header,
    op_resolver_header,
    used_operators,
    write_firmware,
)
from lepton_edge.runtime.base import TensorSpec, dequantize, quantize
from lepton_edge.runtime.op_support import TFLM_BUILTIN_OPS


def test_every_tflm_builtin_has_its_add_method():
    assert set(TFLM_ADD_METHODS) == set(TFLM_BUILTIN_OPS)
    assert TFLM_ADD_METHODS["CONV_2D"] == "AddConv2D"
    assert TFLM_ADD_METHODS["DEPTHWISE_CONV_2D"] == "AddDepthwiseConv2D"
    assert TFLM_ADD_METHODS["FULLY_CONNECTED"] == "AddFullyConnected"
    assert TFLM_ADD_METHODS["AVERAGE_POOL_2D"] == "AddAveragePool2D"


@pytest.mark.parametrize("model", sorted(MLPERF_INT8))
def test_c_array_compiles_to_the_model_bytes_aligned(model, tmp_path):
    data = require_shared(MLPERF_INT8[model]).read_bytes()
    io = [IoTensor("in", (1, 4), "int8", 0.5, -3)]
    write_firmware(tmp_path / "fw", data, name=model, arena_bytes=4096, inputs=io, outputs=io, layout="NC")
    dumped, misalignment = compile_model_array(tmp_path / "fw", tmp_path)
    assert dumped == data
    assert misalignment == 0
    assert "alignas(16) const unsigned char g_model[]" in (tmp_path / "fw" / "model_data.cc").read_text()


def test_op_resolver_lists_exactly_the_operators_used():
    data = require_shared(MLPERF_INT8["kws"]).read_bytes()
    ops = used_operators(data)
    assert ops[0] == "CONV_2D" and "DEPTHWISE_CONV_2D" in ops and "SOFTMAX" in ops
    text = op_resolver_header(data)
    calls = re.findall(r"resolver\.(Add\w+)\(\)", text)
    assert calls == [TFLM_ADD_METHODS[op] for op in ops]
    assert len(set(calls)) == len(calls)
    assert f"tflite::MicroMutableOpResolver<{len(ops)}>" in text
    assert f"kNumOperators = {len(ops)};" in text


def test_config_header_compiles_and_matches_runtime_quantization(tmp_path):
    spec_in = TensorSpec("input_1", (1, 49, 10, 1), "int8", 0.5847029089927673, 83)
    spec_out = TensorSpec("Identity", (1, 12), "int8", 0.00390625, -128)
    header = model_config_header("kws", 28368, [IoTensor(*spec_in.to_dict().values())],
                                 [IoTensor(*spec_out.to_dict().values())], "NHWC")
    (tmp_path / "model_config.h").write_text(header)
    values = np.array([-200.0, -50.3, -0.29, 0.0, 0.3, 12.7, 25.0, 999.0], dtype=np.float32)
    main = tmp_path / "main.cc"
    main.write_text('#include <cstdio>\n#include "model_config.h"\nint main() {\n'
                    '  static_assert(kTensorArenaSize % 16 == 0, "arena");\n'
                    '  std::printf("%d %d %d\\n", kTensorArenaSize, kInputElements, kOutput0Elements);\n'
                    + "".join(f'  std::printf("%d ", QuantizeInput({v!r}f));\n' for v in values)
                    + '  std::printf("\\n%.8f\\n", DequantizeOutput(static_cast<int8_t>(-1)));\n  return 0;\n}\n')
    exe = tmp_path / "cfg"
    subprocess.run([cxx(), "-std=c++11", "-I", str(tmp_path), str(main), "-o", str(exe)], check=True,
                   capture_output=True, text=True)
    lines = subprocess.run([str(exe)], check=True, capture_output=True, text=True).stdout.split("\n")
    assert lines[0].split() == ["28368", "490", "12"]
    assert [int(v) for v in lines[1].split()] == quantize(values, TensorSpec("x", (8,), "int8", spec_in.scale,
                                                                              spec_in.zero_point)).tolist()
    assert float(lines[2]) == pytest.approx(float(dequantize(np.int8(-1), spec_out)), abs=1e-7)


def test_arena_size_must_be_a_multiple_of_16():
    with pytest.raises(ValueError):
        model_config_header("m", 1000, [], [], "NC")
