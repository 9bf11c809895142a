"""Every MLPerf Tiny int8 model flashes to ``qemu-m4`` (Cortex-M4F, CMSIS-NN) and gives bit-exact
outputs on 20 inputs: ``validate --json`` against its own reference (the tflite-micro wheel), and the
same 20 inputs byte for byte against the ``host`` firmware build (the same pinned TFLite Micro with its
reference kernels: the bit-exactness reference). KWS also on ``qemu-m7`` (Cortex-M7, CMSIS-NN)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from conftest import MLPERF_INT8, require_shared, run_cli
from device_targets import FirmwareBoard

SAMPLES, SEED = 20, 7


def validate_inputs(model: bytes) -> list[bytes]:
    """The inputs ``validate --samples 20 --seed 7`` draws, as bytes."""
    from firmware_bridge.validation import random_inputs
    from lepton_edge.runtime.base import io_specs
    from lepton_edge.tflite.reader import parse_model

    specs, _ = io_specs(parse_model(model))
    rng = np.random.default_rng(SEED)
    return [b"".join(np.ascontiguousarray(a).tobytes() for a in random_inputs(specs, rng)) for _ in range(SAMPLES)]


def run_on(board: FirmwareBoard, payload, inputs: list[bytes]) -> list[bytes]:
    from firmware_bridge.host import connect
    from firmware_bridge.link import PortOptions

    with connect(PortOptions(board.port), hello_timeout=15) as device:
        device.flash(payload)
        assert device.info().active.sha256 == payload.sha256
        return [device.invoke(x).outputs for x in inputs]


def wheel_outputs(payload, inputs: list[bytes]) -> list[bytes]:
    from hil_tests.support import reference_outputs

    return [reference_outputs(payload, x) for x in inputs]


def check_bit_exact(board: FirmwareBoard, host: FirmwareBoard, name: str) -> None:
    check_artifact_bit_exact(board, host, require_shared(MLPERF_INT8[name]), name)


def check_artifact_bit_exact(board: FirmwareBoard, host: FirmwareBoard, path, name: str) -> None:
    """``path`` (an artifact or .tflite) flashed by the CLI to ``board``: ``validate --json`` reports 20
    bit-exact outputs, and the same 20 inputs give the same bytes as on ``host`` and the wheel."""
    from firmware_bridge.payload import load_payload

    flashed = run_cli("flash", path, "--port", board.port, "--json")
    assert flashed.returncode == 0, flashed.stderr
    report = json.loads(run_cli("validate", path, "--port", board.port, "--samples", SAMPLES, "--seed", SEED,
                                "--json").stdout or "{}")

    payload = load_payload(path)
    inputs = validate_inputs(payload.model)
    on_board = run_on(board, payload, inputs)
    on_host = run_on(host, payload, inputs)
    wheel = wheel_outputs(payload, inputs)
    differ_host = [i for i in range(SAMPLES) if on_board[i] != on_host[i]]
    differ_wheel = [i for i in range(SAMPLES) if on_host[i] != wheel[i]]
    assert not differ_host, (f"{name} on {board.board} differs from the host build's reference kernels on "
                             f"samples {differ_host}")
    assert not differ_wheel, (f"{name}: the host build (pinned TFLM) differs from the tflite-micro wheel on "
                              f"samples {differ_wheel}")
    assert report.get("samples") == SAMPLES and report.get("bit_exact") == SAMPLES, report
    assert report["max_abs_diff"] == 0 and report["device_latency_us_p50"] > 0, report


@pytest.mark.parametrize("name", sorted(MLPERF_INT8))
def test_mlperf_tiny_on_qemu_m4_is_bit_exact(qemu_m4, host, name):
    check_bit_exact(qemu_m4, host, name)


def test_kws_on_qemu_m7_is_bit_exact(qemu_m7, host):
    check_bit_exact(qemu_m7, host, "kws")
