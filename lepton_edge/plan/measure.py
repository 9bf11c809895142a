"""Arena figures from real TFLite Micro when it is installed, estimates when it is not.

``tflite-micro`` has x86_64 wheels only: on a build host the tail and the recommended arena are
measured; on an ARM board they are estimated from the model's structure and labelled so.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass

from lepton_edge.errors import BadInput
from lepton_edge.tflite.model import TFLiteModel, align_up

# Sizes of TFLite Micro's persistent structures on a 64-bit host (the largest case).
_EVAL_TENSOR = 24
_PERSISTENT_TENSOR = 64
_NODE_AND_REGISTRATION = 64
_OP_DATA = 192
_WEIGHTED_OPS = {"CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED", "TRANSPOSE_CONV"}
_PROBE_TIMEOUT_S = 300


@dataclass(frozen=True)
class TflmMeasurement:
    head_bytes: int
    tail_bytes: int
    smallest_arena_bytes: int


def tflm_available() -> bool:
    return importlib.util.find_spec("tflite_micro") is not None


def measure_with_tflm(model_bytes: bytes, start_guess: int, source: str = "model") -> TflmMeasurement:
    """Find the smallest arena TFLite Micro runs the model with, and its head and tail there."""
    fd, path = tempfile.mkstemp(suffix=".tflite")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(model_bytes)
        proc = subprocess.run(
            [sys.executable, "-m", "lepton_edge.plan.tflm_probe", path, "--search-from", str(start_guess)],
            capture_output=True, text=True, timeout=_PROBE_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        raise BadInput(f"{source}: TFLite Micro did not finish allocating the model "
                       f"within {_PROBE_TIMEOUT_S} s") from None
    finally:
        os.unlink(path)
    try:
        result = json.loads(proc.stdout.strip().splitlines()[-1])
    except (IndexError, json.JSONDecodeError):
        how = f"signal {-proc.returncode}" if proc.returncode < 0 else f"exit {proc.returncode}"
        raise BadInput(f"{source}: TFLite Micro aborted while allocating or running this model ({how}); "
                       "it uses an operator or shape TFLite Micro cannot run") from None
    if "error" in result:
        raise BadInput(f"{source}: TFLite Micro cannot run this model: {result['error']}")
    return TflmMeasurement(result["head"], result["tail"], result["smallest_arena_bytes"])


def estimate_tail(model: TFLiteModel, pointer_bytes: int = 8) -> int:
    """An upper-bound guess of TFLite Micro's persistent tail, for hosts without ``tflite-micro``."""
    sg = model.main
    scale = pointer_bytes / 8
    tail = len(sg.tensors) * _EVAL_TENSOR * scale
    tail += (len(sg.inputs) + len(sg.outputs)) * (_PERSISTENT_TENSOR + 32) * scale
    tail += len(sg.operators) * (_NODE_AND_REGISTRATION * scale + _OP_DATA)
    for op in sg.operators:
        if op.opcode in _WEIGHTED_OPS and op.outputs:
            channels = sg.tensors[op.outputs[0]].shape[-1] if sg.tensors[op.outputs[0]].shape else 1
            tail += 8 * channels  # per-channel multipliers and shifts
    return align_up(int(tail) + 1024)
