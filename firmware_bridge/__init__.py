"""Serial bridge to microcontrollers: the protocol of PROTOCOL.md, the host end, and a simulated device.

Host side::

    from firmware_bridge import PortOptions, connect
    with connect(PortOptions("/dev/ttyACM0")) as device:
        device.flash(artifact)              # an Artifact or a ModelPayload
        result = device.invoke(input_bytes)  # outputs and the device's own microseconds

Device side (the simulator): :mod:`firmware_bridge.device` (protocol, no I/O), :mod:`firmware_bridge.sim`.
The frame codec exists in portable C99 too, in ``firmware_bridge/c``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from firmware_bridge.frame import PROTOCOL_VERSION

__all__ = ["PROTOCOL_VERSION", "PortOptions", "connect", "Device", "ModelPayload"]

if TYPE_CHECKING:
    from firmware_bridge.host import Device, connect
    from firmware_bridge.link import PortOptions
    from firmware_bridge.payload import ModelPayload


def __getattr__(name: str) -> Any:
    """Import the host side on first use, so that ``import firmware_bridge`` stays light."""
    if name in ("Device", "connect"):
        from firmware_bridge import host

        return getattr(host, name)
    if name == "PortOptions":
        from firmware_bridge.link import PortOptions

        return PortOptions
    if name == "ModelPayload":
        from firmware_bridge.payload import ModelPayload

        return ModelPayload
    raise AttributeError(name)
