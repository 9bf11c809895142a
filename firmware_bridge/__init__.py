"""Serial bridge to microcontrollers: the protocol of PROTOCOL.md, the host end, and a simulated device.

Host side::

    from firmware_bridge import PortOptions, connect
    with connect(PortOptions("/dev/ttyACM0")) as device:
        device.flash(artifact)              # an Artifact or a ModelPayload
        result = device.invoke(input_bytes)  # outputs and the device's own microseconds

What it exports. The package's ``__all__``: :data:`PROTOCOL_VERSION`, :class:`PortOptions`, :func:`connect`,
:class:`Device`, :class:`ModelPayload` and :class:`BridgeError` (the root of its errors, under
``lepton_edge.errors.LeptonError``), imported on first use so that ``import firmware_bridge`` stays light.
Beside them, these modules are public (the kit's commands, the gateway and the tests use them):
:mod:`~firmware_bridge.errors` (the error classes), :mod:`~firmware_bridge.payload` (``load_payload``:
an artifact or a .tflite, ready to flash), :mod:`~firmware_bridge.validation` (``validate_on_device``),
:mod:`~firmware_bridge.host` (``check_sizes``), :mod:`~firmware_bridge.sim` and
:mod:`~firmware_bridge.transport` (the simulated device on a pseudo-terminal or TCP),
:mod:`~firmware_bridge.protocol` and :mod:`~firmware_bridge.frame` (the messages and frames of PROTOCOL.md).
The others are its inside.

Device side (the simulator): :mod:`firmware_bridge.device` (protocol, no I/O), :mod:`firmware_bridge.sim`.
The frame codec exists in portable C99 too, in ``firmware_bridge/c``; the reference firmware for real
boards is in ``firmware_bridge/firmware`` (its README).

What it takes from lepton_edge: ``lepton_edge.errors`` (the one error tree), and everything else through
:mod:`firmware_bridge.kit` (artifact, plan, model reader, host reference interpreter, profiles, files);
:mod:`firmware_bridge.engine` runs TFLite Micro through ``lepton_edge.runtime``. Nothing else
(``tests/test_boundaries.py``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from firmware_bridge.frame import PROTOCOL_VERSION

__all__ = ["PROTOCOL_VERSION", "BridgeError", "Device", "ModelPayload", "PortOptions", "connect"]

if TYPE_CHECKING:
    from firmware_bridge.errors import BridgeError
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
    if name == "BridgeError":
        from firmware_bridge.errors import BridgeError

        return BridgeError
    if name == "ModelPayload":
        from firmware_bridge.payload import ModelPayload

        return ModelPayload
    raise AttributeError(name)
