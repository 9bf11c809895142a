"""Models the hardware-in-the-loop tests make themselves (device-safe: flatbuffers and the schema only)."""

from __future__ import annotations

from lepton_edge.tflite.vendor import schema_py_generated as fb
from lepton_edge.tflite.writer import pack


def wide_add_model(elements: int) -> bytes:
    """``y = x + x`` on ``float32[1, elements]``: a tiny file whose arena needs about ``8 * elements`` bytes."""
    def tensor(name: str) -> fb.TensorT:
        t = fb.TensorT()
        t.shape, t.type, t.buffer, t.name = [1, elements], fb.TensorType.FLOAT32, 0, name
        return t

    op = fb.OperatorT()
    op.opcodeIndex, op.inputs, op.outputs = 0, [0, 0], [1]
    op.builtinOptionsType, op.builtinOptions = fb.BuiltinOptions.AddOptions, fb.AddOptionsT()
    subgraph = fb.SubGraphT()
    subgraph.tensors, subgraph.inputs, subgraph.outputs, subgraph.operators = \
        [tensor("x"), tensor("y")], [0], [1], [op]
    subgraph.name = "main"
    code = fb.OperatorCodeT()
    code.builtinCode, code.deprecatedBuiltinCode, code.version = fb.BuiltinOperator.ADD, fb.BuiltinOperator.ADD, 1
    model = fb.ModelT()
    model.version, model.operatorCodes, model.subgraphs = 3, [code], [subgraph]
    model.buffers, model.description = [fb.BufferT()], "lepton-edge hil_tests: wide ADD"
    return pack(model)
