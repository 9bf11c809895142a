"""The health check a newly activated model must pass before it is confirmed.

Input: the manifest's self-test (``self_test.input_b64``: the input tensors' raw bytes, concatenated
in input order) or, without one, zeros (each input's representation of 0.0: its zero point when
quantized). The model passes when

* every output is finite,
* the outputs' sha256 (raw bytes, concatenated in output order) equals
  ``self_test.output_sha256[<backend>]`` where the manifest gives one for this backend,
* the median latency of ``runs`` further invocations is within the budget:
  ``self_test.latency_budget_ms`` from the manifest if present, else ``[health] latency_budget_ms``
  of the agent's config (default 1000 ms, generous on purpose: a Raspberry Pi Zero is slow, and the
  check is there to catch a model that hangs or crawls, not to benchmark it).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import math
import statistics
from dataclasses import dataclass
from typing import Any

import numpy as np

from lepton_edge.agent.codec import split_tensor_bytes
from lepton_edge.runtime.base import Runner, TensorSpec, quantize


@dataclass(frozen=True)
class HealthReport:
    ok: bool
    reason: str  # "ok" or why it failed
    source: str  # "self_test" or "zeros"
    digest_checked: bool
    latency_ms: float | None  # median of the timed runs
    budget_ms: float

    def to_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "reason": self.reason, "source": self.source,
                "digest_checked": self.digest_checked, "latency_ms": self.latency_ms, "budget_ms": self.budget_ms}


def zero_inputs(specs: list[TensorSpec]) -> list[np.ndarray[Any, Any]]:
    """Each input's encoding of 0.0."""
    return [quantize(np.zeros(s.num_elements, np.float32), s) for s in specs]


def outputs_digest(outputs: list[np.ndarray[Any, Any]]) -> str:
    h = hashlib.sha256()
    for o in outputs:
        h.update(np.ascontiguousarray(o).tobytes())
    return h.hexdigest()


def latency_budget_ms(manifest: dict[str, Any], default_ms: float) -> float:
    value = (manifest.get("self_test") or {}).get("latency_budget_ms")
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value > 0:
        return float(value)
    return default_ms


def check_health(runner: Runner, manifest: dict[str, Any], *, default_budget_ms: float, runs: int = 5) -> HealthReport:
    budget = latency_budget_ms(manifest, default_budget_ms)
    self_test = manifest.get("self_test") or {}

    def fail(reason: str, source: str, digest: bool = False, latency: float | None = None) -> HealthReport:
        return HealthReport(False, reason, source, digest, latency, budget)

    source = "zeros"
    inputs = zero_inputs(runner.inputs)
    if isinstance(self_test.get("input_b64"), str):
        source = "self_test"
        try:
            inputs = split_tensor_bytes(base64.b64decode(self_test["input_b64"], validate=True), runner.inputs)
        except (binascii.Error, ValueError) as exc:
            return fail(f"self-test input unusable: {exc}", source)
    try:
        outputs = runner.run(inputs)
    except Exception as exc:
        return fail(f"inference failed: {exc}", source)
    for spec, out in zip(runner.outputs, outputs, strict=False):
        if np.issubdtype(out.dtype, np.floating) and not np.all(np.isfinite(out)):
            return fail(f"output '{spec.name}' is not finite", source)
    expected = (self_test.get("output_sha256") or {}).get(runner.backend)
    digest_checked = isinstance(expected, str)
    if isinstance(expected, str) and outputs_digest(outputs) != expected.lower():
        return fail(f"self-test output digest differs from the manifest's for {runner.backend}", source, True)
    times = []
    for _ in range(max(1, runs)):
        try:
            times.append(runner.run_timed(inputs)[1])
        except Exception as exc:
            return fail(f"inference failed: {exc}", source, digest_checked)
    latency = statistics.median(times)
    if latency > budget:
        return fail(f"latency {latency:.2f} ms exceeds the budget of {budget:g} ms", source, digest_checked, latency)
    return HealthReport(True, "ok", source, digest_checked, round(latency, 4), budget)
