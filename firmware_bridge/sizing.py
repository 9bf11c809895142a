"""How big a frame to send and how long to wait for its answer, learned from the line itself.

:class:`FrameSizer` estimates the line's byte error rate from the frames that got through and those
that did not, and picks the payload size that maximises the expected goodput
``s * (1 - p) ** (s + o) / (s + o)`` (``o``: bytes of overhead a frame and its answer expose), which is
``s = (sqrt(o**2 + 4*o/q) - o) / 2`` with ``q = -ln(1 - p)``. On a clean line that is the largest frame
the device takes; at 1 % of bytes lost it is some 40 bytes.

:class:`LineTimer` learns the time a frame takes per byte (line rate plus the device's work) and
derives a retransmission timeout for a frame of a given size.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from firmware_bridge.faults import BITS_PER_BYTE

FRAME_EXPOSURE = 40  # bytes besides the payload that must get through: header, CRC, COBS, the answer
MIN_PAYLOAD = 16


@dataclass
class FrameSizer:
    max_payload: int
    min_payload: int = MIN_PAYLOAD
    decay: float = 0.95  # memory of about 20 frames
    _lost: float = 0.0
    _frames: float = 0.0
    _bytes: float = 0.0
    losses: int = 0
    successes: int = 0

    def __post_init__(self) -> None:
        self.min_payload = min(self.min_payload, self.max_payload)

    def _record(self, wire_bytes: int, lost: bool) -> None:
        self._lost = self._lost * self.decay + (1.0 if lost else 0.0)
        self._frames = self._frames * self.decay + 1.0
        self._bytes = self._bytes * self.decay + wire_bytes

    def success(self, payload_bytes: int) -> None:
        self.successes += 1
        self._record(payload_bytes + FRAME_EXPOSURE, False)

    def loss(self, payload_bytes: int) -> None:
        self.losses += 1
        self._record(payload_bytes + FRAME_EXPOSURE, True)

    @property
    def error_rate(self) -> float:
        """Estimated probability that a byte is lost or damaged."""
        if self._frames <= 0 or self._lost <= 0:
            return 0.0
        loss_ratio = min(self._lost / self._frames, 0.95)
        mean_bytes = self._bytes / self._frames
        return float(1.0 - (1.0 - loss_ratio) ** (1.0 / mean_bytes))

    @property
    def size(self) -> int:
        """Payload bytes for the next frame."""
        p = self.error_rate
        if p <= 0:
            return self.max_payload
        q = -math.log1p(-p)
        o = FRAME_EXPOSURE
        best = (math.sqrt(o * o + 4 * o / q) - o) / 2
        return int(max(self.min_payload, min(self.max_payload, best)))


@dataclass
class LineTimer:
    """Retransmission timeout from the time frames took per byte (an EWMA, as TCP's RTO)."""

    baud: int = 115200
    min_timeout: float = 0.1
    max_timeout: float = 5.0
    _per_byte: float = field(init=False)
    _dev: float = 0.0
    _samples: int = 0

    def __post_init__(self) -> None:
        self._per_byte = BITS_PER_BYTE / (self.baud or 115200)

    def sample(self, seconds: float, wire_bytes: int) -> None:
        per_byte = seconds / max(1, wire_bytes)
        if self._samples == 0:
            self._per_byte, self._dev = per_byte, per_byte / 2
        else:
            self._dev = 0.75 * self._dev + 0.25 * abs(per_byte - self._per_byte)
            self._per_byte = 0.875 * self._per_byte + 0.125 * per_byte
        self._samples += 1

    def timeout(self, wire_bytes: int, extra_s: float = 0.0) -> float:
        """How long to wait for the answer to a frame of ``wire_bytes`` (answer included)."""
        t = 2 * wire_bytes * (self._per_byte + 4 * self._dev) + extra_s
        return min(self.max_timeout + extra_s, max(self.min_timeout, t))
