"""Firmware sources for an artifact: the model as an aligned C array, its arena size and I/O constants,
and a TFLite Micro op resolver listing exactly the operators the model uses.

``model_data.h`` / ``model_data.cc``: ``alignas(16) const unsigned char g_model[]`` and ``g_model_len``
(TFLite Micro reads the flatbuffer in place; the schema asks for 16-byte aligned buffers, and a
Cortex-M0+ faults on unaligned 32-bit reads). ``model_config.h``: ``kTensorArenaSize`` (the planned
arena plus the profile's kernel margin, a multiple of 16) for an ``alignas(16)`` arena, each input's
and output's scale and zero point with inline quantize and dequantize helpers. ``op_resolver.h``:
``tflite::MicroMutableOpResolver<N>`` with one ``AddXxx()`` per operator, ``N`` their count.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from lepton_edge.errors import BadInput
from lepton_edge.tflite.reader import parse_model

#: Builtin operator (TFLite schema name) -> TFLite Micro's MicroMutableOpResolver method.
TFLM_ADD_METHODS: dict[str, str] = {
    "ABS": "AddAbs", "ADD": "AddAdd", "ADD_N": "AddAddN", "ARG_MAX": "AddArgMax", "ARG_MIN": "AddArgMin",
    "ASSIGN_VARIABLE": "AddAssignVariable", "AVERAGE_POOL_2D": "AddAveragePool2D",
    "BATCH_MATMUL": "AddBatchMatMul", "BATCH_TO_SPACE_ND": "AddBatchToSpaceNd",
    "BROADCAST_ARGS": "AddBroadcastArgs", "BROADCAST_TO": "AddBroadcastTo", "CALL_ONCE": "AddCallOnce",
    "CAST": "AddCast", "CEIL": "AddCeil", "CONCATENATION": "AddConcatenation", "CONV_2D": "AddConv2D",
    "COS": "AddCos", "CUMSUM": "AddCumSum", "DEPTH_TO_SPACE": "AddDepthToSpace",
    "DEPTHWISE_CONV_2D": "AddDepthwiseConv2D", "DEQUANTIZE": "AddDequantize", "DIV": "AddDiv",
    "EMBEDDING_LOOKUP": "AddEmbeddingLookup", "ELU": "AddElu", "EQUAL": "AddEqual", "EXP": "AddExp",
    "EXPAND_DIMS": "AddExpandDims", "FILL": "AddFill", "FLOOR": "AddFloor", "FLOOR_DIV": "AddFloorDiv",
    "FLOOR_MOD": "AddFloorMod", "FULLY_CONNECTED": "AddFullyConnected", "GATHER": "AddGather",
    "GATHER_ND": "AddGatherNd", "GREATER": "AddGreater", "GREATER_EQUAL": "AddGreaterEqual",
    "HARD_SWISH": "AddHardSwish", "IF": "AddIf", "L2_NORMALIZATION": "AddL2Normalization",
    "L2_POOL_2D": "AddL2Pool2D", "LEAKY_RELU": "AddLeakyRelu", "LESS": "AddLess", "LESS_EQUAL": "AddLessEqual",
    "LOG": "AddLog", "LOGICAL_AND": "AddLogicalAnd", "LOGICAL_NOT": "AddLogicalNot",
    "LOGICAL_OR": "AddLogicalOr", "LOGISTIC": "AddLogistic", "LOG_SOFTMAX": "AddLogSoftmax",
    "MAXIMUM": "AddMaximum", "MAX_POOL_2D": "AddMaxPool2D", "MIRROR_PAD": "AddMirrorPad", "MEAN": "AddMean",
    "MINIMUM": "AddMinimum", "MUL": "AddMul", "NEG": "AddNeg", "NOT_EQUAL": "AddNotEqual", "PACK": "AddPack",
    "PAD": "AddPad", "PADV2": "AddPadV2", "PRELU": "AddPrelu", "QUANTIZE": "AddQuantize",
    "READ_VARIABLE": "AddReadVariable", "REDUCE_MAX": "AddReduceMax", "REDUCE_MIN": "AddReduceMin",
    "RELU": "AddRelu", "RELU6": "AddRelu6", "RESHAPE": "AddReshape", "RESIZE_BILINEAR": "AddResizeBilinear",
    "RESIZE_NEAREST_NEIGHBOR": "AddResizeNearestNeighbor", "REVERSE_V2": "AddReverseV2", "ROUND": "AddRound",
    "RSQRT": "AddRsqrt", "SELECT_V2": "AddSelectV2", "SHAPE": "AddShape", "SIN": "AddSin", "SLICE": "AddSlice",
    "SOFTMAX": "AddSoftmax", "SPACE_TO_BATCH_ND": "AddSpaceToBatchNd", "SPACE_TO_DEPTH": "AddSpaceToDepth",
    "SPLIT": "AddSplit", "SPLIT_V": "AddSplitV", "SQUEEZE": "AddSqueeze", "SQRT": "AddSqrt",
    "SQUARE": "AddSquare", "SQUARED_DIFFERENCE": "AddSquaredDifference", "STRIDED_SLICE": "AddStridedSlice",
    "SUB": "AddSub", "SUM": "AddSum", "SVDF": "AddSvdf", "TANH": "AddTanh", "TRANSPOSE_CONV": "AddTransposeConv",
    "TRANSPOSE": "AddTranspose", "UNPACK": "AddUnpack",
    "UNIDIRECTIONAL_SEQUENCE_LSTM": "AddUnidirectionalSequenceLSTM", "VAR_HANDLE": "AddVarHandle",
    "WHILE": "AddWhile", "ZEROS_LIKE": "AddZerosLike",
}

_C_TYPES = {"int8": "int8_t", "uint8": "uint8_t", "int16": "int16_t", "int32": "int32_t", "float32": "float"}
_INT_RANGES = {"int8": (-128, 127), "uint8": (0, 255), "int16": (-32768, 32767)}


@dataclass(frozen=True)
class IoTensor:
    """What model_config.h says about one input or output (a manifest ``inputs``/``outputs`` entry)."""

    name: str
    shape: tuple[int, ...]
    dtype: str
    scale: float | None
    zero_point: int | None


def firmware_sources(model_bytes: bytes, *, name: str, arena_bytes: int, inputs: Sequence[IoTensor],
                     outputs: Sequence[IoTensor], layout: str) -> dict[str, str]:
    """File name -> text of the four firmware sources."""
    return {
        "model_data.h": model_data_header(),
        "model_data.cc": model_data_source(model_bytes, name),
        "model_config.h": model_config_header(name, arena_bytes, inputs, outputs, layout),
        "op_resolver.h": op_resolver_header(model_bytes),
    }


def write_firmware(directory: Path, model_bytes: bytes, **kwargs) -> list[str]:
    """Write the sources into ``directory`` (a staging directory); return the file names."""
    directory.mkdir(parents=True, exist_ok=True)
    files = firmware_sources(model_bytes, **kwargs)
    for fname, text in files.items():
        (directory / fname).write_text(text, encoding="utf-8")
    return sorted(files)


def model_data_header() -> str:
    return """// Generated by lepton-edge: the model flatbuffer, for TFLite Micro to read in place.
