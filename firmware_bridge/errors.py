"""Errors of the serial bridge. All are :class:`~lepton_edge.errors.LeptonError`: one line, an exit code."""

from __future__ import annotations

from firmware_bridge.protocol import Nak, NakInfo
from lepton_edge.errors import LeptonError


class BridgeError(LeptonError):
    """The link or the device failed (exit 2): no answer, port gone, an unexpected refusal."""

    exit_code = 2


class PortError(BridgeError):
    """The port cannot be opened or went away."""


class DeviceTimeout(BridgeError):
    """The device did not answer within the bounded wait."""


class DeviceRebooted(BridgeError):
    """The device announced itself mid-operation: it restarted and lost what was in progress."""


class DeviceRefused(BridgeError):
    """The device answered NAK. ``exit_code`` is 1 when the refusal is a failed check (does not fit)."""

    def __init__(self, nak: NakInfo, what: str) -> None:
        self.nak = nak
        super().__init__(f"device refused {what}: {nak.describe()}")
        if nak.code in (Nak.TOO_LARGE, Nak.ARENA_TOO_SMALL, Nak.VERSION, Nak.SIGNATURE, Nak.HASH_MISMATCH):
            self.exit_code = 1
