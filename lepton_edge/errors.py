"""The errors of lepton-edge: one tree, rooted at :class:`LeptonError`.

A command reports any of them as one line on stderr and exits with the class's ``exit_code``
(``lepton_edge.cli``): 1 a check that did not pass, 2 bad input or something unavailable; anything
outside the tree is an internal error (exit 3). The HTTP APIs answer :class:`ApiError` with its
status, :class:`Unavailable` with 503 and the rest of the tree with 400.

The tree (where each class lives):

* LeptonError
  + BadInput                      (exit 2)
  | + NotFound                    fleet/store.py
  | + PayloadError                mqtt/messages.py: an MQTT payload we cannot use
  | + _Corrupt                    tflite/reader.py: becomes a BadInput naming the file
  + CheckFailed                   (exit 1)
  | + Unreachable                 fleet/client.py
  + Unavailable                   (exit 2, HTTP 503)
  | + DeviceUnavailable           gateway/session.py
  + ApiError                      (exit 2) an HTTP status and a reason: agent/api.py, fleet/http_api.py
  + MosquittoMissing              (exit 1) tools/mosquitto.py
  + NatsMissing                   (exit 1) tools/nats.py
  + ToolMissing                   (exit 1) firmware_build/build.py
  + BuildFailed                   (exit 1) firmware_build/build.py
  + BoardFailed                   (exit 1) firmware_build/launch.py
  + BridgeError                   (exit 2) firmware_bridge/errors.py: the serial link or the device
  | + PortError
  | + DeviceTimeout
  | + DeviceRebooted
  | + DeviceRefused               (exit 1 for a failed check: too large, arena, version, signature, hash)
  | + TransferLost                firmware_bridge/transfer.py: the device dropped the transfer
  | + _FrameTooBig                firmware_bridge/host.py: cut the frame and ask again
  + CobsError                     (also a ValueError) firmware_bridge/cobs.py
  + MalformedPayload              (also a ValueError) firmware_bridge/protocol.py: a serial payload
  + LoadError                     firmware_bridge/engine.py: the simulated device cannot load a model
  + _Refuse                       firmware_bridge/device.py: the simulated device answers NAK
"""

from __future__ import annotations


def one_line(exc: BaseException) -> str:
    """An exception's text on one line (engines and libraries often spread theirs over several)."""
    return " ".join(str(exc).split()) or type(exc).__name__


class LeptonError(Exception):
    """An error the command line reports as one line on stderr, never a traceback."""

    exit_code = 2


class BadInput(LeptonError):
    """The user gave something we cannot use: a corrupt model, an unknown profile, bad data (exit 2)."""

    exit_code = 2


class CheckFailed(LeptonError):
    """A check the user asked for did not pass: the model does not fit, outputs differ (exit 1)."""

    exit_code = 1


class Unavailable(LeptonError):
    """Something the request needs is not answering now, a serial device for instance (HTTP 503, exit 2)."""

    exit_code = 2


class ApiError(LeptonError):
    """A request an HTTP API refuses: an HTTP status (4xx/5xx), a one-line reason, headers to send."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers or {}
