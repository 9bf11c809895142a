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

This module is the device side's half: what a target measurement gives (:class:`TargetFigures`) and
what the planner asks of a target (:class:`TargetMeasurer`). Finding and running the firmware build
is host work, in :mod:`lepton_edge.firmware_build.target`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

MEASURE_MODES = ("auto", "host", "target")
HOST_LABEL = "host x86-64 tflite-micro"


@dataclass(frozen=True)
class TargetFigures:
    head_bytes: int
    tail_bytes: int
    used_bytes: int
    min_arena_bytes: int


class TargetMeasurer(Protocol):
    """Measures a model's arena on a target core with its kernel library."""

    @property
    def label(self) -> str:
        """Where the figures come from, e.g. ``cortex-m4 (qemu mps2-an386), cmsis-nn``."""
        ...

    def measure(self, model_bytes: bytes) -> TargetFigures:
        """The model's arena figures on the target; :class:`~lepton_edge.errors.CheckFailed` when it cannot run."""
        ...
