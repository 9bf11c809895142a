"""Models the firmware has never seen give bit-exact outputs on the boards: the kit's own op-coverage
model (lepton_edge/tools/op_samples.py: PAD, depthwise with multiplier 2, HARD_SWISH, LEAKY_RELU, TANH,
CONCATENATION, MAX/AVERAGE_POOL_2D, MEAN, FULLY_CONNECTED, LOGISTIC, MUL and ADD with broadcasting, equal-shape MUL,
MAXIMUM, MINIMUM, SUB, STRIDED_SLICE, TRANSPOSE, RELU6, RESHAPE, SOFTMAX, QUANTIZE, DEQUANTIZE: the
firmware's operators MLPerf Tiny does not use), converted by ``lepton-edge convert --profile stm32l4r5
--quantize int8`` with seeded random calibration data, once with int8 and once with float edges. Its
outputs are the class scores and two intermediate tensors (12,288 and 1,536 values), so a one-step
difference in an early operator cannot vanish in later requantizations.

Each artifact is flashed by the CLI to ``qemu-m4`` (Cortex-M4F, CMSIS-NN) and ``qemu-m7`` (Cortex-M7,
CMSIS-NN): ``validate --json`` reports 20 bit-exact outputs, and the same 20 inputs give the same bytes
as on the ``host`` build (the pinned TFLite Micro's reference kernels) and the tflite-micro wheel.
The check is exact; an operator whose CMSIS-NN kernel differs from the reference is a firmware bug to
report, never a tolerance."""

from __future__ import annotations

import json

import pytest

from conftest import run_cli
from test_firmware_bitexact import check_artifact_bit_exact

IOS = ("int8", "float")


@pytest.fixture(scope="session")
def op_coverage_artifact(tmp_path_factory):
    """``op_coverage_artifact(io) -> Path``: the op-coverage model converted by the CLI, once per session."""
    made: dict[str, object] = {}

    def get(io: str):
        if io not in made:
            from lepton_edge.tools.op_samples import save_op_coverage

            work = tmp_path_factory.mktemp(f"op-coverage-{io}")
            keras, calibration = save_op_coverage(work, seed=0)
            out = work / "artifact"
            proc = run_cli("convert", keras, "--profile", "stm32l4r5", "--quantize", "int8", "--calibration",
                           calibration, "--io", io, "-o", out, "--json")
            assert proc.returncode == 0, proc.stderr[-2000:]
            json.loads(proc.stdout)
            made[io] = out
        return made[io]

    return get


def model_ops(artifact) -> set[str]:
    from lepton_edge.tflite.reader import read_model_file

    return {op.opcode for sg in read_model_file(artifact / "model.tflite").subgraphs for op in sg.operators}


@pytest.mark.parametrize("io", IOS)
def test_op_coverage_model_has_the_operators(op_coverage_artifact, io):
    from lepton_edge.tools.op_samples import OP_COVERAGE_OPS

    ops = model_ops(op_coverage_artifact(io))
    edges = {"DEQUANTIZE"} if io == "float" else set()
    assert ops == set(OP_COVERAGE_OPS) | edges, sorted(ops ^ (set(OP_COVERAGE_OPS) | edges))


@pytest.mark.parametrize("io", IOS)
def test_op_coverage_on_qemu_m4_is_bit_exact(qemu_m4, host, op_coverage_artifact, io):
    check_artifact_bit_exact(qemu_m4, host, op_coverage_artifact(io), f"op-coverage ({io} edges)")


@pytest.mark.parametrize("io", IOS)
def test_op_coverage_on_qemu_m7_is_bit_exact(qemu_m7, host, op_coverage_artifact, io):
    check_artifact_bit_exact(qemu_m7, host, op_coverage_artifact(io), f"op-coverage ({io} edges)")
