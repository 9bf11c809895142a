"""Scratch memory that TFLite Micro kernels request in the arena's head while they run.

A kernel asks for scratch in its Prepare step; TFLite Micro plans those buffers at run time,
around the offline plan. If our plan leaves no room for them the head grows past the plan, so we
reserve room for the requests we know of. Figures are those of TFLite Micro's reference kernels,
which the host measures (``tensorflow/lite/micro/kernels/transpose_conv.cc``). Optimised
libraries (CMSIS-NN, ESP-NN) ask for more: a profile's ``arena_margin_bytes`` covers that. Any
request missing here is caught by measurement (see ``planner``), never shipped silently.
"""

from __future__ import annotations

from dataclasses import dataclass

from lepton_edge.tflite.model import Subgraph


@dataclass(frozen=True)
class ScratchRequest:
    op: int
    opcode: str
    nbytes: int


def scratch_requests(subgraph: Subgraph) -> list[ScratchRequest]:
    out = []
    for op in subgraph.operators:
        if op.opcode == "TRANSPOSE_CONV" and len(op.inputs) >= 3 and op.outputs:
            data = subgraph.tensors[op.inputs[2]]  # inputs: output_shape, weights, data[, bias]
            output = subgraph.tensors[op.outputs[0]]
            per_element = {"int8": 4, "int16": 8}.get(data.dtype, 0)
            if per_element:
                out.append(ScratchRequest(op.index, op.opcode, output.num_elements * per_element))
            if data.dtype == "int16" and len(op.inputs) >= 4 and op.inputs[3] >= 0:
                bias = subgraph.tensors[op.inputs[3]]
                if bias.dtype == "int16":
                    out.append(ScratchRequest(op.index, op.opcode, bias.num_elements * 8))
    return out
