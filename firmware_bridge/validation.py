"""Run the same random inputs on the device and on TFLite Micro on the host, and compare.

Integer outputs must match bit for bit; float outputs within ``atol + rtol * |reference|``.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from firmware_bridge.kit import TensorSpec, TflmRunner, load_tflm

if TYPE_CHECKING:
    from firmware_bridge.host import Device

DEFAULT_ATOL = 1e-5
DEFAULT_RTOL = 1e-4


@dataclass
class ValidationReport:
    samples: int = 0
    bit_exact: int = 0
    within_tolerance: int = 0
    failed: int = 0
    max_abs_diff: float = 0.0
    integer_outputs: bool = True
    atol: float = DEFAULT_ATOL
    rtol: float = DEFAULT_RTOL
    seed: int = 0
    device_latency_us: list[int] = field(default_factory=list)
    host_latency_us: list[int] = field(default_factory=list)
    first_failure: str = ""

    @property
    def ok(self) -> bool:
        return self.failed == 0 and self.samples > 0

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        for key in ("device_latency_us", "host_latency_us"):
            values = d.pop(key)
            prefix = key[:-3]
            d[f"{prefix}_us_p50"] = int(statistics.median(values)) if values else None
            d[f"{prefix}_us_p90"] = int(np.percentile(values, 90)) if values else None
            d[f"{prefix}_us_max"] = max(values) if values else None
        d["ok"] = self.ok
        return d


def random_inputs(specs: list[TensorSpec], rng: np.random.Generator) -> list[np.ndarray[Any, Any]]:
    """One sample of every input: the whole range of integer types, standard normal floats."""
    out = []
    for spec in specs:
        dtype = np.dtype(spec.dtype)
        if dtype == np.bool_:
            out.append(rng.integers(0, 2, spec.shape).astype(np.bool_))
        elif np.issubdtype(dtype, np.integer):
            info = np.iinfo(dtype)
            out.append(rng.integers(info.min, info.max, spec.shape, dtype=dtype, endpoint=True))
        else:
            out.append(rng.standard_normal(spec.shape).astype(dtype))
    return out


def split_outputs(data: bytes, specs: list[TensorSpec]) -> list[np.ndarray[Any, Any]]:
    need = sum(s.nbytes for s in specs)
    if len(data) != need:
        raise ValueError(f"device returned {len(data)} output bytes, the model has {need}")
    arrays, at = [], 0
    for spec in specs:
        arrays.append(np.frombuffer(data, spec.dtype, int(np.prod(spec.shape)), at).reshape(spec.shape))
        at += spec.nbytes
    return arrays


def validate_on_device(device: Device, model_bytes: bytes, arena_bytes: int, *, samples: int = 10, seed: int = 0,
                       atol: float = DEFAULT_ATOL, rtol: float = DEFAULT_RTOL,
                       progress: Callable[[int, int], None] | None = None) -> ValidationReport:
    """``device``: a :class:`firmware_bridge.host.Device` whose active model is ``model_bytes``.

    ``arena_bytes``: the host reference's own arena, from the HOST measurement (x86-64 TFLite Micro;
    :func:`firmware_bridge.payload.reference_for`), never the device's: a figure measured on a 32-bit
    target can be smaller than x86-64 needs. The outputs do not depend on it."""
    reference = _host_reference(model_bytes, arena_bytes)
    report = ValidationReport(atol=atol, rtol=rtol, seed=seed)
    report.integer_outputs = all(np.issubdtype(np.dtype(s.dtype), np.integer) for s in reference.outputs)
    rng = np.random.default_rng(seed)
    try:
        for i in range(samples):
            inputs = random_inputs(reference.inputs, rng)
            answer = device.invoke(inputs)
            start = time.perf_counter_ns()
            expected = reference.run(inputs)
            report.host_latency_us.append((time.perf_counter_ns() - start) // 1000)
            report.device_latency_us.append(answer.device_us)
            got = split_outputs(answer.outputs, reference.outputs)
            _score(report, i, got, expected, reference.outputs)
            if progress is not None:
                progress(i + 1, samples)
    finally:
        reference.close()
    return report


def _host_reference(model_bytes: bytes, arena_bytes: int) -> TflmRunner:
    """TFLite Micro on the host with ``arena_bytes``; doubled (up to 3 times) if that is too small for x86-64."""
    from lepton_edge.errors import CheckFailed

    arena = max(16, int(arena_bytes))
    for attempt in range(4):
        try:
            return load_tflm(model_bytes, arena, source="host reference")
        except CheckFailed:
            if attempt == 3:
                raise
            arena *= 2
    raise AssertionError("unreachable")


def _score(report: ValidationReport, index: int, got: list[np.ndarray[Any, Any]], expected: list[np.ndarray[Any, Any]],
           specs: list[TensorSpec]) -> None:
    report.samples += 1
    exact, within = True, True
    for g, e, spec in zip(got, expected, specs, strict=False):
        e = np.asarray(e).reshape(g.shape)
        if g.tobytes() != np.ascontiguousarray(e).tobytes():
            exact = False
        diff = np.abs(g.astype(np.float64) - e.astype(np.float64))
        worst = float(np.nanmax(diff)) if diff.size else 0.0
        report.max_abs_diff = max(report.max_abs_diff, worst)
        if np.issubdtype(g.dtype, np.integer) or g.dtype == np.bool_:
            within = within and bool((g == e).all())
        else:
            within = within and bool(np.allclose(g, e, atol=report.atol, rtol=report.rtol, equal_nan=True))
        if not within and not report.first_failure:
            report.first_failure = f"sample {index}, output '{spec.name}': largest difference {worst:g}"
    report.bit_exact += exact
    report.within_tolerance += within
    report.failed += not within
