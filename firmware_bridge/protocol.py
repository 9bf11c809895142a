"""Message types, error codes and payload layouts of PROTOCOL.md (all integers little-endian)."""

from __future__ import annotations

import enum
import struct
from dataclasses import dataclass
from typing import Any

from lepton_edge.errors import LeptonError

NO_SLOT = 0xFF
NO_VERSION = 0xFFFFFFFF
NO_TRANSFER = 0xFFFFFFFF  # NAK SEQUENCE detail: no transfer with that id is open
DATA_HEADER = struct.Struct("<HI")  # MODEL_DATA / INPUT_DATA: xfer, offset


class Msg(enum.IntEnum):
    HELLO = 0x01
    INFO = 0x02
    STATS = 0x03
    MODEL_BEGIN = 0x10
    MODEL_DATA = 0x11
    MODEL_COMMIT = 0x12
    MODEL_CONFIRM = 0x13
    INPUT_DATA = 0x20
    INVOKE = 0x21
    OUTPUT_READ = 0x22
    RESET = 0x30
    ACK = 0x80
    NAK = 0x81
    ANNOUNCE = 0x82


#: Requests whose answer the device remembers by sequence number, so a repeat is answered, not re-done.
REMEMBERED = frozenset({Msg.MODEL_COMMIT, Msg.INVOKE})


class Nak(enum.IntEnum):
    CRC = 1
    SEQUENCE = 2
    TOO_LARGE = 3
    NO_MODEL = 4
    ARENA_TOO_SMALL = 5
    BUSY = 6
    BAD_REQUEST = 7
    INCOMPLETE = 8
    HASH_MISMATCH = 9
    MODEL_INVALID = 10
    VERSION = 11
    SIGNATURE = 12
    INVOKE_FAILED = 13
    UNSUPPORTED = 14


def nak_name(code: int) -> str:
    try:
        return Nak(code).name
    except ValueError:
        return f"code {code}"


class MalformedPayload(LeptonError, ValueError):
    """A serial frame's payload too short or malformed for its message type."""


def _take(fmt: struct.Struct, data: bytes, offset: int, what: str) -> tuple[Any, ...]:
    if len(data) < offset + fmt.size:
        raise MalformedPayload(f"{what}: {len(data)} bytes, needs at least {offset + fmt.size}")
    return fmt.unpack_from(data, offset)


def _pstr(text: str) -> bytes:
    raw = text.encode("utf-8")[:255]
    return bytes([len(raw)]) + raw


def _read_pstr(data: bytes, offset: int, what: str) -> tuple[str, int]:
    if offset >= len(data):
        raise MalformedPayload(f"{what}: string missing")
    n = data[offset]
    raw = data[offset + 1:offset + 1 + n]
    if len(raw) != n:
        raise MalformedPayload(f"{what}: string truncated")
    return raw.decode("utf-8", "replace"), offset + 1 + n


# --- HELLO -------------------------------------------------------------------------------------

_HOST_HELLO = struct.Struct("<H")


def pack_host_hello(max_payload: int) -> bytes:
    return _HOST_HELLO.pack(max_payload)


def unpack_host_hello(data: bytes) -> int:
    return int(_take(_HOST_HELLO, data, 0, "HELLO")[0])


_HELLO = struct.Struct("<BBHII")


@dataclass(frozen=True)
class DeviceHello:
    """What a device says about itself in answer to HELLO and at boot (ANNOUNCE)."""

    protocol_version: int
    window: int  # frames the host may have in flight
    max_payload: int  # largest payload the device accepts in one frame
    arena_ram_bytes: int  # RAM available for the tensor arena
    slot_bytes: int  # largest model a slot holds
    profile: str
    firmware: str

    def pack(self) -> bytes:
        return (_HELLO.pack(self.protocol_version, self.window, self.max_payload, self.arena_ram_bytes,
                            self.slot_bytes) + _pstr(self.profile) + _pstr(self.firmware))

    @classmethod
    def unpack(cls, data: bytes) -> DeviceHello:
        version, window, max_payload, ram, slot = _take(_HELLO, data, 0, "HELLO answer")
        profile, at = _read_pstr(data, _HELLO.size, "HELLO profile")
        firmware, _ = _read_pstr(data, at, "HELLO firmware")
        return cls(version, max(1, window), max_payload, ram, slot, profile, firmware)


# --- INFO --------------------------------------------------------------------------------------

_SLOT = struct.Struct("<BIII32s")
_INFO_HEAD = struct.Struct("<BB")
_INFO_TAIL = struct.Struct("<HIIII")


