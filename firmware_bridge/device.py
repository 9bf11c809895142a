"""The device end of PROTOCOL.md, free of any I/O: bytes from the line in, bytes for the line out.

This is what firmware does, written in Python for the simulated device: two model slots, a transfer
kept by byte ranges (MODEL_DATA is idempotent by offset), a hash check before the slot swap, and the
answer to the last COMMIT and INVOKE remembered by sequence number so a repeat is answered, not re-done.
"""

from __future__ import annotations

import hashlib
import time
import zlib
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from firmware_bridge import protocol as p
from firmware_bridge.engine import LoadedModel, LoadError, load_model
from firmware_bridge.frame import PROTOCOL_VERSION, DroppedFrame, Frame, FrameReader, encode_frame
from firmware_bridge.payload import host_arena_bytes
from firmware_bridge.protocol import Msg, Nak
from firmware_bridge.ranges import RangeSet
from firmware_bridge.slots import SLOT_COUNT, SlotRecord, SlotStore
from lepton_edge.errors import LeptonError

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

DEFAULT_HOST_PAYLOAD = 256  # every host takes this much; HELLO may say more
_REMEMBERED_ANSWERS = 8


@dataclass(frozen=True)
class DeviceIdentity:
    profile: str
    firmware: str
    arena_ram_bytes: int
    slot_bytes: int
    max_payload: int = 4096
    window: int = 8

    def hello(self) -> p.DeviceHello:
        return p.DeviceHello(PROTOCOL_VERSION, self.window, self.max_payload, self.arena_ram_bytes,
                             self.slot_bytes, self.profile, self.firmware)


class _Refuse(LeptonError):
    """A request the simulated device answers with NAK ``code``."""

    def __init__(self, code: Nak, message: str = "", detail: int = 0) -> None:
        super().__init__(message)
        self.code, self.message, self.detail = code, message, detail


@dataclass
class _Transfer:
    begin: p.ModelBegin
    buffer: bytearray
    held: RangeSet = field(default_factory=RangeSet)

    def same_model(self, other: p.ModelBegin) -> bool:
        a, b = self.begin, other
        return (a.model_size, a.sha256, a.arena_bytes, a.manifest_len, a.signature_len) == \
            (b.model_size, b.sha256, b.arena_bytes, b.manifest_len, b.signature_len)


@dataclass
class _Staged:
    xfer: int
    buffer: bytearray
    held: RangeSet = field(default_factory=RangeSet)


