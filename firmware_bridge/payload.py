"""What ``flash`` sends: a model's exact bytes, its arena size, and its manifest when there is one.

An artifact directory carries its arena figures in its manifest. A bare ``.tflite`` is planned here
with the planner (deterministically: the same file always gives the same planned model, so that
``validate`` can tell that the device runs the plan of that file); the device gets the model with its
offline plan embedded and the smallest arena TFLite Micro runs it with.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lepton_edge.errors import BadInput

if TYPE_CHECKING:
    from firmware_bridge.kit import Artifact


@dataclass(frozen=True)
class ModelPayload:
    model: bytes
    arena_bytes: int  # what the device allocates
    margin_bytes: int | None  # kernel-library margin on top (None: unknown, take the device profile's)
    source: str
    arena_note: str = ""
    manifest: bytes | None = None
    signature: bytes | None = None
    name: str = ""
    version: int | None = None
    self_test: dict[str, Any] | None = None

    def with_arena(self, arena_bytes: int) -> ModelPayload:
        """The same model with the device's arena set to exactly ``arena_bytes`` (``flash --arena-bytes``):
        no kernel margin on top, since the figure is the caller's own."""
        from dataclasses import replace

        if arena_bytes < 16:
            raise BadInput(f"--arena-bytes {arena_bytes}: must be at least 16")
        return replace(self, arena_bytes=int(arena_bytes), margin_bytes=0,
                       arena_note=f"given (--arena-bytes {arena_bytes}; the manifest says {self.arena_bytes})")

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.model).hexdigest()

    @classmethod
    def from_artifact(cls, artifact: Artifact) -> ModelPayload:
        """From a verified :class:`lepton_edge.artifact.Artifact` (what a gateway holds)."""
        source = str(artifact.path or artifact.name)
        recommended, margin = manifest_arena(artifact.manifest, source)
        measured = ((artifact.manifest.get("arena") or {}).get("measured") or {}).get("recommended_bytes", "")
        return cls(artifact.model_bytes, recommended, margin, source, measured or "from the manifest",
                   artifact.manifest_bytes, artifact.signature, artifact.name, artifact.version,
                   artifact.manifest.get("self_test"))


def manifest_arena(manifest: dict[str, Any], source: str) -> tuple[int, int | None]:
    """(arena the device allocates, kernel margin on top or None) from an artifact's manifest."""
    arena = manifest.get("arena") or {}
    recommended = int(arena.get("recommended_bytes") or 0)
    if recommended <= 0:
        raise BadInput(f"{source}: the manifest has no arena.recommended_bytes")
    margin = arena.get("margin_bytes")
    if margin is None and arena.get("total_bytes") is not None:
        margin = int(arena["total_bytes"]) - recommended
    return recommended, None if margin is None else int(margin)


def host_arena_bytes(manifest: dict[str, Any] | bytes | None, arena_bytes: int) -> int | None:
    """The arena an x86-64 TFLite Micro here (the simulated device, validate's reference) gives a model
    whose device arena is ``arena_bytes``: the manifest's host figure when the device's arena is at least
    the manifest's recommendation (measured on a 32-bit target, it can be smaller than x86-64 needs);
    None when the manifest has no host figure or the device's arena is below the recommendation (then
    the device's own arena is what to try, and an arena too small should fail here as there)."""
    if isinstance(manifest, (bytes, bytearray)):
        import json

        try:
            manifest = json.loads(bytes(manifest))
        except ValueError:
            return None
    arena = (manifest or {}).get("arena") if isinstance(manifest, dict) else None
    if not isinstance(arena, dict):
        return None
    host, recommended = arena.get("host_recommended_bytes"), arena.get("recommended_bytes")
    if not isinstance(host, int) or isinstance(host, bool) or host <= 0:
        return None
    if isinstance(recommended, int) and arena_bytes < recommended:
        return None
    return max(host, arena_bytes)


