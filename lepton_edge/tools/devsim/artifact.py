"""An artifact the simulated devices accept: a real manifest (signed when a key is given) over model
bytes nobody runs. Tests and benches deploy it to ``fleet simulate`` devices."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from lepton_edge.artifact import write_artifact_files
from lepton_edge.fsio import atomic_directory


def sim_artifact(out: Path, *, version: int = 1, size: int = 100_000, private_key: Any = None,
                 name: str = "sim-model", seed: int | None = None) -> Path:
    """Write the artifact directory ``out`` (whole or not at all); its model is ``size`` random bytes,
    or bytes fixed by ``seed`` (the same seed, the same sha256)."""
    model = os.urandom(size) if seed is None else bytes((i * 131 + seed) % 251 for i in range(size))
    manifest = {"name": name, "version": version, "created": "2026-01-01T00:00:00Z", "profile": "linux-sbc",
                "runtime": "litert", "kernel_library": "xnnpack",
                "inputs": [{"name": "x", "shape": [1, 4], "dtype": "int8", "scale": 0.1, "zero_point": 0}],
                "outputs": [{"name": "y", "shape": [1, 2], "dtype": "int8", "scale": 0.1, "zero_point": 0}],
                "layout": "NHWC", "arena": {"head_bytes": 0, "tail_bytes": 0, "lower_bound_bytes": 0,
                                            "recommended_bytes": 0, "margin_bytes": 0, "total_bytes": 0,
                                            "measured": {}},
                "conversion": {}, "fidelity": None, "self_test": None}
    with atomic_directory(out) as staging:
        write_artifact_files(staging, model, manifest, private_key)
    return out