@dataclass(frozen=True)
class SlotInfo:
    valid: bool
    size: int = 0
    arena_bytes: int = 0
    version: int | None = None
    sha256: str = ""
    name: str = ""
    confirmed: bool = False  # the active slot's model was confirmed (MODEL_CONFIRM)

    def pack(self) -> bytes:
        digest = bytes.fromhex(self.sha256) if self.sha256 else bytes(32)
        version = NO_VERSION if self.version is None else self.version
        flags = (1 if self.valid else 0) | (2 if self.confirmed else 0)
        return _SLOT.pack(flags, self.size, self.arena_bytes, version, digest) + _pstr(self.name)

    @classmethod
    def unpack_from(cls, data: bytes, offset: int) -> tuple[SlotInfo, int]:
        flags, size, arena, version, digest = _take(_SLOT, data, offset, "INFO slot")
        name, at = _read_pstr(data, offset + _SLOT.size, "INFO slot name")
        valid = bool(flags & 1)
        return cls(valid, size, arena, None if version == NO_VERSION else version,
                   digest.hex() if valid else "", name, bool(flags & 2)), at


@dataclass(frozen=True)
class DeviceInfo:
    active_slot: int | None
    slots: tuple[SlotInfo, ...]
    transfer_xfer: int = 0  # 0: no transfer open
    transfer_total: int = 0
    transfer_contiguous: int = 0
    input_bytes: int = 0  # of the active model, 0 without one
    output_bytes: int = 0

    @property
    def active(self) -> SlotInfo | None:
        if self.active_slot is None or self.active_slot >= len(self.slots):
            return None
        slot = self.slots[self.active_slot]
        return slot if slot.valid else None

    def pack(self) -> bytes:
        out = _INFO_HEAD.pack(NO_SLOT if self.active_slot is None else self.active_slot, len(self.slots))
        out += b"".join(s.pack() for s in self.slots)
        return out + _INFO_TAIL.pack(self.transfer_xfer, self.transfer_total, self.transfer_contiguous,
                                     self.input_bytes, self.output_bytes)

    @classmethod
    def unpack(cls, data: bytes) -> DeviceInfo:
        active, count = _take(_INFO_HEAD, data, 0, "INFO")
        at, slots = _INFO_HEAD.size, []
        for _ in range(count):
            slot, at = SlotInfo.unpack_from(data, at)
            slots.append(slot)
        xfer, total, contiguous, nin, nout = _take(_INFO_TAIL, data, at, "INFO transfer")
        return cls(None if active == NO_SLOT else active, tuple(slots), xfer, total, contiguous, nin, nout)


# --- STATS -------------------------------------------------------------------------------------

STATS_FIELDS = ("arena_bytes", "arena_head_bytes", "arena_tail_bytes", "invocations", "invoke_errors",
                "last_invoke_us", "frames_ok", "frames_bad", "crc_errors", "naks_sent",
                "model_bytes_received", "uptime_ms")
_STATS = struct.Struct("<" + "I" * len(STATS_FIELDS))


@dataclass(frozen=True)
class DeviceStats:
    arena_bytes: int = 0
    arena_head_bytes: int = 0
    arena_tail_bytes: int = 0
    invocations: int = 0
    invoke_errors: int = 0
    last_invoke_us: int = 0
    frames_ok: int = 0
    frames_bad: int = 0
    crc_errors: int = 0
    naks_sent: int = 0
    model_bytes_received: int = 0
    uptime_ms: int = 0

    def pack(self) -> bytes:
        return _STATS.pack(*(min(getattr(self, f), 0xFFFFFFFF) for f in STATS_FIELDS))

    @classmethod
    def unpack(cls, data: bytes) -> DeviceStats:
        return cls(*_take(_STATS, data, 0, "STATS"))


# --- model transfer ----------------------------------------------------------------------------

_BEGIN = struct.Struct("<HI32sIHH")


@dataclass(frozen=True)
class ModelBegin:
    """Opens a transfer. The data that follows is manifest, signature, model, back to back."""

    xfer: int
    model_size: int
    sha256: str
    arena_bytes: int  # 0: take arena.recommended_bytes from the manifest
    manifest_len: int = 0
    signature_len: int = 0

    @property
    def total(self) -> int:
        return self.manifest_len + self.signature_len + self.model_size

    def pack(self) -> bytes:
        return _BEGIN.pack(self.xfer, self.model_size, bytes.fromhex(self.sha256), self.arena_bytes,
                           self.manifest_len, self.signature_len)

    @classmethod
    def unpack(cls, data: bytes) -> ModelBegin:
        xfer, size, digest, arena, mlen, slen = _take(_BEGIN, data, 0, "MODEL_BEGIN")
        return cls(xfer, size, digest.hex(), arena, mlen, slen)