def ram_needed(arena_bytes: int, margin_bytes: int | None, profile_margin: int | None) -> tuple[int, int, str]:
    """(bytes of RAM the arena needs, margin counted, where the margin comes from)."""
    if margin_bytes is not None:
        return arena_bytes + margin_bytes, margin_bytes, "the manifest"
    if profile_margin is not None:
        return arena_bytes + profile_margin, profile_margin, "the device's profile"
    return arena_bytes, 0, "no profile known"


def plan_for_device(model_bytes: bytes, source: str) -> tuple[bytes, int, str]:
    """(planned model, arena bytes, how the arena was found) for a bare .tflite.

    A model that already carries an ``OfflineMemoryAllocation`` plan is kept byte for byte (its plan is
    its author's); only its arena is measured. A model without one is planned here."""
    from firmware_bridge.kit import embedded_plan, plan_model

    if embedded_plan(model_bytes) is not None:
        return (model_bytes, *_arena_as_is(model_bytes, source))
    plan = plan_model(model_bytes, source, measure=True, search_seconds=0.0)
    note = plan.measured.get("recommended_arena_bytes", "")
    return plan.planned_model, int(plan.recommended_arena_bytes), note


def _arena_as_is(model_bytes: bytes, source: str) -> tuple[int, str]:
    """The smallest arena x86-64 TFLite Micro runs the model with, its own plan untouched."""
    from firmware_bridge.kit import measure_with_tflm, plan_model, tflm_available

    guess = plan_model(model_bytes, source, measure=False, search_seconds=0.0)
    kept = "the model's own OfflineMemoryAllocation plan kept"
    if not tflm_available():
        return int(guess.recommended_arena_bytes), f"estimated (tflite-micro not installed); {kept}"
    measured = measure_with_tflm(model_bytes, guess.recommended_arena_bytes, source)
    return measured.smallest_arena_bytes, f"measured (TFLite Micro, x86-64 reference kernels); {kept}"


def load_payload(path: str | Path) -> ModelPayload:
    """An artifact directory or a ``.tflite`` file, ready to flash. :class:`BadInput` on anything off."""
    target = Path(path)
    if target.is_dir():
        from firmware_bridge.kit import load_artifact

        # The device checks the signature with its own keys; here: the model matches its manifest.
        return ModelPayload.from_artifact(load_artifact(target, (), require_signature=False))
    model = read_model(target)
    planned, arena, note = plan_for_device(model, str(target))
    return ModelPayload(planned, arena, None, str(target), note, name=target.stem)


def read_model(path: Path) -> bytes:
    from firmware_bridge.kit import parse_model

    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise BadInput(f"{path}: no such file or artifact directory") from None
    except OSError as exc:
        raise BadInput(f"{path}: cannot read: {exc.strerror or exc}") from None
    parse_model(data, str(path))  # one-line error for anything that is not a .tflite
    return data


def device_model_for(path: str | Path, active_sha256: str) -> bytes | None:
    """The bytes the device runs if they are ``path``'s model (as is, or as ``flash`` planned it), else None."""
    found = reference_for(path, active_sha256)
    return None if found is None else found[0]


def reference_for(path: str | Path, active_sha256: str) -> tuple[bytes, int | None] | None:
    """(the bytes the device runs, the arena the host's reference interpreter takes for them) if they are
    ``path``'s model, else None. The arena is the HOST measurement (the manifest's
    ``host_recommended_bytes``, or the x86-64 figure ``flash`` planned a bare .tflite with), never the
    device's: a figure measured on a 32-bit target can be smaller than x86-64 TFLite Micro needs."""
    target = Path(path)
    if target.is_dir():
        from firmware_bridge.kit import artifact_arena_bytes, load_artifact

        artifact = load_artifact(target, (), require_signature=False)
        model = artifact.model_bytes
        if hashlib.sha256(model).hexdigest() != active_sha256:
            return None
        return model, artifact_arena_bytes(artifact.manifest)
    model = read_model(target)
    planned, arena, _note = plan_for_device(model, str(target))
    if hashlib.sha256(model).hexdigest() == active_sha256:
        return model, arena
    return (planned, arena) if hashlib.sha256(planned).hexdigest() == active_sha256 else None
