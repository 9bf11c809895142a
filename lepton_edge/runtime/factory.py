"""Pick and open a backend: ``auto`` follows the profile's runtime and what is installed."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from lepton_edge.errors import BadInput
from lepton_edge.runtime import litert, tflm
from lepton_edge.runtime.base import Runner

if TYPE_CHECKING:
    from lepton_edge.profiles import Profile

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


def artifact_arena_bytes(manifest: dict[str, Any]) -> int | None:
    """The arena a TFLite Micro runner gets for an artifact: ``total_bytes`` (recommended + the
    profile's kernel margin), else ``recommended_bytes``; None when the manifest gives neither.
    When the figures were measured on a 32-bit target, the runner here (x86-64 TFLite Micro) gets at
    least the host's own figure, ``host_recommended_bytes``."""
    arena = manifest.get("arena") or {}
    for key in ("total_bytes", "recommended_bytes"):
        value = arena.get(key)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            host = arena.get("host_recommended_bytes")
            if isinstance(host, int) and not isinstance(host, bool) and host > value:
                return host
            return value
    return None


def open_artifact_runner(manifest: dict[str, Any], model_bytes: bytes, *, backend: str = "auto",
                         profile: Profile | None = None, threads: int = 1, source: str = "model") -> Runner:
    """Open a verified artifact's model with the arena its manifest plans, within ``profile``'s RAM budget.

    ``auto`` follows the profile's runtime (the manifest's when there is no profile). On ``tflm`` an
    arena larger than the profile's RAM share is refused before the interpreter is created.
    """
    profile_runtime = profile.runtime if profile is not None else manifest.get("runtime")
    return open_runner(model_bytes, backend=backend, profile_runtime=profile_runtime,
                       arena_bytes=artifact_arena_bytes(manifest),
                       ram_budget_bytes=profile.ram_budget_bytes if profile is not None else None,
                       threads=threads, source=source)
