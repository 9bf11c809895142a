"""TFLite Micro backend: one arena of a fixed size, allocated once at load, laid out by the embedded plan.

The one place that drives the ``tflite-micro`` wheel: :func:`load_tflm` (a :class:`TflmRunner`, as
every backend), :func:`run_once` (does the model allocate and run with this arena?) and
:func:`arena_use` (TFLite Micro's own report of head and tail). The planner's probe and the
simulated device's engine go through them.

The ``tflite-micro`` wheel exists for x86_64 only: this backend serves x86 gateways, parity checks
against microcontrollers and the simulated device.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from lepton_edge.errors import BadInput, CheckFailed
from lepton_edge.runtime.base import Runner, TensorSpec, io_specs
from lepton_edge.stdio import captured_fd2
from lepton_edge.tflite.reader import parse_model

#: Below this the tflite-micro wheel segfaults instead of failing (x86-64: its allocators take ~464 bytes).
MIN_ARENA_BYTES = 512

# print_allocations: "[RecordingMicroAllocator] Arena allocation total 1280 bytes" (then head, tail)
_ALLOCATION = re.compile(r"Arena allocation (total|head|tail) (\d+) bytes")


class TflmRunner(Runner):
    """A model in one TFLite Micro interpreter; :func:`load_tflm` makes one from a model's bytes."""

    def __init__(self, interpreter: Any, inputs: list[TensorSpec], outputs: list[TensorSpec],
                 arena_bytes: int) -> None:
        super().__init__(backend="tflm", inputs=inputs, outputs=outputs, arena_bytes=arena_bytes)
        self._interpreter: Any = interpreter  # the wheel's Interpreter (untyped); None once closed

    def _invoke(self, inputs: list[np.ndarray[Any, Any]]) -> list[np.ndarray[Any, Any]]:
        it = self._interpreter
        for i, a in enumerate(inputs):
            it.set_input(a, i)
        it.invoke()
        # get_output returns a fresh array that owns its data (the arena is not aliased).
        return [it.get_output(i) for i in range(len(self.outputs))]

    def close(self) -> None:
        self._interpreter = None


@dataclass(frozen=True)
class ArenaUse:
    """What TFLite Micro took from the arena, in its own words (``print_allocations``)."""

    total_bytes: int
    head_bytes: int  # the planned, reusable tensor memory
    tail_bytes: int  # what persists for the interpreter's life

    @classmethod
    def parse(cls, report: str) -> ArenaUse:
        found = {kind: int(n) for kind, n in _ALLOCATION.findall(report)}
        return cls(found.get("total", 0), found.get("head", 0), found.get("tail", 0))


def available() -> bool:
    try:
        from tflite_micro.python.tflite_micro import runtime  # noqa: F401
    except ImportError:
        return False
    return True


def _runtime() -> Any:
    try:
        from tflite_micro.python.tflite_micro import runtime
    except ImportError:
        raise BadInput("the tflm backend needs the 'tflite-micro' package (x86_64 Linux only)") from None
    return runtime


def _interpreter(model_bytes: bytes, arena_bytes: int) -> Any:
    """The wheel's interpreter with exactly ``arena_bytes``: the wheel's RuntimeError or ValueError
    when the model does not allocate in it, a ValueError below :data:`MIN_ARENA_BYTES`."""
    runtime = _runtime()
    if arena_bytes < MIN_ARENA_BYTES:  # the wheel's interpreter crashes (SIGSEGV) when its allocator does not fit
        raise ValueError(f"TFLite Micro's allocator alone needs about {MIN_ARENA_BYTES} bytes, "
                         f"the arena has {arena_bytes}")
    return runtime.Interpreter.from_bytes(bytes(model_bytes), arena_size=int(arena_bytes))


def load_tflm(model_bytes: bytes, arena_bytes: int, *, ram_budget_bytes: int | None = None,
              source: str = "model") -> TflmRunner:
    """Load ``model_bytes`` into TFLite Micro with exactly ``arena_bytes`` of arena.

    Refuses, before loading, an arena larger than ``ram_budget_bytes`` (the profile's RAM share).
    """
    model = parse_model(model_bytes, source)
    if ram_budget_bytes is not None and arena_bytes > ram_budget_bytes:
        raise CheckFailed(f"{source}: arena of {arena_bytes} bytes exceeds the device's RAM budget "
                          f"of {ram_budget_bytes} bytes")
    _runtime()
    if arena_bytes < MIN_ARENA_BYTES:
        raise CheckFailed(f"{source}: TFLite Micro cannot load the model with a {arena_bytes}-byte arena (its "
                          f"allocator alone needs about {MIN_ARENA_BYTES} bytes)")
    try:
        interpreter = _interpreter(model_bytes, arena_bytes)
    except (RuntimeError, ValueError) as exc:
        raise CheckFailed(f"{source}: TFLite Micro cannot load the model with a {arena_bytes}-byte arena "
                          f"({exc})") from None
    inputs, outputs = io_specs(model)
    return TflmRunner(interpreter, inputs, outputs, int(arena_bytes))


def run_once(model_bytes: bytes, arena_bytes: int, inputs: Sequence[TensorSpec]) -> Any:
    """A fresh interpreter with exactly ``arena_bytes`` that has run the model once on zeros (a
    runner of the caller's keeps its own state). Raises what the wheel raises (RuntimeError,
    ValueError) when the model does not allocate or run; TFLite Micro logs why on descriptor 2."""
    it = _interpreter(model_bytes, arena_bytes)
    for i, spec in enumerate(inputs):
        it.set_input(np.zeros(spec.shape, spec.dtype), i)
    it.invoke()
    return it


def arena_use(model_bytes: bytes, arena_bytes: int, inputs: Sequence[TensorSpec]) -> ArenaUse:
    """TFLite Micro's own report of the arena it uses with ``arena_bytes``, after one run on zeros
    (:func:`run_once`, whose errors it raises); nothing reaches descriptor 2."""
    with captured_fd2() as log:
        run_once(model_bytes, arena_bytes, inputs).print_allocations()
    return ArenaUse.parse(log.text)
