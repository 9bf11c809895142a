"""A small, plain-data picture of a .tflite model: what the planner, inspector and runtimes need.

No TensorFlow here: this module runs on devices too.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

# TensorType enum of the TFLite schema -> (name, bytes per element). Sub-byte and
# variable-length types have no fixed size here (None).
TENSOR_TYPES: dict[int, tuple[str, int | None]] = {
    0: ("float32", 4),
    1: ("float16", 2),
    2: ("int32", 4),
    3: ("uint8", 1),
    4: ("int64", 8),
    5: ("string", None),
    6: ("bool", 1),
    7: ("int16", 2),
    8: ("complex64", 8),
    9: ("int8", 1),
    10: ("float64", 8),
    11: ("complex128", 16),
    12: ("uint64", 8),
    13: ("resource", None),
    14: ("variant", None),
    15: ("uint32", 4),
    16: ("uint16", 2),
    17: ("int4", None),
    18: ("bfloat16", 2),
}

#: TFLite Micro aligns every arena allocation to this many bytes.
ARENA_ALIGNMENT = 16


def align_up(n: int, alignment: int = ARENA_ALIGNMENT) -> int:
    return (n + alignment - 1) // alignment * alignment


@dataclass(frozen=True)
class Quantization:
    scales: tuple[float, ...]
    zero_points: tuple[int, ...]
    quantized_dimension: int = 0

    @property
    def per_channel(self) -> bool:
        return len(self.scales) > 1

    def to_dict(self) -> dict[str, Any]:
        return {
            "scale": list(self.scales) if self.per_channel else (self.scales[0] if self.scales else None),
            "zero_point": (list(self.zero_points) if self.per_channel
                           else (self.zero_points[0] if self.zero_points else None)),
            "quantized_dimension": self.quantized_dimension,
        }


@dataclass(frozen=True)
class Tensor:
    index: int
    name: str
    shape: tuple[int, ...]
    shape_signature: tuple[int, ...] | None
    dtype: str
    itemsize: int | None
    buffer: int
    has_data: bool
    is_variable: bool
    quantization: Quantization | None

    @property
    def num_elements(self) -> int:
        return math.prod(self.shape) if self.shape else 1

    @property
    def nbytes(self) -> int | None:
        """Bytes of the tensor's data, or None when its type has no fixed size (string, int4)."""
        if self.itemsize is None or any(d < 0 for d in self.shape):
            return None
        return self.num_elements * self.itemsize

    @property
    def dynamic_dims(self) -> tuple[int, ...]:
        """Dimensions whose size is only known at run time (the leading batch dimension excluded).

        Converters write ``shape_signature`` with -1 where a Keras model had ``None``. A -1 batch
        dimension is harmless (``shape`` holds 1 and every runtime uses it); any other -1 means the
        model's memory depends on its input.
        """
        dims = [i for i, d in enumerate(self.shape) if d < 0]
        if self.shape_signature is not None and len(self.shape_signature) == len(self.shape):
            dims += [i for i, d in enumerate(self.shape_signature) if d < 0 and i > 0]
        return tuple(sorted(set(dims)))


@dataclass(frozen=True)
class Operator:
    index: int
    opcode: str
    inputs: tuple[int, ...]
    outputs: tuple[int, ...]
    intermediates: tuple[int, ...] = ()


@dataclass(frozen=True)
class Subgraph:
    index: int
    name: str
    tensors: tuple[Tensor, ...]
    operators: tuple[Operator, ...]
    inputs: tuple[int, ...]
    outputs: tuple[int, ...]


@dataclass(frozen=True)
class TFLiteModel:
    """A parsed .tflite file. ``buffer_sizes[i]`` is the byte length of buffer i's data."""

    version: int
    description: str
    subgraphs: tuple[Subgraph, ...]
    buffer_sizes: tuple[int, ...]
    metadata: dict[str, int] = field(default_factory=dict)
    file_size: int = 0

    @property
    def main(self) -> Subgraph:
        return self.subgraphs[0]

    @property
    def tensor_count(self) -> int:
        """Tensors over all subgraphs: the ``n`` of TFLite Micro's offline memory plan."""
        return sum(len(sg.tensors) for sg in self.subgraphs)

    def weight_bytes(self) -> int:
        """Bytes of constant data (weights, biases, constant inputs) the model carries."""
        used = {t.buffer for sg in self.subgraphs for t in sg.tensors if t.has_data}
        return sum(self.buffer_sizes[b] for b in used)