_DATA_ACK = struct.Struct("<HIHI")


@dataclass(frozen=True)
class DataAck:
    """Answer to MODEL_DATA and INPUT_DATA: which bytes were stored, and the contiguous prefix held."""

    xfer: int
    offset: int
    length: int
    contiguous: int

    SIZE = _DATA_ACK.size

    def pack(self) -> bytes:
        return _DATA_ACK.pack(self.xfer, self.offset, self.length, self.contiguous)

    @classmethod
    def unpack(cls, data: bytes) -> DataAck:
        return cls(*_take(_DATA_ACK, data, 0, "data ACK"))


def pack_data(xfer: int, offset: int, chunk: bytes) -> bytes:
    return DATA_HEADER.pack(xfer, offset) + chunk


def unpack_data(data: bytes) -> tuple[int, int, bytes]:
    xfer, offset = _take(DATA_HEADER, data, 0, "data frame")
    return xfer, offset, data[DATA_HEADER.size:]


_XFER = struct.Struct("<H")


def pack_xfer(xfer: int) -> bytes:
    return _XFER.pack(xfer)


def unpack_xfer(data: bytes) -> int:
    return int(_take(_XFER, data, 0, "transfer id")[0])


_U32 = struct.Struct("<I")
_U8 = struct.Struct("<B")


def pack_u32(value: int) -> bytes:
    return _U32.pack(value)


def unpack_u32(data: bytes) -> int:
    return int(_take(_U32, data, 0, "u32")[0])


def pack_u8(value: int) -> bytes:
    return _U8.pack(value)


def unpack_u8(data: bytes) -> int:
    return int(_take(_U8, data, 0, "u8")[0])


# --- inference ---------------------------------------------------------------------------------

_INVOKE = struct.Struct("<HIIH")


@dataclass(frozen=True)
class InvokeRequest:
    """Run the active model. ``xfer`` 0: the input is inline; else it was staged with INPUT_DATA."""

    xfer: int
    input_len: int
    input_crc: int
    reply_max: int  # most output bytes to put in the answer; the rest is read with OUTPUT_READ
    inline: bytes = b""

    def pack(self) -> bytes:
        return _INVOKE.pack(self.xfer, self.input_len, self.input_crc, self.reply_max) + self.inline

    @classmethod
    def unpack(cls, data: bytes) -> InvokeRequest:
        xfer, n, crc, reply_max = _take(_INVOKE, data, 0, "INVOKE")
        return cls(xfer, n, crc, reply_max, data[_INVOKE.size:])


_RESULT = struct.Struct("<III")


@dataclass(frozen=True)
class InvokeAnswer:
    device_us: int
    output_len: int
    output_crc: int
    inline: bytes = b""

    def pack(self) -> bytes:
        return _RESULT.pack(self.device_us, self.output_len, self.output_crc) + self.inline

    @classmethod
    def unpack(cls, data: bytes) -> InvokeAnswer:
        us, n, crc = _take(_RESULT, data, 0, "INVOKE answer")
        return cls(us, n, crc, data[_RESULT.size:])


_READ = struct.Struct("<IH")


def pack_output_read(offset: int, max_len: int) -> bytes:
    return _READ.pack(offset, max_len)


def unpack_output_read(data: bytes) -> tuple[int, int]:
    return _take(_READ, data, 0, "OUTPUT_READ")


def pack_output_chunk(offset: int, chunk: bytes) -> bytes:
    return _U32.pack(offset) + chunk


def unpack_output_chunk(data: bytes) -> tuple[int, bytes]:
    return _take(_U32, data, 0, "OUTPUT_READ answer")[0], data[_U32.size:]


# --- NAK ---------------------------------------------------------------------------------------

_NAK = struct.Struct("<BBI")
NAK_MESSAGE_MAX = 120


@dataclass(frozen=True)
class NakInfo:
    code: int
    request: int
    detail: int = 0
    message: str = ""

    @property
    def name(self) -> str:
        return nak_name(self.code)

    def pack(self) -> bytes:
        return _NAK.pack(self.code, self.request, self.detail & 0xFFFFFFFF) + \
            self.message.encode("utf-8")[:NAK_MESSAGE_MAX]

    @classmethod
    def unpack(cls, data: bytes) -> NakInfo:
        code, request, detail = _take(_NAK, data, 0, "NAK")
        return cls(code, request, detail, data[_NAK.size:].decode("utf-8", "replace"))

    def describe(self) -> str:
        text = f"{self.name}"
        return f"{text}: {self.message}" if self.message else text

