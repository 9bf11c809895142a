"""Frames on the serial line: header, payload, CRC-32, COBS, and a zero byte after each frame.

Decoded frame (little-endian)::

    version u8 | type u8 | seq u16 | length u16 | payload[length] | crc32 u32

The CRC-32 (IEEE 802.3, as ``zlib.crc32``) covers version to the end of the payload. On the wire the
decoded frame is COBS-encoded and followed by one ``0x00``. :class:`FrameReader` turns any stream of
bytes, garbage included, back into frames: whatever does not check out is reported and dropped, and
decoding starts again after the next zero.
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass

from firmware_bridge import cobs

PROTOCOL_VERSION = 1
HEADER = struct.Struct("<BBHH")
HEADER_SIZE = HEADER.size  # 6
CRC_SIZE = 4
OVERHEAD = HEADER_SIZE + CRC_SIZE  # decoded bytes around the payload
MAX_PAYLOAD = 0xFFFF
DELIMITER = b"\x00"


@dataclass(frozen=True)
class Frame:
    type: int
    seq: int
    payload: bytes = b""
    version: int = PROTOCOL_VERSION


@dataclass(frozen=True)
class DroppedFrame:
    """A frame that was dropped, with what could be read of its header (for a NAK)."""

    kind: str  # cobs | short | crc | version | length | overflow
    detail: str = ""
    type: int | None = None
    seq: int | None = None
    header_consistent: bool = False  # the header's length matches the bytes received


FrameEvent = Frame | DroppedFrame
ERROR_KINDS = ("cobs", "short", "crc", "version", "length", "overflow")


def crc32(data: bytes) -> int:
    return zlib.crc32(data) & 0xFFFFFFFF


def pack_frame(type_: int, seq: int, payload: bytes = b"", version: int = PROTOCOL_VERSION) -> bytes:
    """The decoded frame: header, payload, CRC."""
    if len(payload) > MAX_PAYLOAD:
        raise ValueError(f"payload of {len(payload)} bytes exceeds {MAX_PAYLOAD}")
    body = HEADER.pack(version, type_, seq & 0xFFFF, len(payload)) + bytes(payload)
    return body + struct.pack("<I", crc32(body))


def encode_frame(type_: int, seq: int, payload: bytes = b"", version: int = PROTOCOL_VERSION) -> bytes:
    """The bytes to write on the line: COBS of the decoded frame, then one zero."""
    return cobs.encode(pack_frame(type_, seq, payload, version)) + DELIMITER


def wire_size(payload_len: int) -> int:
    """Bytes a frame with ``payload_len`` bytes of payload takes on the line (worst case)."""
    return cobs.max_encoded_size(OVERHEAD + payload_len) + 1


def parse_frame(decoded: bytes) -> FrameEvent:
    """Check a COBS-decoded frame: length, CRC, version, then the header's length field."""
    if len(decoded) < OVERHEAD:
        return DroppedFrame("short", f"{len(decoded)} bytes, a frame has at least {OVERHEAD}")
    version, type_, seq, length = HEADER.unpack_from(decoded)
    consistent = length == len(decoded) - OVERHEAD
    body, (crc,) = decoded[:-CRC_SIZE], struct.unpack_from("<I", decoded, len(decoded) - CRC_SIZE)
    if crc32(body) != crc:
        return DroppedFrame("crc", f"CRC {crc:08x} != {crc32(body):08x}", type_, seq, consistent)
    if version != PROTOCOL_VERSION:
        return DroppedFrame("version", f"protocol version {version}, expected {PROTOCOL_VERSION}", type_, seq,
                            consistent)
    if not consistent:
        return DroppedFrame("length", f"header says {length} payload bytes, frame has {len(decoded) - OVERHEAD}",
                            type_, seq, False)
    return Frame(type_, seq, bytes(decoded[HEADER_SIZE:-CRC_SIZE]), version)


def decode_frame(wire: bytes) -> FrameEvent:
    """One frame's wire bytes (with or without its trailing zero) back to a frame, or why not."""
    if wire.endswith(DELIMITER):
        wire = wire[:-1]
    try:
        decoded = cobs.decode(wire)
    except cobs.CobsError as exc:
        return DroppedFrame("cobs", str(exc))
    return parse_frame(decoded)


def _partial_header(encoded: bytes) -> tuple[int | None, int | None]:
    """Type and seq from the start of an over-long frame, decoded leniently."""
    out = bytearray()
    i = 0
    while i < len(encoded) and len(out) < HEADER_SIZE:
        code = encoded[i]
        out += encoded[i + 1:i + code]
        i += code
        if code != 0xFF:
            out.append(0)
    if len(out) < HEADER_SIZE:
        return None, None
    _v, type_, seq, _n = HEADER.unpack_from(out)
    return type_, seq


class FrameReader:
    """Split a byte stream into frames. ``max_payload`` bounds the buffer: longer frames are dropped
    as ``overflow`` (after their header is read, so a device can say "too large")."""

    def __init__(self, max_payload: int = MAX_PAYLOAD) -> None:
        self.max_encoded = cobs.max_encoded_size(OVERHEAD + max_payload)
        self._buf = bytearray()
        self._overflow = False
        self.frames = 0
        self.errors: dict[str, int] = {k: 0 for k in ERROR_KINDS}

    @property
    def bad_frames(self) -> int:
        return sum(self.errors.values())

    def feed(self, data: bytes) -> list[FrameEvent]:
        events: list[FrameEvent] = []
        parts = bytes(data).split(DELIMITER)
        for i, part in enumerate(parts):
            if not self._overflow:
                room = self.max_encoded + 1 - len(self._buf)
                self._buf += part[:room]
                if len(part) > room or len(self._buf) > self.max_encoded:
                    self._overflow = True
            if i == len(parts) - 1:
                break  # no delimiter yet: wait for more bytes
            events.extend(self._end_of_frame())
        return events

    def _end_of_frame(self) -> list[FrameEvent]:
        encoded, overflow = bytes(self._buf), self._overflow
        self._buf.clear()
        self._overflow = False
        if overflow:
            type_, seq = _partial_header(encoded[:16])
            event: FrameEvent = DroppedFrame("overflow", f"frame longer than {self.max_encoded} bytes", type_, seq,
                                             True)
        elif not encoded:
            return []  # two zeros in a row: an empty frame, used to flush a receiver
        else:
            event = decode_frame(encoded)
        if isinstance(event, Frame):
            self.frames += 1
        else:
            self.errors[event.kind] += 1
        return [event]
