"""The boards the reference firmware has ports for (``firmware_bridge/firmware/boards/<name>/``)."""

from __future__ import annotations

import difflib
from dataclasses import dataclass

from lepton_edge.errors import BadInput


@dataclass(frozen=True)
class Board:
    """One port of the firmware: the profile it plays, the core it runs on, how it runs here."""

    name: str
    profile: str
    core: str                 # "cortex-m4", "cortex-m7", "x86-64"
    machine: str | None       # QEMU machine (-M), None when it does not run under QEMU
    kernels: str              # "cmsis-nn" or "reference"
    runs_here: bool           # False: it only compiles and links here (a real board)

    @property
    def is_host(self) -> bool:
        """The Linux port: an executable, not an ELF for a microcontroller."""
        return self.machine is None and self.runs_here

    @property
    def emulated(self) -> bool:
        return self.machine is not None

    def measured_on(self) -> str:
        """How arena figures measured on this board are labelled, e.g. ``cortex-m4 (qemu mps2-an386), cmsis-nn``."""
        if self.machine:
            return f"{self.core} (qemu {self.machine}), {self.kernels}"
        return f"{self.core} ({self.name}), {self.kernels}"


BOARDS: dict[str, Board] = {
    b.name: b for b in (
        Board("host", "stm32l4r5", "x86-64", None, "reference", True),
        Board("qemu-m4", "stm32l4r5", "cortex-m4", "mps2-an386", "cmsis-nn", True),
        Board("qemu-m7", "stm32h743", "cortex-m7", "mps2-an500", "cmsis-nn", True),
        Board("nucleo-l4r5zi", "stm32l4r5", "cortex-m4", None, "cmsis-nn", False),
    )
}

# The emulated board that plays each profile (the one whose figures stand for that chip).
_PLAYS = {"stm32l4r5": "qemu-m4", "stm32h743": "qemu-m7"}


def board_for_profile(profile: str) -> Board | None:
    """The emulated board that plays ``profile`` (stm32l4r5 -> qemu-m4, stm32h743 -> qemu-m7), or None."""
    name = _PLAYS.get(profile)
    return BOARDS[name] if name else None


def get_board(name: str) -> Board:
    """The board called ``name``; a wrong name is one line of :class:`BadInput` naming the closest ones."""
    board = BOARDS.get(name)
    if board is not None:
        return board
    close = difflib.get_close_matches(name, BOARDS, n=2, cutoff=0.6)
    hint = f"closest: {', '.join(close)}; " if close else ""
    raise BadInput(f"unknown board {name!r} ({hint}boards: {', '.join(BOARDS)})")
