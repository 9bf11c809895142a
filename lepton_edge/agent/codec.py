"""Request and response bodies of ``POST /v1/infer``: JSON and raw tensor bytes.

JSON: ``{"inputs": ..., "quantized": false}``

* one input: ``inputs`` holds its values, flat or nested (row-major), e.g. ``[0.1, 0.2, ...]``;
* several inputs: ``inputs`` is a list with one entry per input in the model's order, or an object
  keyed by input name;
* ``quantized: false`` (default): values are real numbers, quantized for integer inputs and outputs
  are dequantized; ``quantized: true``: values are the tensors' own integers, answered in kind.

Answer: ``{"outputs": [[...], ...], "latency_ms": x, "model": name, "version": n}``: one flat
(row-major) list per output, in the model's output order, even for a single output.

Raw bytes (``Content-Type: application/octet-stream``): the body is every input tensor's bytes in
the model's dtype, concatenated in input order; the answer is every output tensor's bytes,
concatenated in output order, with ``X-Output-Bytes`` giving each output's length (comma-separated)
and ``X-Latency-Ms`` the interpreter time. An optional ``X-Input-Dtype`` request header
(comma-separated, one per input) is checked against the model's input dtypes.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import numpy as np

from lepton_edge.errors import ApiError
from lepton_edge.runtime.base import TensorSpec, dequantize, quantize

_KIND_NAMES = {"U": "strings", "b": "booleans", "O": "ragged lists or mixed values"}


def _describe(spec: TensorSpec) -> str:
    return f"{spec.dtype}{list(spec.shape)}"


def _entries(inputs: Any, specs: Sequence[TensorSpec]) -> list[Any]:
    if isinstance(inputs, dict):
        names = [s.name for s in specs]
        if sorted(inputs) != sorted(names):
            raise ApiError(400, f"'inputs' must name exactly the model's inputs: {', '.join(names)}")
        return [inputs[n] for n in names]
    if not isinstance(inputs, list):
        raise ApiError(400, "'inputs' must be a list of values (or an object keyed by input name)")
    if len(specs) == 1:
        return [inputs]  # a single input's values, flat or nested
    if len(inputs) != len(specs):
        raise ApiError(400, f"the model takes {len(specs)} inputs: 'inputs' must hold one entry per input, "
                            f"got {len(inputs)}")
    return inputs


def _to_tensor(values: Any, spec: TensorSpec, quantized: bool) -> np.ndarray[Any, Any]:
    where = f"input '{spec.name}' ({_describe(spec)})"
    try:
        arr = np.asarray(values)
    except ValueError:
        raise ApiError(400, f"{where}: values must be numbers in lists of equal length") from None
    if arr.dtype.kind not in "iuf":
        got = _KIND_NAMES.get(arr.dtype.kind, "values of another type")
        raise ApiError(400, f"{where}: values must be numbers in lists of equal length, got {got}")
    if arr.size != spec.num_elements:
        raise ApiError(400, f"{where}: needs {spec.num_elements} values, got {arr.size}")
    if arr.dtype.kind == "f" and not np.all(np.isfinite(arr)):
        raise ApiError(400, f"{where}: values must be finite")
    dtype = np.dtype(spec.dtype)
    if not quantized:
        return quantize(arr.astype(np.float32, copy=False), spec)
    if np.issubdtype(dtype, np.integer):
        info = np.iinfo(dtype)
        if arr.dtype.kind == "f" and not np.all(arr == np.round(arr)):
            raise ApiError(400, f"{where}: with \"quantized\": true values must be integers")
        if arr.min() < info.min or arr.max() > info.max:
            raise ApiError(400, f"{where}: values must lie in [{info.min}, {info.max}] for {dtype}")
    return arr.astype(dtype).reshape(spec.shape)


def decode_json(body: bytes, specs: Sequence[TensorSpec]) -> tuple[list[np.ndarray[Any, Any]], bool]:
    """The input tensors of a JSON request, and whether the caller speaks the model's integers."""
    try:
        request = json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ApiError(400, f"body is not valid JSON ({exc})") from None
    if not isinstance(request, dict) or "inputs" not in request:
        raise ApiError(400, "body must be a JSON object with 'inputs'")
    quantized = request.get("quantized", False)
    if not isinstance(quantized, bool):
        raise ApiError(400, "'quantized' must be true or false")
    entries = _entries(request["inputs"], specs)
    return [_to_tensor(v, s, quantized) for v, s in zip(entries, specs, strict=False)], quantized


def encode_json(outputs: Sequence[np.ndarray[Any, Any]], specs: Sequence[TensorSpec], *, quantized: bool,
                latency_ms: float, name: str, version: int) -> bytes:
    values = [(o if quantized else dequantize(o, s)).ravel().tolist() for o, s in zip(outputs, specs, strict=False)]
    return json.dumps({"outputs": values, "latency_ms": round(latency_ms, 4), "model": name,
                       "version": version}).encode()


def decode_binary(body: bytes, specs: Sequence[TensorSpec],
                  dtype_header: str | None = None) -> list[np.ndarray[Any, Any]]:
    """Split raw bytes (every input in order, model dtypes) into tensors."""
    if dtype_header is not None:
        claimed = [d.strip().lower() for d in dtype_header.split(",")]
        wanted = [s.dtype for s in specs]
        if claimed != wanted:
            raise ApiError(400, f"X-Input-Dtype {','.join(claimed)} does not match the model's input dtype(s) "
                                f"{','.join(wanted)}")
    try:
        return split_tensor_bytes(body, specs)
    except ValueError:
        raise ApiError(400, f"body has {len(body)} bytes; the input tensor(s) "
                            f"{', '.join(_describe(s) for s in specs)} take {sum(s.nbytes for s in specs)}") from None


def split_tensor_bytes(raw: bytes, specs: Sequence[TensorSpec]) -> list[np.ndarray[Any, Any]]:
    """Raw bytes of several tensors, concatenated in order -> one (read-only) array each; ValueError on a
    size mismatch."""
    expected = sum(s.nbytes for s in specs)
    if len(raw) != expected:
        raise ValueError(f"{len(raw)} bytes where the tensors take {expected}")
    arrays, offset = [], 0
    for s in specs:
        arrays.append(np.frombuffer(raw, np.dtype(s.dtype), s.num_elements, offset).reshape(s.shape))
        offset += s.nbytes
    return arrays


def encode_binary(outputs: Sequence[np.ndarray[Any, Any]]) -> bytes:
    if len(outputs) == 1:
        return outputs[0].tobytes()
    return b"".join(o.tobytes() for o in outputs)
