"""Read a .tflite flatbuffer into :class:`~lepton_edge.tflite.model.TFLiteModel` without TensorFlow.

The Python flatbuffers runtime has no verifier, so a corrupt file can make it raise almost any
exception, or point many vectors at the same table so that reading never ends. This reader bounds
every count by the file's size and turns every failure into one :class:`BadInput` line.
"""

from __future__ import annotations

import os
import struct
from pathlib import Path
from typing import Any

from lepton_edge.errors import BadInput
from lepton_edge.tflite.model import TENSOR_TYPES, Operator, Quantization, Subgraph, Tensor, TFLiteModel
from lepton_edge.tflite.vendor import schema_py_generated as fb

_BUILTIN_NAMES: dict[int, str] = {
    value: name
    for name, value in vars(fb.BuiltinOperator).items()
    if not name.startswith("_") and isinstance(value, int)
}

#: Exceptions the flatbuffers runtime raises on malformed data.
_PARSE_ERRORS = (IndexError, struct.error, ValueError, TypeError, OverflowError, UnicodeDecodeError,
                 AttributeError, KeyError, RecursionError, MemoryError)

FILE_IDENTIFIER = b"TFL3"

#: No tensor holds more elements than this; larger shapes only come from damaged files (and would
#: make MAC and size arithmetic produce integers too long to print).
MAX_TENSOR_ELEMENTS = 2**62


class _Corrupt(BadInput):
    """What is wrong inside the file; :func:`parse_model` names the file."""


class _ReadBudget:
    """Vector elements and string bytes read so far, at most one per byte of the file.

    Flatbuffers may point many tensors at one shape vector or name: legal, never written by a
    converter, and without this bound a file of 100 KB could make the reader run for minutes and
    hold gigabytes. A sound file stores every element once, in at least one byte.
    """

    def __init__(self, size: int) -> None:
        self.left = size

    def take(self, n: int, what: str) -> None:
        self.left -= n
        if self.left < 0:
            raise _Corrupt(f"{what}: more data than the file holds (shared vectors)")


def builtin_name(code: int) -> str:
    return _BUILTIN_NAMES.get(code, f"BUILTIN_{code}")


def read_model_file(path: str | os.PathLike[str]) -> TFLiteModel:
    """Parse the model at ``path``; raise :class:`BadInput` naming the file on any problem."""
    p = Path(path)
    if p.is_dir():
        raise BadInput(f"{p}: is a directory, not a .tflite file")
    try:
        data = p.read_bytes()
    except FileNotFoundError:
        raise BadInput(f"{p}: no such file") from None
    except OSError as exc:
        raise BadInput(f"{p}: cannot read: {exc.strerror or exc}") from None
    return parse_model(data, source=str(p))


def parse_model(data: bytes, source: str = "model") -> TFLiteModel:
    """Parse .tflite bytes; raise :class:`BadInput` for anything that is not a sound TFLite model."""
    if len(data) < 8 or data[4:8] != FILE_IDENTIFIER:
        raise BadInput(f"{source}: not a TFLite model (no 'TFL3' file identifier)")
    try:
        return _parse(bytes(data), source)
    except _Corrupt as exc:
        raise BadInput(f"{source}: corrupt or truncated TFLite model ({exc})") from None
    except _PARSE_ERRORS as exc:
        raise BadInput(f"{source}: corrupt or truncated TFLite model ({type(exc).__name__})") from None


def _check_count(n: int, limit: int, what: str) -> int:
    if n < 0 or n > limit:
        raise _Corrupt(f"{what} count {n} impossible for a file of this size")
    return n


def _parse(data: bytes, source: str) -> TFLiteModel:
    size = len(data)
    root = struct.unpack_from("<I", data, 0)[0]
    if root + 4 > size:
        raise _Corrupt("root offset past the end")
    model = fb.Model.GetRootAs(data, 0)
    limit = size // 4  # every table or offset takes at least 4 bytes
    reads = _ReadBudget(size)

    opcodes: list[str] = []
    for i in range(_check_count(model.OperatorCodesLength(), limit, "operator code")):
        oc = model.OperatorCodes(i)
        code = max(oc.BuiltinCode(), oc.DeprecatedBuiltinCode())
        if code == fb.BuiltinOperator.CUSTOM:
            opcodes.append(f"CUSTOM:{_text(oc.CustomCode(), reads, 'custom code') or '?'}")
        else:
            opcodes.append(builtin_name(code))

    n_buffers = _check_count(model.BuffersLength(), limit, "buffer")
    buffer_sizes = []
    for i in range(n_buffers):
        b = model.Buffers(i)
        n = b.DataLength()
        if n > size:
            raise _Corrupt(f"buffer {i} claims {n} bytes")
        if n == 0 and b.Size() > 1:  # large models keep data after the flatbuffer, by offset
            n = b.Size()
        buffer_sizes.append(n)

    budget = limit  # tables read in total: bounds files whose vectors share tables
    subgraphs = []
    for s in range(_check_count(model.SubgraphsLength(), limit, "subgraph")):
        sg = model.Subgraphs(s)
        n_tensors = _check_count(sg.TensorsLength(), limit, "tensor")
        n_ops = _check_count(sg.OperatorsLength(), limit, "operator")
        budget -= n_tensors + n_ops
        if budget < 0:
            raise _Corrupt("more tensors and operators than the file can hold")
        tensors = tuple(_read_tensor(sg.Tensors(t), t, n_buffers, buffer_sizes, reads) for t in range(n_tensors))
        operators = tuple(_read_operator(sg.Operators(o), o, opcodes, n_tensors, reads) for o in range(n_ops))
        inputs = _index_vector(sg.InputsAsNumpy(), n_tensors, "subgraph input", reads, allow_optional=False)
        outputs = _index_vector(sg.OutputsAsNumpy(), n_tensors, "subgraph output", reads, allow_optional=False)
        name = _text(sg.Name(), reads, "subgraph name")
        subgraphs.append(Subgraph(s, name, tensors, operators, inputs, outputs))
    if not subgraphs:
        raise _Corrupt("no subgraph")

    metadata: dict[str, int] = {}
    for i in range(_check_count(model.MetadataLength(), limit, "metadata")):
        m = model.Metadata(i)
        metadata[_text(m.Name(), reads, "metadata name")] = m.Buffer()
    return TFLiteModel(
        version=model.Version(),
        description=_text(model.Description(), reads, "description"),
        subgraphs=tuple(subgraphs),
        buffer_sizes=tuple(buffer_sizes),
        metadata=metadata,
        file_size=size,
    )


