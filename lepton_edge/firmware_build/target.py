"""Measure arenas on the target: the cached firmware build of the emulated board that plays a profile,
run under QEMU by its arena probe. ``resolve_measure`` turns ``--measure auto|host|target`` into one
(or None for the host figures); the planner takes it as a :class:`~lepton_edge.plan.target.TargetMeasurer`.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from typing import TYPE_CHECKING

from lepton_edge.errors import CheckFailed
from lepton_edge.firmware_build.boards import Board, board_for_profile
from lepton_edge.firmware_build.build import FirmwareBuild, cached_build
from lepton_edge.firmware_build.launch import run_probe
from lepton_edge.plan.target import MEASURE_MODES, TargetFigures

if TYPE_CHECKING:
    from lepton_edge.profiles import Profile

QEMU = "qemu-system-arm"


@dataclass(frozen=True)
class FirmwareTarget:
    """A cached firmware build of the emulated board that plays a profile (a :class:`TargetMeasurer`)."""

    board: Board
    firmware: FirmwareBuild

    @property
    def label(self) -> str:
        """``cortex-m4 (qemu mps2-an386), cmsis-nn``."""
        return self.board.measured_on()

    def measure(self, model_bytes: bytes) -> TargetFigures:
        """Run the firmware's arena probe on ``model_bytes``; :class:`CheckFailed` when it cannot run it."""
        try:
            r = run_probe(self.firmware, model_bytes)
        except CheckFailed:
            raise
        except Exception as exc:  # the probe's own words, as one line
            raise CheckFailed(f"the {self.board.name} firmware could not measure the model: "
                              f"{str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") from None
        return TargetFigures(int(r.head), int(r.tail), int(r.used), int(r.min_arena))


def _build_command(board_name: str) -> str:
    return f"lepton-edge firmware build --board {board_name}"


def resolve_measure(mode: str, profile: Profile | None) -> FirmwareTarget | None:
    """The target to measure on for ``mode`` and ``profile``, or None for the host figures.

    ``target`` that cannot be honoured is one line of :class:`CheckFailed` (exit 1) naming the command
    that builds the firmware; ``auto`` quietly falls back to the host.
    """
    if mode not in MEASURE_MODES:
        raise ValueError(f"--measure {mode!r}: expected one of {', '.join(MEASURE_MODES)}")
    if mode == "host":
        return None
    explicit = mode == "target"
    if profile is None:
        if explicit:
            raise CheckFailed("--measure target needs --profile: the profile says which core and kernels to measure on")
        return None
    board = board_for_profile(profile.name)
    if board is None or not board.emulated:
        if explicit:
            raise CheckFailed(f"--measure target: no emulated board plays {profile.name} ({profile.core}); "
                              "its figures are measured on the host (--measure host)")
        return None
    if shutil.which(QEMU) is None:
        if explicit:
            raise CheckFailed(f"--measure target: {QEMU} is not installed (make setup installs it); then "
                              f"{_build_command(board.name)}")
        return None
    fw = cached_build(board.name)
    if fw is None:
        if explicit:
            raise CheckFailed(f"--measure target: no cached firmware build for {board.name} "
                              f"(it plays {profile.name}); run: {_build_command(board.name)}")
        return None
    return FirmwareTarget(board, fw)
