"""Arena figures measured on the target: the emulated core that plays a profile, with its kernels.

``plan --measure`` and ``convert --measure`` take ``host``, ``target`` or ``auto`` (the default):

- ``host``: TFLite Micro on x86-64 with reference kernels (the ``tflite-micro`` wheel), as before;
  a ``tflm`` profile adds its kernel-library margin on top.
- ``target``: the firmware build of the board that plays the profile (stm32l4r5 -> qemu-m4,
  stm32h743 -> qemu-m7) runs the model under QEMU with the profile's kernel library (CMSIS-NN) and
  reports TFLite Micro's head, tail and the smallest arena it allocates and invokes with. That
  figure includes the kernels' scratch, so no margin is added. Needs QEMU and a cached build;
  never builds one (``lepton-edge firmware build --board ...`` does).
- ``auto``: ``target`` when both are there, else ``host``.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from lepton_edge.errors import CheckFailed

if TYPE_CHECKING:
    from lepton_edge.profiles import Profile

MEASURE_MODES = ("auto", "host", "target")
HOST_LABEL = "host x86-64 tflite-micro"
QEMU = "qemu-system-arm"


@dataclass(frozen=True)
class TargetFigures:
    head_bytes: int
    tail_bytes: int
    used_bytes: int
    min_arena_bytes: int


@dataclass(frozen=True)
class TargetMeasurer:
    """A cached firmware build of the emulated board that plays a profile."""

    board: Any  # lepton_edge.firmware_build.boards.Board
    firmware: Any  # lepton_edge.firmware_build.build.FirmwareBuild

    @property
    def label(self) -> str:
        """``cortex-m4 (qemu mps2-an386), cmsis-nn``."""
        label: str = self.board.measured_on()
        return label

    def measure(self, model_bytes: bytes) -> TargetFigures:
        """Run the firmware's arena probe on ``model_bytes``; :class:`CheckFailed` when it cannot run it."""
        from lepton_edge.firmware_build.launch import run_probe

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


def resolve_measure(mode: str, profile: Profile | None) -> TargetMeasurer | None:
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
    from lepton_edge.firmware_build.boards import board_for_profile

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
    try:
        from lepton_edge.firmware_build.build import cached_build
    except ImportError:
        fw = None
    else:
        fw = cached_build(board.name)
    if fw is None:
        if explicit:
            raise CheckFailed(f"--measure target: no cached firmware build for {board.name} "
                              f"(it plays {profile.name}); run: {_build_command(board.name)}")
        return None
    return TargetMeasurer(board, fw)
