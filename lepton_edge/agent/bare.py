"""A manifest for a bare ``.tflite`` (``--model MODEL.tflite``, only when signatures are not required).

The model is planned on the device (the plan is embedded, so the stored model is the planned one)
and described like a converter's artifact, unsigned. Its version is the store's confirmed version
(or 0), so a bare model never moves the version watermark.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lepton_edge import __version__
from lepton_edge.artifact import MANIFEST_SCHEMA, MODEL_FILE, manifest_to_bytes, sha256_hex
from lepton_edge.errors import BadInput
from lepton_edge.profiles import Profile
from lepton_edge.runtime.base import io_specs
from lepton_edge.tflite.reader import parse_model


def bare_model_artifact(model_bytes: bytes, source: Path, profile: Profile, backend: str,
                        version: int) -> tuple[bytes, bytes]:
    """``(manifest_bytes, model_bytes)`` for a bare model; the model comes back with its arena plan embedded."""
    from lepton_edge.plan.measure import tflm_available
    from lepton_edge.plan.planner import plan_model

    parse_model(model_bytes, str(source))  # one-line error for a file that is not a model
    try:
        plan = plan_model(model_bytes, str(source), profile=profile, measure=tflm_available())
        model, arena = plan.planned_model, {
            "head_bytes": plan.head_bytes, "tail_bytes": plan.tail_bytes,
            "lower_bound_bytes": plan.lower_bound_bytes, "recommended_bytes": plan.recommended_arena_bytes,
            "margin_bytes": profile.arena_margin_bytes,
            "total_bytes": plan.recommended_arena_bytes + profile.arena_margin_bytes,
            "measured": dict(plan.measured)}
    except BadInput:
        if backend == "tflm":
            raise
        model, arena = model_bytes, {}  # LiteRT plans at run time; e.g. a model with several subgraphs
    inputs, outputs = io_specs(parse_model(model, str(source)))
    manifest: dict[str, Any] = {
        "schema": MANIFEST_SCHEMA,
        "name": source.stem,
        "version": version,
        "model": {"file": MODEL_FILE, "sha256": sha256_hex(model), "size": len(model)},
        "profile": profile.name,
        "runtime": backend,
        "kernel_library": profile.kernel_library,
        "inputs": [s.to_dict() for s in inputs],
        "outputs": [s.to_dict() for s in outputs],
        "layout": "unknown",
        "arena": arena,
        "conversion": {"source": str(source), "source_format": "tflite", "tool": f"lepton-edge {__version__}"},
        "fidelity": None,
        "self_test": None,
    }
    return manifest_to_bytes(manifest), model
