"""Which operators and tensor types a runtime can execute, checked without loading the model.

``tflm`` profiles (microcontrollers) run exactly the operators of the kit's reference firmware: the
X-macro list ``LEPTON_OPS(X)`` in ``firmware_bridge/firmware/core/ops.h``, read here (``FIRMWARE_OPS``),
so that ``inspect --profile``, ``convert``'s fit check and the firmware's op resolver agree. LiteRT
(full TFLite) runs every builtin operator.

``TFLM_BUILTIN_OPS`` is the larger set of builtin operators registered by the ``AddXxx`` methods of
TFLite Micro's ``tensorflow/lite/micro/micro_mutable_op_resolver.h`` (2025 revision), named as in the
TFLite schema's ``BuiltinOperator`` enum: what the ``tflite-micro`` Python wheel runs (the agent's
``tflm`` backend on a Linux board) and what generated ``firmware/`` sources may register.

Custom operators (opcodes ``"CUSTOM:<name>"``) count as unsupported on both runtimes: neither runs
one unless the application registers a kernel for it. ``TFLM_CUSTOM_OPS`` lists the custom kernels
TFLite Micro ships (an application may register them); they are informational only.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from functools import lru_cache
from pathlib import Path

RUNTIMES = ("tflm", "litert")
#: The agent's in-process TFLite Micro (the Python wheel, every upstream kernel).
TFLM_WHEEL = "tflm-wheel"

_X_LINE = re.compile(r"\bX\(\s*([A-Z][A-Z0-9_]*)\s*,\s*(Add\w+)\s*\)")

TFLM_BUILTIN_OPS: frozenset[str] = frozenset({
    "ABS", "ADD", "ADD_N", "ARG_MAX", "ARG_MIN", "ASSIGN_VARIABLE", "AVERAGE_POOL_2D", "BATCH_MATMUL",
    "BATCH_TO_SPACE_ND", "BROADCAST_ARGS", "BROADCAST_TO", "CALL_ONCE", "CAST", "CEIL", "CONCATENATION",
    "CONV_2D", "COS", "CUMSUM", "DEPTH_TO_SPACE", "DEPTHWISE_CONV_2D", "DEQUANTIZE", "DIV",
    "EMBEDDING_LOOKUP", "ELU", "EQUAL", "EXP", "EXPAND_DIMS", "FILL", "FLOOR", "FLOOR_DIV", "FLOOR_MOD",
    "FULLY_CONNECTED", "GATHER", "GATHER_ND", "GREATER", "GREATER_EQUAL", "HARD_SWISH", "IF",
    "L2_NORMALIZATION", "L2_POOL_2D", "LEAKY_RELU", "LESS", "LESS_EQUAL", "LOG", "LOGICAL_AND",
    "LOGICAL_NOT", "LOGICAL_OR", "LOGISTIC", "LOG_SOFTMAX", "MAXIMUM", "MAX_POOL_2D", "MIRROR_PAD", "MEAN",
    "MINIMUM", "MUL", "NEG", "NOT_EQUAL", "PACK", "PAD", "PADV2", "PRELU", "QUANTIZE", "READ_VARIABLE",
    "REDUCE_MAX", "REDUCE_MIN", "RELU", "RELU6", "RESHAPE", "RESIZE_BILINEAR", "RESIZE_NEAREST_NEIGHBOR",
    "REVERSE_V2", "ROUND", "RSQRT", "SELECT_V2", "SHAPE", "SIN", "SLICE", "SOFTMAX", "SPACE_TO_BATCH_ND",
    "SPACE_TO_DEPTH", "SPLIT", "SPLIT_V", "SQUEEZE", "SQRT", "SQUARE", "SQUARED_DIFFERENCE",
    "STRIDED_SLICE", "SUB", "SUM", "SVDF", "TANH", "TRANSPOSE_CONV", "TRANSPOSE", "UNPACK",
    "UNIDIRECTIONAL_SEQUENCE_LSTM", "VAR_HANDLE", "WHILE", "ZEROS_LIKE",
})

#: Custom kernels shipped with TFLite Micro (``AddCustom`` calls of the same header).
TFLM_CUSTOM_OPS: frozenset[str] = frozenset({
    "CIRCULAR_BUFFER", "TFLite_Detection_PostProcess", "ethos-u", "SignalDelay", "SignalEnergy",
    "SignalFftAutoScale", "SignalFilterBank", "SignalFilterBankLog", "SignalFilterBankSquareRoot",
    "SignalFilterBankSpectralSubtraction", "SignalFramer", "SignalIrfft", "SignalOverlapAdd", "SignalPCAN",
    "SignalRfft", "SignalStacker", "SignalWindow",
})

CUSTOM_PREFIX = "CUSTOM:"

#: Why a builtin that TFLite Micro has is still refused on a ``tflm`` profile.
_LEFT_OUT = {
    "IF": "control flow (IF) needs subgraphs the firmware does not run",
    "WHILE": "control flow (WHILE) needs subgraphs the firmware does not run",
    "UNIDIRECTIONAL_SEQUENCE_LSTM": "LSTM is not in the firmware's kernels",
}


def _ops_header() -> Path:
    """ops.h in the firmware_bridge package's data. firmware_bridge is installed beside lepton_edge (the
    same wheel, or the repository), so this is a path, not an import: the runtime does not depend on the
    bridge's code (firmware_bridge.engine depends on the runtime)."""
    return Path(__file__).resolve().parents[2] / "firmware_bridge" / "firmware" / "core" / "ops.h"