class DeviceCore:
    """One boot of the device. A restart is a new ``DeviceCore`` on the same :class:`SlotStore`."""

    def __init__(self, identity: DeviceIdentity, store: SlotStore, *, trusted_keys: tuple[Ed25519PublicKey, ...] = (),
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.identity = identity
        self.store = store
        self.trusted_keys = tuple(trusted_keys)
        self._clock = clock
        self._booted = clock()
        self.reader = FrameReader(identity.max_payload)
        self.host_payload = DEFAULT_HOST_PAYLOAD
        self.reset_requested = False
        self.model: LoadedModel | None = None
        self.active: SlotRecord | None = None
        self.transfer: _Transfer | None = None
        self.staged: _Staged | None = None
        self.last_output: bytes | None = None
        self.answers: OrderedDict[tuple[int, int, int], bytes] = OrderedDict()
        self.counters = {"invocations": 0, "invoke_errors": 0, "last_invoke_us": 0, "naks_sent": 0,
                         "model_bytes_received": 0}
        self.boot_error = ""
        self._load_active()

    # --- boot ----------------------------------------------------------------------------------

    def _load_active(self) -> None:
        """As firmware at boot: check the active slot's hash, then load it into TFLite Micro."""
        record = self.store.active()
        if record is None:
            return
        try:
            self.model = load_model(record.model, record.arena_bytes, self.identity.arena_ram_bytes,
                                    host_arena_bytes=host_arena_bytes(record.manifest, record.arena_bytes))
            self.active = record
        except LoadError as exc:
            self.boot_error = f"slot {record.index}: {exc}"

    def announce(self) -> bytes:
        return encode_frame(Msg.ANNOUNCE, 0, self.identity.hello().pack())

    # --- the line ------------------------------------------------------------------------------

    def feed(self, data: bytes) -> list[bytes]:
        """Bytes from the line; returns frames to write back."""
        out: list[bytes] = []
        for event in self.reader.feed(data):
            if isinstance(event, DroppedFrame):
                reply = self._dropped_frame(event)
            else:
                reply = self._request(event)
            if reply is not None:
                out.append(reply)
            if self.reset_requested:
                break  # the device restarts after answering: whatever followed is lost
        return out

    def _nak(self, seq: int, request: int, code: Nak, message: str = "", detail: int = 0) -> bytes:
        self.counters["naks_sent"] += 1
        return encode_frame(Msg.NAK, seq, p.NakInfo(code, request, detail, message).pack())

    def _dropped_frame(self, err: DroppedFrame) -> bytes | None:
        if err.seq is None or err.type is None:
            return None  # nothing to answer to: garbage, or a frame cut short
        if err.kind == "crc" and err.header_consistent:
            return self._nak(err.seq, err.type, Nak.CRC, "frame CRC mismatch")
        if err.kind == "overflow":
            return self._nak(err.seq, err.type, Nak.TOO_LARGE, f"frame exceeds {self.identity.max_payload} "
                             "payload bytes", self.identity.max_payload)
        if err.kind == "version":
            return self._nak(err.seq, err.type, Nak.UNSUPPORTED, f"protocol version {PROTOCOL_VERSION} only",
                             PROTOCOL_VERSION)
        if err.kind == "length":
            return self._nak(err.seq, err.type, Nak.BAD_REQUEST, err.detail)
        return None

    def _request(self, frame: Frame) -> bytes | None:
        if frame.type >= Msg.ACK:
            return None  # an answer type: our own echo on a loop, or noise that passed the CRC
        key = (frame.seq, frame.type, zlib.crc32(frame.payload))
        if frame.type in p.REMEMBERED and key in self.answers:
            return self.answers[key]
        handler = _HANDLERS.get(frame.type)
        try:
            if handler is None:
                raise _Refuse(Nak.UNSUPPORTED, f"unknown request type 0x{frame.type:02x}", PROTOCOL_VERSION)
            reply = encode_frame(Msg.ACK, frame.seq, handler(self, frame.payload))
        except _Refuse as refusal:
            reply = self._nak(frame.seq, frame.type, refusal.code, refusal.message, refusal.detail)
        except p.MalformedPayload as exc:
            reply = self._nak(frame.seq, frame.type, Nak.BAD_REQUEST, str(exc))
        if frame.type in p.REMEMBERED:
            self.answers[key] = reply
            while len(self.answers) > _REMEMBERED_ANSWERS:
                self.answers.popitem(last=False)
        return reply

    # --- requests ------------------------------------------------------------------------------

    def _hello(self, payload: bytes) -> bytes:
        if payload:
            self.host_payload = max(DEFAULT_HOST_PAYLOAD, p.unpack_host_hello(payload))
        self.answers.clear()  # a new session: sequence numbers start over
        return self.identity.hello().pack()

    def _info(self, payload: bytes) -> bytes:
        slots = []
        active_index = self.active.index if self.active else None
        for index in range(SLOT_COUNT):
            record = self.active if self.active and self.active.index == index else self.store.read(index)
            if record is None:
                slots.append(p.SlotInfo(False))
            else:
                slots.append(p.SlotInfo(True, len(record.model), record.arena_bytes, record.version,
                                        record.sha256, record.name,
                                        index == active_index and self.store.confirmed()))
        t = self.transfer
        return p.DeviceInfo(
            active_index, tuple(slots),
            t.begin.xfer if t else 0, t.begin.total if t else 0, t.held.prefix() if t else 0,
            self.model.input_bytes if self.model else 0, self.model.output_bytes if self.model else 0).pack()

    def _stats(self, payload: bytes) -> bytes:
        m, c = self.model, self.counters
        return p.DeviceStats(
            arena_bytes=m.arena_bytes if m else 0, arena_head_bytes=m.head_bytes if m else 0,
            arena_tail_bytes=m.tail_bytes if m else 0, invocations=c["invocations"],
            invoke_errors=c["invoke_errors"], last_invoke_us=c["last_invoke_us"], frames_ok=self.reader.frames,
            frames_bad=self.reader.bad_frames, crc_errors=self.reader.errors["crc"], naks_sent=c["naks_sent"],
            model_bytes_received=c["model_bytes_received"],
            uptime_ms=int((self._clock() - self._booted) * 1000)).pack()

    def _model_begin(self, payload: bytes) -> bytes:
        begin = p.ModelBegin.unpack(payload)
        if begin.xfer == 0:
            raise _Refuse(Nak.BAD_REQUEST, "transfer id 0 is reserved")
        if begin.model_size > self.identity.slot_bytes:
            raise _Refuse(Nak.TOO_LARGE, f"model of {begin.model_size} bytes, a slot holds "
                          f"{self.identity.slot_bytes}", self.identity.slot_bytes)
        if begin.arena_bytes > self.identity.arena_ram_bytes:
            raise _Refuse(Nak.ARENA_TOO_SMALL, f"arena of {begin.arena_bytes} bytes, "
                          f"{self.identity.arena_ram_bytes} available", self.identity.arena_ram_bytes)
        if begin.total > self.identity.slot_bytes + 65536:
            raise _Refuse(Nak.TOO_LARGE, "manifest and signature too large", self.identity.slot_bytes)
        if self.transfer is not None and self.transfer.same_model(begin):
            self.transfer.begin = begin  # resume: keep what already arrived
        else:
            self.transfer = _Transfer(begin, bytearray(begin.total))
        return p.pack_u32(self.transfer.held.prefix())

    def _model_data(self, payload: bytes) -> bytes:
        xfer, offset, chunk = p.unpack_data(payload)
        t = self.transfer
        if t is None or t.begin.xfer != xfer:
            raise _Refuse(Nak.SEQUENCE, f"no transfer {xfer} open", p.NO_TRANSFER)
        end = offset + len(chunk)
        if end > t.begin.total:
            raise _Refuse(Nak.TOO_LARGE, f"bytes {offset}..{end} past the end {t.begin.total}", t.begin.total)
        t.buffer[offset:end] = chunk
        t.held.add(offset, end)
        self.counters["model_bytes_received"] += len(chunk)
        return p.DataAck(xfer, offset, len(chunk), t.held.prefix()).pack()

    def _model_commit(self, payload: bytes) -> bytes:
        xfer = p.unpack_xfer(payload)
        t = self.transfer
        if t is None or t.begin.xfer != xfer:
            raise _Refuse(Nak.SEQUENCE, f"no transfer {xfer} open", p.NO_TRANSFER)
        gap = t.held.first_gap(0, t.begin.total)
        if gap is not None:
            raise _Refuse(Nak.INCOMPLETE, f"bytes from {gap} missing", gap)
        record = self._verify(t)
        try:
            model = load_model(record.model, record.arena_bytes, self.identity.arena_ram_bytes,
                               host_arena_bytes=host_arena_bytes(record.manifest, record.arena_bytes))
        except LoadError as exc:
            self.transfer = None
            raise _Refuse(Nak.ARENA_TOO_SMALL if exc.arena else Nak.MODEL_INVALID, str(exc),
                          self.identity.arena_ram_bytes if exc.arena else 0) from None
        index = self.store.inactive_index()
        record = SlotRecord(index, record.model, record.sha256, record.arena_bytes, record.name, record.version,
                            record.manifest, record.signature)
        self.store.write(index, record)
        self.store.activate(index)
        if self.model is not None:
            self.model.runner.close()
        self.model, self.active, self.transfer, self.staged, self.last_output = model, record, None, None, None
        return p.pack_u8(index)

    def _verify(self, t: _Transfer) -> SlotRecord:
        """Signature (when keys are set), manifest, then the model's hash: before any slot is touched."""
        b = t.begin
        data = bytes(t.buffer)
        manifest = data[:b.manifest_len] if b.manifest_len else None
        signature = data[b.manifest_len:b.manifest_len + b.signature_len] if b.signature_len else None
        model = data[b.manifest_len + b.signature_len:]
        name, version, arena = "", None, b.arena_bytes
        if manifest is not None:
            from firmware_bridge.kit import verify_manifest
            from lepton_edge.errors import BadInput

            try:
                parsed = verify_manifest(manifest, signature, self.trusted_keys,
                                         require_signature=bool(self.trusted_keys))
            except BadInput as exc:
                self.transfer = None
                code = Nak.SIGNATURE if "signature" in str(exc) or "unsigned" in str(exc) else Nak.BAD_REQUEST
                raise _Refuse(code, str(exc).replace("manifest: ", "")) from None
            if parsed["model"]["sha256"] != b.sha256 or parsed["model"]["size"] != b.model_size:
                self.transfer = None
                raise _Refuse(Nak.HASH_MISMATCH, "MODEL_BEGIN and the manifest name different models")
            name, version = str(parsed["name"]), int(parsed["version"])
            if not arena:
                arena = int(parsed.get("arena", {}).get("recommended_bytes") or 0)
            floor = self.store.floor(name)
            if floor is not None and version < floor:
                self.transfer = None
                raise _Refuse(Nak.VERSION, f"version {version} is older than the confirmed {floor}", floor)
        elif self.trusted_keys:
            self.transfer = None
            raise _Refuse(Nak.SIGNATURE, "this device only takes signed artifacts")
        digest = hashlib.sha256(model).hexdigest()
        if digest != b.sha256:
            self.transfer = None
            raise _Refuse(Nak.HASH_MISMATCH, f"sha256 {digest[:16]}... is not {b.sha256[:16]}...")
        if arena <= 0:
            raise _Refuse(Nak.BAD_REQUEST, "no arena size given")
        if arena > self.identity.arena_ram_bytes:
            self.transfer = None
            raise _Refuse(Nak.ARENA_TOO_SMALL, f"arena of {arena} bytes, {self.identity.arena_ram_bytes} "
                          "available", self.identity.arena_ram_bytes)
        return SlotRecord(-1, model, digest, arena, name, version, manifest, signature)

    def _input_data(self, payload: bytes) -> bytes:
        xfer, offset, chunk = p.unpack_data(payload)
        model = self._require_model()
        if xfer == 0:
            raise _Refuse(Nak.BAD_REQUEST, "transfer id 0 is reserved")
        if self.staged is None or self.staged.xfer != xfer:
            self.staged = _Staged(xfer, bytearray(model.input_bytes))
        end = offset + len(chunk)
        if end > model.input_bytes:
            raise _Refuse(Nak.TOO_LARGE, f"input has {model.input_bytes} bytes", model.input_bytes)
        self.staged.buffer[offset:end] = chunk
        self.staged.held.add(offset, end)
        return p.DataAck(xfer, offset, len(chunk), self.staged.held.prefix()).pack()

    def _invoke(self, payload: bytes) -> bytes:
        req = p.InvokeRequest.unpack(payload)
        model = self._require_model()
        if req.input_len != model.input_bytes:
            raise _Refuse(Nak.BAD_REQUEST, f"the model takes {model.input_bytes} input bytes, not {req.input_len}",
                          model.input_bytes)
        if req.xfer == 0:
            data = req.inline
            if len(data) != req.input_len:
                raise _Refuse(Nak.BAD_REQUEST, f"{len(data)} inline input bytes, {req.input_len} announced")
        else:
            s = self.staged
            if s is None or s.xfer != req.xfer:
                raise _Refuse(Nak.SEQUENCE, f"no input {req.xfer} staged", p.NO_TRANSFER)
            gap = s.held.first_gap(0, len(s.buffer))
            if gap is not None:
                raise _Refuse(Nak.INCOMPLETE, f"input bytes from {gap} missing", gap)
            data = bytes(s.buffer)
        crc = zlib.crc32(data) & 0xFFFFFFFF
        if crc != req.input_crc:
            raise _Refuse(Nak.HASH_MISMATCH, "input CRC mismatch", crc)
        try:
            output, us = model.invoke(data)
        except Exception as exc:  # the interpreter's failure goes back as a NAK
            self.counters["invoke_errors"] += 1
            raise _Refuse(Nak.INVOKE_FAILED, f"{type(exc).__name__}: {exc}") from None
        self.counters["invocations"] += 1
        self.counters["last_invoke_us"] = us
        self.last_output = output
        room = max(0, min(req.reply_max, self.host_payload - 12))
        return p.InvokeAnswer(us, len(output), zlib.crc32(output) & 0xFFFFFFFF, output[:room]).pack()

    def _output_read(self, payload: bytes) -> bytes:
        offset, max_len = p.unpack_output_read(payload)
        if self.last_output is None:
            raise _Refuse(Nak.SEQUENCE, "no output to read: INVOKE first", p.NO_TRANSFER)
        if offset > len(self.last_output):
            raise _Refuse(Nak.TOO_LARGE, f"output has {len(self.last_output)} bytes", len(self.last_output))
        room = max(1, min(max_len, self.host_payload - 4))
        return p.pack_output_chunk(offset, self.last_output[offset:offset + room])

    def _model_confirm(self, payload: bytes) -> bytes:
        if self.active is None:
            raise _Refuse(Nak.NO_MODEL, "no model to confirm")
        self.store.confirm(self.active.name, self.active.version)
        return p.pack_u8(self.active.index)

    def _reset(self, payload: bytes) -> bytes:
        self.reset_requested = True
        return b""

    def _require_model(self) -> LoadedModel:
        if self.model is None:
            raise _Refuse(Nak.NO_MODEL,
                          "no model: flash one first" + (f" ({self.boot_error})" if self.boot_error else ""))
        return self.model

    def describe(self) -> str:
        """One line for the simulator's log."""
        if self.active is None:
            return "no model"
        name = self.active.name or "model"
        return f"{name} ({len(self.active.model)} B, sha256 {self.active.sha256[:12]}, slot {self.active.index})"


_HANDLERS: dict[int, Callable[[DeviceCore, bytes], bytes]] = {
    Msg.HELLO: DeviceCore._hello,
    Msg.INFO: DeviceCore._info,
    Msg.STATS: DeviceCore._stats,
    Msg.MODEL_BEGIN: DeviceCore._model_begin,
    Msg.MODEL_DATA: DeviceCore._model_data,
    Msg.MODEL_COMMIT: DeviceCore._model_commit,
    Msg.MODEL_CONFIRM: DeviceCore._model_confirm,
    Msg.INPUT_DATA: DeviceCore._input_data,
    Msg.INVOKE: DeviceCore._invoke,
    Msg.OUTPUT_READ: DeviceCore._output_read,
    Msg.RESET: DeviceCore._reset,
}
