"""One interface to run a .tflite model, whatever interpreter is underneath.

Device-side code: numpy and the interpreter packages only, never TensorFlow.
"""

from __future__ import annotations

import math
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from lepton_edge.errors import BadInput
from lepton_edge.tflite.model import Tensor, TFLiteModel


@dataclass(frozen=True)
class TensorSpec:
    """What a caller needs to feed or read one model input or output."""

    name: str
    shape: tuple[int, ...]
    dtype: str  # numpy dtype name: int8, uint8, int16, float32, ...
    scale: float | None = None  # per-tensor quantization, None for float tensors
    zero_point: int | None = None

    @property
    def num_elements(self) -> int:
        return math.prod(self.shape)  # not np.prod: this is on the API's hot path, and 20x faster

    @property
    def nbytes(self) -> int:
        return self.num_elements * np.dtype(self.dtype).itemsize

    @property
    def quantized(self) -> bool:
        return self.scale is not None and np.issubdtype(np.dtype(self.dtype), np.integer)

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "shape": list(self.shape), "dtype": self.dtype,
                "scale": self.scale, "zero_point": self.zero_point}

    @classmethod
    def from_tensor(cls, t: Tensor) -> TensorSpec:
        q = t.quantization
        if q is None or len(q.scales) != 1 or q.scales[0] == 0:
            return cls(t.name, tuple(t.shape), t.dtype, None, None)
        return cls(t.name, tuple(t.shape), t.dtype, float(q.scales[0]), int(q.zero_points[0]) if q.zero_points else 0)


def quantize(values: np.ndarray[Any, Any], spec: TensorSpec) -> np.ndarray[Any, Any]:
    """Float values -> the integer tensor ``spec`` expects (identity for float tensors)."""
    dtype = np.dtype(spec.dtype)
    values = np.asarray(values)
    if values.size != spec.num_elements:
        raise BadInput(f"input '{spec.name}' wants {spec.num_elements} values, got {values.size}")
    if not spec.quantized:
        return values.astype(dtype, copy=False).reshape(spec.shape)
    assert spec.scale is not None and spec.zero_point is not None  # quantized: from_tensor sets both
    info = np.iinfo(dtype)
    q = np.round(np.asarray(values, dtype=np.float32) / spec.scale) + spec.zero_point
    quantized: np.ndarray[Any, Any] = np.clip(q, info.min, info.max).astype(dtype).reshape(spec.shape)
    return quantized


def dequantize(values: np.ndarray[Any, Any], spec: TensorSpec) -> np.ndarray[Any, Any]:
    """An output tensor -> float values (identity for float tensors)."""
    if not spec.quantized:
        return np.asarray(values, dtype=np.float32)
    assert spec.scale is not None and spec.zero_point is not None  # quantized: from_tensor sets both
    return (np.asarray(values, dtype=np.float32) - spec.zero_point) * spec.scale


@dataclass
class RunnerStats:
    invocations: int = 0
    errors: int = 0
    last_latency_ms: float = 0.0
    total_latency_ms: float = 0.0


@dataclass
class Runner(ABC):
    """Loaded model plus interpreter. ``run`` is safe to call from several threads (it serialises)."""

    backend: str
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    arena_bytes: int | None = None
    stats: RunnerStats = field(default_factory=RunnerStats)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def __post_init__(self) -> None:
        # Per-input checks computed once: the hot path must not call np.prod or np.dtype per call.
        self._checks = tuple((np.dtype(s.dtype), int(np.prod(s.shape, dtype=np.int64)), tuple(s.shape))
                             for s in self.inputs)

    def run(self, inputs: Sequence[np.ndarray[Any, Any]]) -> list[np.ndarray[Any, Any]]:
        """Run one inference on tensors already of the model's dtypes and shapes."""
        return self.run_timed(inputs)[0]

    def run_timed(self, inputs: Sequence[np.ndarray[Any, Any]]) -> tuple[list[np.ndarray[Any, Any]], float]:
        """:meth:`run`, also returning this call's invoke latency in milliseconds."""
        checks = self._checks
        if len(inputs) != len(checks):
            raise BadInput(f"model takes {len(checks)} input(s), got {len(inputs)}")
        arrays: list[np.ndarray[Any, Any]] = []
        for given, (dtype, size, shape) in zip(inputs, checks, strict=True):
            a = given if type(given) is np.ndarray else np.asarray(given)
            if a.dtype != dtype or (a.shape != shape and a.size != size):
                spec = self.inputs[len(arrays)]
                raise BadInput(f"input '{spec.name}' wants {spec.dtype}{list(spec.shape)}, "
                               f"got {a.dtype}{list(a.shape)}")
            arrays.append(a if a.shape == shape else a.reshape(shape))
        stats = self.stats
        with self._lock:
            start = time.perf_counter()
            try:
                out = self._invoke(arrays)
            except Exception:
                stats.errors += 1
                raise
            elapsed = (time.perf_counter() - start) * 1000
            stats.invocations += 1
            stats.last_latency_ms = elapsed
            stats.total_latency_ms += elapsed
        return out, elapsed

    def run_float(self, inputs: Sequence[np.ndarray[Any, Any]]) -> list[np.ndarray[Any, Any]]:
        """Speak float to any model: quantize inputs, run, dequantize outputs."""
        q = [quantize(x, spec) for x, spec in zip(inputs, self.inputs, strict=False)]
        return [dequantize(y, spec) for y, spec in zip(self.run(q), self.outputs, strict=False)]

    @abstractmethod
    def _invoke(self, inputs: list[np.ndarray[Any, Any]]) -> list[np.ndarray[Any, Any]]:
        """Set inputs, invoke, copy outputs out; called with the lock held."""

    def close(self) -> None:  # noqa: B027 - optional: only runners holding resources override it
        """Release the interpreter."""


def io_specs(model: TFLiteModel) -> tuple[list[TensorSpec], list[TensorSpec]]:
    sg = model.main
    return ([TensorSpec.from_tensor(sg.tensors[i]) for i in sg.inputs],
            [TensorSpec.from_tensor(sg.tensors[i]) for i in sg.outputs])
