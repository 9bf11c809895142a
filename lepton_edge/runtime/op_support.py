"""Which operators and tensor types a runtime can execute, checked without loading the model.

``TFLM_BUILTIN_OPS`` is the set of builtin operators registered by the ``AddXxx`` methods of TFLite
Micro's ``tensorflow/lite/micro/micro_mutable_op_resolver.h`` (2025 revision), named as in the
TFLite schema's ``BuiltinOperator`` enum. LiteRT (full TFLite) runs every builtin operator.

Custom operators (opcodes ``"CUSTOM:<name>"``) count as unsupported on both runtimes: neither runs
one unless the application registers a kernel for it. ``TFLM_CUSTOM_OPS`` lists the custom kernels
TFLite Micro ships (an application may register them); they are informational only.
"""

from __future__ import annotations

from typing import Iterable

RUNTIMES = ("tflm", "litert")

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


def is_supported(opcode: str, runtime: str) -> bool:
    """Whether ``runtime`` ("tflm" or "litert") runs the operator named ``opcode`` out of the box."""
    if runtime not in RUNTIMES:
        raise ValueError(f"unknown runtime {runtime!r} (expected one of {', '.join(RUNTIMES)})")
    if opcode.startswith(CUSTOM_PREFIX):
        return False
    if runtime == "litert":
        return True
    return opcode in TFLM_BUILTIN_OPS


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
