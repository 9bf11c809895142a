"""One operator list: the firmware's core/ops.h X-macro is what `tflm` profiles run, in
`inspect --profile` and in convert's fit check alike."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import flatbuffers
import pytest

import firmware_bridge
from conftest import MLPERF_INT8, require_shared, run_cli
from lepton_edge.firmware import TFLM_ADD_METHODS
from lepton_edge.runtime.op_support import (
    TFLM_BUILTIN_OPS,
    firmware_ops,
    is_supported,
    parse_ops_header,
    unsupported_ops,
    unsupported_reason,
)
from lepton_edge.tflite.vendor import schema_py_generated as fb

OPS_H = Path(firmware_bridge.__file__).parent / "firmware" / "core" / "ops.h"


def test_parsed_list_is_the_firmwares_x_macro(tmp_path: Path) -> None:
    """The C++ preprocessor's expansion of LEPTON_OPS(X) is the list Python reads, in order."""
    cxx = shutil.which("g++") or shutil.which("c++")
    if cxx is None:
        pytest.skip("no C++ compiler to expand the X-macro")
    main = tmp_path / "ops.cc"
    main.write_text(f'#include <cstdio>\n#include "{OPS_H}"\n'
                    '#define PRINT(name, method) std::printf("%s %s\\n", #name, #method);\n'
                    'int main() { LEPTON_OPS(PRINT) std::printf("count %u\\n", lepton::kOpCount); return 0; }\n')
    subprocess.run([cxx, "-std=c++17", "-o", str(tmp_path / "ops"), str(main)], check=True)
    out = subprocess.run([str(tmp_path / "ops")], check=True, capture_output=True, text=True).stdout.split("\n")
    pairs = [tuple(line.split()) for line in out if line and not line.startswith("count")]
    assert list(firmware_ops().items()) == pairs
    assert f"count {len(pairs)}" in out


def test_firmware_list_names_real_builtins_and_resolver_methods() -> None:
    ops = firmware_ops()
    assert len(ops) == 31
    for name, method in ops.items():
        assert isinstance(getattr(fb.BuiltinOperator, name), int), name
        assert name in TFLM_BUILTIN_OPS, name
        assert TFLM_ADD_METHODS[name] == method, name
    for name in ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED", "AVERAGE_POOL_2D", "SOFTMAX", "RESHAPE"):
        assert is_supported(name, "tflm")


def test_parser_reads_only_the_macro() -> None:
    text = ("// X(NOT_THIS, AddNothing)\n#define LEPTON_OPS(X) \\\n  X(ADD, AddAdd) \\\n  X(MUL, AddMul)\n"
            "#define OTHER(X) X(SUB, AddSub)\n")
    assert parse_ops_header(text) == {"ADD": "AddAdd", "MUL": "AddMul"}
    with pytest.raises(ValueError):
        parse_ops_header("#define SOMETHING_ELSE 1\n")


@pytest.mark.parametrize("op", ["IF", "WHILE", "UNIDIRECTIONAL_SEQUENCE_LSTM"])
def test_control_flow_and_lstm_refused_on_tflm_with_a_reason(op: str) -> None:
    assert op in TFLM_BUILTIN_OPS  # TFLite Micro has them; the firmware does not
    assert not is_supported(op, "tflm")
    assert is_supported(op, "litert") and is_supported(op, "tflm-wheel")
    why = unsupported_reason(op, "tflm")
    assert why.startswith(f"{op}: ") and ("control flow" in why or "LSTM" in why)
    assert unsupported_ops(["CONV_2D", op], "tflm") == [op]


def _with_opcode(src: Path, dst: Path, old: str, new_code: int) -> Path:
    model = fb.ModelT.InitFromPackedBuf(src.read_bytes(), 0)
    names = {v: k for k, v in vars(fb.BuiltinOperator).items() if isinstance(v, int)}
    hit = [oc for oc in model.operatorCodes if names[max(oc.builtinCode, oc.deprecatedBuiltinCode)] == old]
    hit[0].builtinCode = new_code
    hit[0].deprecatedBuiltinCode = min(new_code, 127)
    builder = flatbuffers.Builder(1024)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    dst.write_bytes(bytes(builder.Output()))
    return dst


@pytest.mark.parametrize("op", ["IF", "WHILE", "UNIDIRECTIONAL_SEQUENCE_LSTM"])
def test_inspect_and_fit_check_refuse_it_for_stm32l4r5(op: str, tmp_path: Path) -> None:
    from lepton_edge.convert.fit import fit_to_profile
    from lepton_edge.profiles import load_profile

    edited = _with_opcode(require_shared(MLPERF_INT8["kws"]), tmp_path / "edited.tflite", "AVERAGE_POOL_2D",
                          getattr(fb.BuiltinOperator, op))
    proc = run_cli("inspect", str(edited), "--profile", "stm32l4r5", "--json")
    assert proc.returncode == 0, proc.stderr
    prof = json.loads(proc.stdout)["profile"]
    assert prof["unsupported_ops"] == [op] and prof["supported"] is False
    assert prof["unsupported_reasons"] == [unsupported_reason(op, "tflm")]
    human = run_cli("inspect", str(edited), "--profile", "stm32l4r5")
    assert f"not run on stm32l4r5: {op}: " in human.stdout

    fit = fit_to_profile(edited.read_bytes(), "edited", load_profile("stm32l4r5"))
    assert not fit.fits
    assert any(r.startswith("runtime: stm32l4r5's firmware") and unsupported_reason(op, "tflm") in r
               for r in fit.verdict.reasons), fit.verdict.reasons