def _text(raw: bytes | None, reads: _ReadBudget, what: str) -> str:
    if not raw:
        return ""
    reads.take(len(raw), what)
    return raw.decode("utf-8", "replace")


def _int_vector(arr: Any, reads: _ReadBudget, what: str) -> tuple[int, ...]:
    if isinstance(arr, int):  # flatbuffers returns 0 for an absent vector
        return ()
    reads.take(len(arr), what)
    return tuple(int(v) for v in arr)


def _index_vector(arr: Any, n_tensors: int, what: str, reads: _ReadBudget, *, allow_optional: bool) -> tuple[int, ...]:
    values = _int_vector(arr, reads, what)
    low = -1 if allow_optional else 0
    for v in values:
        if v < low or v >= n_tensors:
            raise _Corrupt(f"{what} refers to tensor {v} of {n_tensors}")
    return values


def _read_tensor(t: fb.Tensor, index: int, n_buffers: int, buffer_sizes: list[int], reads: _ReadBudget) -> Tensor:
    shape = _int_vector(t.ShapeAsNumpy(), reads, f"tensor {index} shape")
    elements = 1
    for d in shape:
        elements *= abs(d)
        if elements > MAX_TENSOR_ELEMENTS:
            raise _Corrupt(f"tensor {index} has an impossible shape")
    sig = None
    if not t.ShapeSignatureIsNone():
        sig = _int_vector(t.ShapeSignatureAsNumpy(), reads, f"tensor {index} shape signature")
    type_code = t.Type()
    dtype, itemsize = TENSOR_TYPES.get(type_code, (f"type{type_code}", None))
    buffer = t.Buffer()
    if buffer < 0 or (n_buffers and buffer >= n_buffers):
        raise _Corrupt(f"tensor {index} refers to buffer {buffer} of {n_buffers}")
    has_data = bool(n_buffers) and buffer_sizes[buffer] > 0
    quant = None
    q = t.Quantization()
    if q is not None:
        scales = q.ScaleAsNumpy()
        zps = q.ZeroPointAsNumpy()
        if not isinstance(scales, int) and len(scales):
            reads.take(len(scales) + (0 if isinstance(zps, int) else len(zps)), f"tensor {index} quantization")
            quant = Quantization(
                scales=tuple(float(s) for s in scales),
                zero_points=tuple(int(z) for z in zps) if not isinstance(zps, int) else (),
                quantized_dimension=q.QuantizedDimension(),
            )
    name = _text(t.Name(), reads, f"tensor {index} name")
    return Tensor(
        index=index,
        name=name or f"tensor_{index}",
        shape=shape,
        shape_signature=sig,
        dtype=dtype,
        itemsize=itemsize,
        buffer=buffer,
        has_data=has_data,
        is_variable=bool(t.IsVariable()),
        quantization=quant,
    )


def _read_operator(op: fb.Operator, index: int, opcodes: list[str], n_tensors: int, reads: _ReadBudget) -> Operator:
    idx = op.OpcodeIndex()
    if idx >= len(opcodes):
        raise _Corrupt(f"operator {index} uses opcode {idx} of {len(opcodes)}")
    inter = op.IntermediatesAsNumpy()
    return Operator(
        index=index,
        opcode=opcodes[idx],
        inputs=_index_vector(op.InputsAsNumpy(), n_tensors, f"operator {index} input", reads, allow_optional=True),
        outputs=_index_vector(op.OutputsAsNumpy(), n_tensors, f"operator {index} output", reads, allow_optional=True),
        intermediates=_index_vector(inter, n_tensors, f"operator {index} intermediate", reads, allow_optional=True),
    )
