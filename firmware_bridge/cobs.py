"""Consistent Overhead Byte Stuffing (Cheshire and Baker, 1999): no zero byte in the output, so a
zero can end every frame, and a receiver that lost its place finds the next frame at the next zero.

Hand-written rather than the ``cobs`` package: thirty lines, no compiled dependency on 32-bit ARM
boards, and it splits on zeros with ``bytes.split`` so it runs at C speed for large frames.
The C version in ``c/lepton_frame.c`` follows the same rules and the same test vectors.
"""

from __future__ import annotations

from lepton_edge.errors import LeptonError

MAX_BLOCK = 254  # data bytes in one block; its code byte is then 0xFF and no zero follows


class CobsError(LeptonError, ValueError):
    """The bytes are not a valid COBS encoding."""


def encode(data: bytes) -> bytes:
    """Encode ``data``; the result holds no zero byte and is at most ``len(data) // 254 + 1`` longer."""
    out = bytearray()
    parts = bytes(data).split(b"\x00")
    last = len(parts) - 1
    for i, part in enumerate(parts):
        start = 0
        while len(part) - start >= MAX_BLOCK:
            out.append(0xFF)
            out += part[start:start + MAX_BLOCK]
            start += MAX_BLOCK
        rest = len(part) - start
        # A last part that ended exactly on a full block needs no empty block after it.
        if i == last and rest == 0 and start > 0:
            break
        out.append(rest + 1)
        out += part[start:]
    return bytes(out)


def decode(data: bytes) -> bytes:
    """Decode one frame's worth of COBS (without its trailing zero); :class:`CobsError` if malformed."""
    out = bytearray()
    i, n = 0, len(data)
    while i < n:
        code = data[i]
        if code == 0:
            raise CobsError(f"zero byte at {i} inside a frame")
        end = i + code
        if end > n:
            raise CobsError(f"block at {i} needs {code - 1} bytes, {n - i - 1} left")
        block = data[i + 1:end]
        if 0 in block:
            raise CobsError(f"zero byte inside the block at {i}")
        out += block
        i = end
        if code != 0xFF and i < n:
            out.append(0)
    return bytes(out)


def max_encoded_size(n: int) -> int:
    """The longest encoding of ``n`` bytes (without the frame's trailing zero)."""
    return n + n // MAX_BLOCK + 1
