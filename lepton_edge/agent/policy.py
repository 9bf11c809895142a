"""What a device accepts into its model store: trusted signers, and models that fit it.

The checks after the signature and hash (those live in :mod:`lepton_edge.artifact`): the version
never goes below the confirmed one, the runtime this device uses runs every operator, the model fits
the flash share, and the arena fits the RAM share (``arena.total_bytes`` on TFLite Micro; activations
plus the model on LiteRT, which keeps both in memory).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from lepton_edge.errors import BadInput, CheckFailed
from lepton_edge.profiles import Profile
from lepton_edge.runtime.factory import artifact_arena_bytes
from lepton_edge.runtime.op_support import TFLM_WHEEL, unsupported_ops
from lepton_edge.tflite.reader import parse_model

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey


@dataclass(frozen=True)
class InstallPolicy:
    """``backend`` is the resolved runtime ("tflm" or "litert"); None skips the runtime and RAM checks."""

    trusted_keys: tuple[Ed25519PublicKey, ...] = ()
    require_signature: bool = True
    profile: Profile | None = None
    backend: str | None = None


def check_version(manifest: dict[str, Any], confirmed_version: int | None, source: str = "manifest") -> None:
    if confirmed_version is not None and manifest["version"] < confirmed_version:
        raise BadInput(f"{source}: version {manifest['version']} is lower than the confirmed version "
                       f"{confirmed_version}; versions only grow")


def check_fits(manifest: dict[str, Any], model_bytes: bytes, policy: InstallPolicy, source: str = "model") -> None:
    """Raise :class:`CheckFailed` when this device cannot run the model (BadInput when it is not a model)."""
    model = parse_model(model_bytes, source)
    profile = policy.profile
    if policy.backend is not None:
        opcodes = [op.opcode for sg in model.subgraphs for op in sg.operators]
        # The agent runs TFLite Micro's Python wheel (every upstream kernel), not the MCU firmware.
        missing = unsupported_ops(opcodes, TFLM_WHEEL if policy.backend == "tflm" else policy.backend)
        if missing:
            raise CheckFailed(f"{source}: the {policy.backend} runtime lacks operator(s) {', '.join(missing)}")
    if profile is None:
        return
    if len(model_bytes) > profile.flash_budget_bytes:
        raise CheckFailed(f"{source}: model of {len(model_bytes)} bytes exceeds {profile.name}'s flash budget "
                          f"of {profile.flash_budget_bytes} bytes")
    check_ram(manifest, len(model_bytes), profile, policy.backend, source)


def ram_needed(manifest: dict[str, Any], model_size: int, backend: str | None, source: str = "model") -> int | None:
    """Bytes of RAM the model takes on ``backend``: the whole arena on TFLite Micro; activations plus the
    model on LiteRT. None for an unknown backend (nothing to check)."""
    if backend == "tflm":
        arena = artifact_arena_bytes(manifest)
        if arena is None:
            raise CheckFailed(f"{source}: the manifest gives no arena size, which TFLite Micro needs")
        return arena
    if backend == "litert":
        head = (manifest.get("arena") or {}).get("head_bytes")
        return (head if isinstance(head, int) and not isinstance(head, bool) else 0) + model_size
    return None


def check_ram(manifest: dict[str, Any], model_size: int, profile: Profile | None, backend: str | None,
              source: str = "model") -> None:
    """The RAM half of :func:`check_fits`; it needs only the manifest, so an update is checked before download."""
    if profile is None:
        return
    needed = ram_needed(manifest, model_size, backend, source)
    if needed is not None and needed > profile.ram_budget_bytes:
        raise CheckFailed(f"{source}: needs {needed} bytes of RAM on {backend}, {profile.name}'s budget is "
                          f"{profile.ram_budget_bytes} bytes")
