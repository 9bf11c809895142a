"""A noisy, slow line for the simulated device: bytes dropped and corrupted at random, and a rate limit."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

BITS_PER_BYTE = 10  # start bit, 8 data bits, stop bit


@dataclass
class LineFaults:
    """Drop each byte with probability ``drop_rate`` and flip bits of each with ``corrupt_rate``."""

    drop_rate: float = 0.0
    corrupt_rate: float = 0.0
    seed: int | None = None
    dropped: int = 0
    corrupted: int = 0
    _rng: np.random.Generator = field(init=False, repr=False)

    def __post_init__(self) -> None:
        for name in ("drop_rate", "corrupt_rate"):
            value = getattr(self, name)
            if not 0.0 <= value < 1.0:
                raise ValueError(f"{name} must be in [0, 1), got {value}")
        self._rng = np.random.default_rng(self.seed)

    @property
    def active(self) -> bool:
        return self.drop_rate > 0 or self.corrupt_rate > 0

    def apply(self, data: bytes) -> bytes:
        if not self.active or not data:
            return data
        buf = np.frombuffer(data, dtype=np.uint8).copy()
        if self.corrupt_rate > 0:
            hit = self._rng.random(buf.size) < self.corrupt_rate
            n = int(hit.sum())
            if n:
                buf[hit] ^= self._rng.integers(1, 256, n, dtype=np.uint8)  # never XOR 0: always a change
                self.corrupted += n
        if self.drop_rate > 0:
            keep = self._rng.random(buf.size) >= self.drop_rate
            self.dropped += int(buf.size - keep.sum())
            buf = buf[keep]
        return buf.tobytes()


class Pacer:
    """Let bytes through no faster than ``baud`` (10 bits a byte); 0 means no limit."""

    def __init__(self, baud: int) -> None:
        self.seconds_per_byte = BITS_PER_BYTE / baud if baud > 0 else 0.0
        self._free_at = 0.0

    def chunk(self, period_s: float = 0.002) -> int:
        """How many bytes to move at a time so that the pacing stays smooth."""
        if not self.seconds_per_byte:
            return 1 << 16
        return max(1, int(period_s / self.seconds_per_byte))

    def wait(self, nbytes: int, *, busy: bool = False) -> None:
        """Sleep until ``nbytes`` more could have crossed the line. ``busy``: more bytes were already
        waiting, so the line did not go idle since the last call (our own processing time is not lost)."""
        if not self.seconds_per_byte:
            return
        now = time.monotonic()
        self._free_at = (self._free_at if busy else max(self._free_at, now)) + nbytes * self.seconds_per_byte
        delay = self._free_at - now
        if delay > 0:
            time.sleep(delay)
