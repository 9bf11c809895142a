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

from lepton_edge.errors import BadInput


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
    self_test: dict | None = None

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.model).hexdigest()

    @classmethod
    def from_artifact(cls, artifact) -> "ModelPayload":
        """From a verified :class:`lepton_edge.artifact.Artifact` (what a gateway holds)."""
        source = str(artifact.path or artifact.name)
        recommended, margin = manifest_arena(artifact.manifest, source)
        measured = ((artifact.manifest.get("arena") or {}).get("measured") or {}).get("recommended_bytes", "")
        return cls(artifact.model_bytes, recommended, margin, source, measured or "from the manifest",
                   artifact.manifest_bytes, artifact.signature, artifact.name, artifact.version,
                   artifact.manifest.get("self_test"))


def manifest_arena(manifest: dict, source: str) -> tuple[int, int | None]:
    """(arena the device allocates, kernel margin on top or None) from an artifact's manifest."""
    arena = manifest.get("arena") or {}
    recommended = int(arena.get("recommended_bytes") or 0)
    if recommended <= 0:
        raise BadInput(f"{source}: the manifest has no arena.recommended_bytes")
    margin = arena.get("margin_bytes")
    if margin is None and arena.get("total_bytes") is not None:
        margin = int(arena["total_bytes"]) - recommended
    return recommended, None if margin is None else int(margin)


def ram_needed(arena_bytes: int, margin_bytes: int | None, profile_margin: int | None) -> tuple[int, int, str]:
    """(bytes of RAM the arena needs, margin counted, where the margin comes from)."""
    if margin_bytes is not None:
        return arena_bytes + margin_bytes, margin_bytes, "the manifest"
    if profile_margin is not None:
        return arena_bytes + profile_margin, profile_margin, "the device's profile"
    return arena_bytes, 0, "no profile known"


def plan_for_device(model_bytes: bytes, source: str) -> tuple[bytes, int, str]:
    """(planned model, arena bytes, how the arena was found) for a bare .tflite."""
    from lepton_edge.plan.planner import plan_model

    plan = plan_model(model_bytes, source, measure=True, search_seconds=0.0)
    note = plan.measured.get("recommended_arena_bytes", "")
    return plan.planned_model, int(plan.recommended_arena_bytes), note


def load_payload(path: str | Path) -> ModelPayload:
    """An artifact directory or a ``.tflite`` file, ready to flash. :class:`BadInput` on anything off."""
    target = Path(path)
    if target.is_dir():
        from lepton_edge.artifact import load_artifact

        # The device checks the signature with its own keys; here: the model matches its manifest.
        return ModelPayload.from_artifact(load_artifact(target, (), require_signature=False))
    model = read_model(target)
    planned, arena, note = plan_for_device(model, str(target))
    return ModelPayload(planned, arena, None, str(target), note, name=target.stem)


def read_model(path: Path) -> bytes:
    from lepton_edge.tflite.reader import parse_model

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
    target = Path(path)
    if target.is_dir():
        from lepton_edge.artifact import load_artifact

        model = load_artifact(target, (), require_signature=False).model_bytes
        return model if hashlib.sha256(model).hexdigest() == active_sha256 else None
    model = read_model(target)
    if hashlib.sha256(model).hexdigest() == active_sha256:
        return model
    planned, _arena, _note = plan_for_device(model, str(target))
    return planned if hashlib.sha256(planned).hexdigest() == active_sha256 else None
