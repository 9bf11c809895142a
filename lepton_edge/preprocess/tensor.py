"""Plain tensors: ``value * scale + offset`` in float32."""

from __future__ import annotations

import numpy as np

from lepton_edge.errors import BadInput
from lepton_edge.preprocess.spec import ScaleSpec


def tensor_to_input(spec: ScaleSpec, values: np.ndarray) -> np.ndarray:
    """Numbers of any shape -> float32 ``values * scale + offset``; BadInput for non-numbers or non-finite."""
    arr = np.asarray(values)
    if arr.dtype.kind not in "iuf" or arr.size == 0:
        raise BadInput(f"a tensor input must hold numbers, got {arr.dtype} with {arr.size} values")
    x = arr.astype(np.float32)
    if not np.all(np.isfinite(x)):
        raise BadInput("tensor values must be finite")
    out: np.ndarray = x * np.float32(spec.scale) + np.float32(spec.offset)
    return out
