"""A :class:`~lepton_edge.runtime.base.Runner` whose interpreter is the microcontroller at the end of the line.

The gateway serves and health-checks the device's model through the same interface as a model in
this process: inputs go out in an INVOKE, outputs come back, and the latency is the device's own
time (microseconds from its answer), not the serial round trip.

Device-side code: numpy and the project's device-side modules.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from firmware_bridge.errors import BridgeError
from lepton_edge.agent.codec import split_tensor_bytes
from lepton_edge.errors import Unavailable
from lepton_edge.gateway.session import SerialSession
from lepton_edge.runtime.base import Runner

INVOKE_WAIT_S = 10.0  # how long a request waits while the line is busy (flashing), then 503


@dataclass
class SerialRunner(Runner):
    session: SerialSession | None = None
    package: str = "serial"        # shown as the agent's "interpreter"
    # The device's time of this thread's last invoke: the API runs requests on several threads, and
    # run_timed reads it after the Runner's lock is released.
    _device_us: threading.local = field(default_factory=threading.local, repr=False)

    def _invoke(self, inputs: list[np.ndarray[Any, Any]]) -> list[np.ndarray[Any, Any]]:
        data = b"".join(np.ascontiguousarray(a).tobytes() for a in inputs)
        assert self.session is not None, "SerialRunner without a session"
        try:
            result = self.session.call(lambda device: device.invoke(data), what="INVOKE", wait_s=INVOKE_WAIT_S)
        except BridgeError as exc:
            raise Unavailable(f"the device did not run the model: {exc}") from None
        self._device_us.value = result.device_us
        try:
            return split_tensor_bytes(result.outputs, self.outputs)
        except ValueError as exc:
            raise Unavailable(f"the device answered with outputs of another model: {exc}") from None

    def run_timed(self, inputs: Sequence[np.ndarray[Any, Any]]) -> tuple[list[np.ndarray[Any, Any]], float]:
        outputs, _round_trip_ms = super().run_timed(inputs)
        return outputs, self._device_us.value / 1000.0
