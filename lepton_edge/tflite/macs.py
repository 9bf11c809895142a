"""Multiply-accumulate counts of operators, from tensor shapes alone (no TensorFlow: runs on devices).

Counted: CONV_2D, DEPTHWISE_CONV_2D, FULLY_CONNECTED, TRANSPOSE_CONV, BATCH_MATMUL and CONV_3D, the
operators whose cost is dominated by multiply-accumulates. Everything else counts 0 MACs:
elementwise operators (ADD, MUL, activations), pooling, reshapes, softmax and friends do at most a
few operations per element and are not multiply-accumulates; recurrent operators (LSTM, SVDF) are
not counted either. The counts therefore under-estimate work in models made mostly of those.

Shapes follow the TFLite layout: NHWC activations, CONV_2D filters ``[out_c, kh, kw, in_c / groups]``,
DEPTHWISE_CONV_2D filters ``[1, kh, kw, out_c]``, FULLY_CONNECTED weights ``[units, in_features]``,
TRANSPOSE_CONV filters ``[out_c, kh, kw, in_c]``, CONV_3D filters ``[kd, kh, kw, in_c, out_c]``.
A malformed operator (missing tensor, negative or missing dimension) counts 0 rather than raising.
"""

from __future__ import annotations

import math
from collections.abc import Callable

from lepton_edge.tflite.model import Operator, Subgraph, TFLiteModel


def _shape(sg: Subgraph, op: Operator, which: str, pos: int) -> tuple[int, ...] | None:
    indices = op.inputs if which == "in" else op.outputs
    if pos >= len(indices) or not 0 <= indices[pos] < len(sg.tensors):
        return None
    shape = sg.tensors[indices[pos]].shape
    if any(d < 0 for d in shape):
        return None
    return shape


def _elements(shape: tuple[int, ...]) -> int:
    return math.prod(shape)


def _conv_2d(sg: Subgraph, op: Operator) -> int:
    out, filt = _shape(sg, op, "out", 0), _shape(sg, op, "in", 1)
    if out is None or filt is None or len(filt) != 4:
        return 0
    # filt[3] is in_channels / groups: each output element reads kh x kw x (in_c / groups) inputs.
    return _elements(out) * filt[1] * filt[2] * filt[3]


def _depthwise_conv_2d(sg: Subgraph, op: Operator) -> int:
    out, filt = _shape(sg, op, "out", 0), _shape(sg, op, "in", 1)
    if out is None or filt is None or len(filt) != 4:
        return 0
    return _elements(out) * filt[1] * filt[2]


def _fully_connected(sg: Subgraph, op: Operator) -> int:
    out, weights = _shape(sg, op, "out", 0), _shape(sg, op, "in", 1)
    if out is None or weights is None or len(weights) != 2:
        return 0
    return _elements(out) * weights[1]


def _transpose_conv(sg: Subgraph, op: Operator) -> int:
    # Inputs: output_shape, weights, input[, bias]. Each input element is scattered into
    # kh x kw x out_c outputs.
    filt, inp = _shape(sg, op, "in", 1), _shape(sg, op, "in", 2)
    if filt is None or inp is None or len(filt) != 4:
        return 0
    return _elements(inp) * filt[0] * filt[1] * filt[2]


def _batch_matmul(sg: Subgraph, op: Operator) -> int:
    # out[..., M, N] = A[..., M, K] x B[..., K, N]; adj_x transposes A, so K is whichever of A's
    # last two dimensions is not M (both equal M when they are equal, so either is right).
    a, out = _shape(sg, op, "in", 0), _shape(sg, op, "out", 0)
    if a is None or out is None or len(a) < 2 or len(out) < 2:
        return 0
    k = a[-1] if a[-2] == out[-2] else a[-2]
    return _elements(out) * k


def _conv_3d(sg: Subgraph, op: Operator) -> int:
    out, filt = _shape(sg, op, "out", 0), _shape(sg, op, "in", 1)
    if out is None or filt is None or len(filt) != 5:
        return 0
    return _elements(out) * filt[0] * filt[1] * filt[2] * filt[3]


_COUNTERS: dict[str, Callable[[Subgraph, Operator], int]] = {
    "CONV_2D": _conv_2d,
    "DEPTHWISE_CONV_2D": _depthwise_conv_2d,
    "FULLY_CONNECTED": _fully_connected,
    "TRANSPOSE_CONV": _transpose_conv,
    "BATCH_MATMUL": _batch_matmul,
    "CONV_3D": _conv_3d,
}

#: Operators whose MACs are counted; all others count 0.
COUNTED_OPS = frozenset(_COUNTERS)


def op_macs(model_or_subgraph: TFLiteModel | Subgraph, op: Operator) -> int:
    """Multiply-accumulates of ``op`` (0 for operators that are not MAC-bound, or malformed ones).

    Given a model, ``op`` is taken to belong to its main subgraph.
    """
    sg = model_or_subgraph.main if isinstance(model_or_subgraph, TFLiteModel) else model_or_subgraph
    counter = _COUNTERS.get(op.opcode)
    return counter(sg, op) if counter else 0


def subgraph_macs(subgraph: Subgraph) -> list[int]:
    """MACs of each operator of ``subgraph``, in execution order."""
    return [op_macs(subgraph, op) for op in subgraph.operators]

