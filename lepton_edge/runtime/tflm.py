"""TFLite Micro backend: one arena of a fixed size, allocated once at load, laid out by the embedded plan.

The ``tflite-micro`` wheel exists for x86_64 only: this backend serves x86 gateways, parity checks
against microcontrollers and the simulated device.
"""

from __future__ import annotations

import numpy as np

from lepton_edge.errors import BadInput, CheckFailed
from lepton_edge.runtime.base import Runner, io_specs
from lepton_edge.tflite.reader import parse_model


class TflmRunner(Runner):
    _interpreter: object

    def _invoke(self, inputs: list[np.ndarray]) -> list[np.ndarray]:
        it = self._interpreter
        for i, a in enumerate(inputs):
            it.set_input(a, i)
        it.invoke()
        # get_output returns a fresh array that owns its data (the arena is not aliased).
        return [it.get_output(i) for i in range(len(self.outputs))]

    def close(self) -> None:
        self._interpreter = None


def available() -> bool:
    try:
        from tflite_micro.python.tflite_micro import runtime  # noqa: F401
    except ImportError:
        return False
    return True


#: Below this the tflite-micro wheel segfaults instead of failing (x86-64: its allocators take ~464 bytes).
MIN_ARENA_BYTES = 512


def load_tflm(model_bytes: bytes, arena_bytes: int, *, ram_budget_bytes: int | None = None,
              source: str = "model") -> TflmRunner:
    """Load ``model_bytes`` into TFLite Micro with exactly ``arena_bytes`` of arena.

    Refuses, before loading, an arena larger than ``ram_budget_bytes`` (the profile's RAM share).
    """
    model = parse_model(model_bytes, source)
    if ram_budget_bytes is not None and arena_bytes > ram_budget_bytes:
        raise CheckFailed(f"{source}: arena of {arena_bytes} bytes exceeds the device's RAM budget "
                          f"of {ram_budget_bytes} bytes")
    try:
        from tflite_micro.python.tflite_micro import runtime
    except ImportError:
        raise BadInput("the tflm backend needs the 'tflite-micro' package (x86_64 Linux only)") from None
    if arena_bytes < MIN_ARENA_BYTES:  # the wheel's interpreter crashes (SIGSEGV) when its allocator does not fit
        raise CheckFailed(f"{source}: TFLite Micro cannot load the model with a {arena_bytes}-byte arena (its "
                          f"allocator alone needs about {MIN_ARENA_BYTES} bytes)")
    try:
        interpreter = runtime.Interpreter.from_bytes(bytes(model_bytes), arena_size=int(arena_bytes))
    except (RuntimeError, ValueError) as exc:
        raise CheckFailed(f"{source}: TFLite Micro cannot load the model with a {arena_bytes}-byte arena ({exc})") from None
    inputs, outputs = io_specs(model)
    runner = TflmRunner(backend="tflm", inputs=inputs, outputs=outputs, arena_bytes=int(arena_bytes))
    runner._interpreter = interpreter
    return runner