def parse_ops_header(text: str) -> dict[str, str]:
    """``{BUILTIN_NAME: AddMethod}`` from the ``LEPTON_OPS(X)`` X-macro of an ops.h, in file order."""
    lines = text.splitlines()
    start = next((i for i, line in enumerate(lines) if line.strip().startswith("#define LEPTON_OPS(X)")), None)
    if start is None:
        raise ValueError("ops.h has no '#define LEPTON_OPS(X)'")
    body = [lines[start]]
    while body[-1].rstrip().endswith("\\") and start + len(body) < len(lines):
        body.append(lines[start + len(body)])
    ops = dict(_X_LINE.findall("\n".join(body)))
    if not ops:
        raise ValueError("ops.h: LEPTON_OPS(X) lists no X(NAME, AddMethod) line")
    return ops


@lru_cache(maxsize=1)
def firmware_ops() -> dict[str, str]:
    """The firmware's operator list: ``{BUILTIN_NAME: AddMethod}`` read from ops.h."""
    path = _ops_header()
    try:
        return parse_ops_header(path.read_text(encoding="utf-8"))
    except OSError as exc:  # an install without the firmware sources is broken
        raise RuntimeError(f"the firmware's operator list {path} is missing ({exc.strerror or exc})") from None


def __getattr__(name: str) -> frozenset[str]:
    if name == "FIRMWARE_OPS":
        return frozenset(firmware_ops())
    raise AttributeError(name)


def unsupported_reason(opcode: str, runtime: str) -> str:
    """Why ``runtime`` does not run ``opcode`` (empty when it does)."""
    if is_supported(opcode, runtime):
        return ""
    if opcode.startswith(CUSTOM_PREFIX):
        return f"{opcode}: a custom operator; no runtime has a kernel for it unless the application registers one"
    if runtime == "tflm":
        why = _LEFT_OUT.get(opcode) or ("TFLite Micro has it, the firmware's op list (core/ops.h) does not"
                                        if opcode in TFLM_BUILTIN_OPS else "TFLite Micro has no kernel for it")
        return f"{opcode}: {why}"
    return f"{opcode}: no kernel"


def is_supported(opcode: str, runtime: str) -> bool:
    """Whether ``runtime`` runs the operator named ``opcode`` out of the box: "tflm" (a microcontroller
    profile: the firmware's op list), "litert", or "tflm-wheel" (TFLite Micro's Python wheel)."""
    if runtime not in RUNTIMES and runtime != TFLM_WHEEL:
        raise ValueError(f"unknown runtime {runtime!r} (expected one of {', '.join(RUNTIMES)})")
    if opcode.startswith(CUSTOM_PREFIX):
        return False
    if runtime == "litert":
        return True
    if runtime == TFLM_WHEEL:
        return opcode in TFLM_BUILTIN_OPS
    return opcode in firmware_ops()


def unsupported_ops(opcodes: Iterable[str], runtime: str) -> list[str]:
    """The distinct opcodes ``runtime`` cannot run, in order of first appearance."""
    out: list[str] = []
    for code in opcodes:
        if code not in out and not is_supported(code, runtime):
            out.append(code)
    return out


def unsupported_types(dtypes: Iterable[str], supported: Iterable[str]) -> list[str]:
    """The distinct tensor types (``"int8"``, ``"float32"`` ...) not in ``supported``, in order of first appearance."""
    allowed = set(supported)
    out: list[str] = []
    for dtype in dtypes:
        if dtype not in allowed and dtype not in out:
            out.append(dtype)
    return out