#ifndef LEPTON_MODEL_DATA_H_
#define LEPTON_MODEL_DATA_H_

#ifdef __cplusplus
extern "C" {
#endif

// 16-byte aligned (the TFLite schema's buffer alignment).
extern const unsigned char g_model[];
extern const unsigned int g_model_len;

#ifdef __cplusplus
}
#endif

#endif  // LEPTON_MODEL_DATA_H_
"""


def model_data_source(model_bytes: bytes, name: str) -> str:
    lines = []
    for start in range(0, len(model_bytes), 16):
        chunk = model_bytes[start:start + 16]
        lines.append("  " + ", ".join(f"0x{b:02x}" for b in chunk) + ",")
    body = "\n".join(lines)
    return f"""// Generated by lepton-edge: model '{_comment(name)}', {len(model_bytes)} bytes.
#include "model_data.h"

alignas(16) const unsigned char g_model[] = {{
{body}
}};
const unsigned int g_model_len = {len(model_bytes)};
"""


def model_config_header(name: str, arena_bytes: int, inputs: Sequence[IoTensor], outputs: Sequence[IoTensor],
                        layout: str) -> str:
    if arena_bytes % 16:
        raise ValueError(f"arena size {arena_bytes} is not a multiple of 16")
    parts = [f"""// Generated by lepton-edge: model '{_comment(name)}'.
#ifndef LEPTON_MODEL_CONFIG_H_
#define LEPTON_MODEL_CONFIG_H_

#include <math.h>
#include <stdint.h>

// Tensor arena: the planned arena plus the profile's margin for its kernel library, a multiple of 16.
// Declare it as:  alignas(16) static uint8_t tensor_arena[kTensorArenaSize];
constexpr int kTensorArenaSize = {arena_bytes};

