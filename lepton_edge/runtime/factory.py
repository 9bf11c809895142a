"""Pick and open a backend: ``auto`` follows the profile's runtime and what is installed."""

from __future__ import annotations

from lepton_edge.errors import BadInput
from lepton_edge.runtime import litert, tflm
from lepton_edge.runtime.base import Runner

BACKENDS = ("auto", "tflm", "litert")


def choose_backend(requested: str, profile_runtime: str | None = None) -> str:
    if requested not in BACKENDS:
        raise BadInput(f"unknown backend '{requested}' (choose from {', '.join(BACKENDS)})")
    if requested != "auto":
        return requested
    preferred = profile_runtime or "litert"
    if preferred == "tflm" and tflm.available():
        return "tflm"
    if litert.available():
        return "litert"
    if tflm.available():
        return "tflm"
    raise BadInput("no interpreter installed: install ai-edge-litert, tflite-runtime or tflite-micro")


def open_runner(model_bytes: bytes, *, backend: str = "auto", profile_runtime: str | None = None,
                arena_bytes: int | None = None, ram_budget_bytes: int | None = None, threads: int = 1,
                source: str = "model") -> Runner:
    chosen = choose_backend(backend, profile_runtime)
    if chosen == "tflm":
        if arena_bytes is None:
            raise BadInput(f"{source}: the tflm backend needs an arena size (the artifact's manifest gives one)")
        return tflm.load_tflm(model_bytes, arena_bytes, ram_budget_bytes=ram_budget_bytes, source=source)
    return litert.load_litert(model_bytes, threads=threads, source=source)