// Input layout: {layout}.
constexpr int kNumInputs = {len(inputs)};
constexpr int kNumOutputs = {len(outputs)};
"""]
    for kind, tensors in (("Input", inputs), ("Output", outputs)):
        for i, t in enumerate(tensors):
            parts.append(_io_block(kind, i, t, alias=len(tensors) == 1))
    parts.append("#endif  // LEPTON_MODEL_CONFIG_H_\n")
    return "\n".join(parts)


def _io_block(kind: str, index: int, t: IoTensor, *, alias: bool) -> str:
    prefixes = [f"{kind}{index}"] + ([kind] if alias else [])
    elements = 1
    for d in t.shape:
        elements *= d
    ctype = _C_TYPES.get(t.dtype)
    if ctype is None:
        raise BadInput(f"firmware: {kind.lower()} '{t.name}' has type {t.dtype}, "
                       "which the firmware header cannot express")
    quantized = t.scale is not None and t.dtype in _INT_RANGES
    out = [f"// {kind.lower()} {index}: '{_comment(t.name)}' {t.dtype}{list(t.shape)}"]
    for p in prefixes:
        out.append(f"constexpr int k{p}Elements = {elements};")
        if quantized:
            lo, hi = _INT_RANGES[t.dtype]
            out += [
                f"constexpr float k{p}Scale = {_float(t.scale or 0.0)};",  # quantized: scale is set
                f"constexpr int k{p}ZeroPoint = {t.zero_point or 0};",
                f"inline {ctype} Quantize{p}(float value) {{",
                f"  long q = lroundf(value / k{p}Scale) + k{p}ZeroPoint;",
                f"  return static_cast<{ctype}>(q < {lo} ? {lo} : (q > {hi} ? {hi} : q));",
                "}",
                f"inline float Dequantize{p}({ctype} value) {{",
                f"  return (static_cast<int>(value) - k{p}ZeroPoint) * k{p}Scale;",
                "}",
            ]
        else:
            out += [
                f"// {t.dtype} at the edge: no quantization; the helpers pass values through.",
                f"constexpr float k{p}Scale = 1.0f;",
                f"constexpr int k{p}ZeroPoint = 0;",
                f"inline {ctype} Quantize{p}(float value) {{ return static_cast<{ctype}>(value); }}",
                f"inline float Dequantize{p}({ctype} value) {{ return static_cast<float>(value); }}",
            ]
    return "\n".join(out) + "\n"


def used_operators(model_bytes: bytes) -> list[str]:
    """The model's distinct operators, in order of first use."""
    model = parse_model(model_bytes)
    seen: list[str] = []
    for sg in model.subgraphs:
        for op in sg.operators:
            if op.opcode not in seen:
                seen.append(op.opcode)
    return seen


def op_resolver_header(model_bytes: bytes) -> str:
    ops = used_operators(model_bytes)
    unknown = [op for op in ops if op not in TFLM_ADD_METHODS]
    calls = [f"  if (resolver.{TFLM_ADD_METHODS[op]}() != kTfLiteOk) return kTfLiteError;  // {op}"
             for op in ops if op in TFLM_ADD_METHODS]
    note = ""
    if unknown:
        note = ("// NOTE: TFLite Micro has no builtin kernel for: " + ", ".join(unknown)
                + ".\n// This model cannot run on TFLite Micro as it is.\n")
    n = len(calls)
    return f"""// Generated by lepton-edge: exactly the operators the model uses.
#ifndef LEPTON_OP_RESOLVER_H_
#define LEPTON_OP_RESOLVER_H_

#include "tensorflow/lite/micro/micro_mutable_op_resolver.h"
{note}
constexpr int kNumOperators = {n};
using ModelOpResolver = tflite::MicroMutableOpResolver<{n}>;

// Usage:  static ModelOpResolver resolver;  RegisterOperators(resolver);
inline TfLiteStatus RegisterOperators(ModelOpResolver& resolver) {{
{chr(10).join(calls)}
  return kTfLiteOk;
}}

#endif  // LEPTON_OP_RESOLVER_H_
"""


def _float(value: float) -> str:
    text = repr(float(value))
    if "e" not in text and "." not in text:
        text += ".0"
    return text + "f"


def _comment(text: str) -> str:
    """Safe inside a // comment or a string: no newlines, no trigraphs, printable ASCII."""
    return re.sub(r"[^\x20-\x7e]|\?\?", "_", text)[:120]
