"""The host's view of a device on a serial line: handshake, commands, flashing, inference.

A gateway or a command opens a :class:`Device` with :func:`connect`, then calls :meth:`Device.flash`
with an artifact (or a :class:`~firmware_bridge.payload.ModelPayload`) and :meth:`Device.invoke` with
input bytes. Every wait is bounded: a device that does not answer is a :class:`DeviceTimeout`, a port
that goes away a :class:`PortError`, each one line.
"""

from __future__ import annotations

import base64
import hashlib
import random
import time
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from firmware_bridge import protocol as p
from firmware_bridge.errors import BridgeError, DeviceRebooted, DeviceRefused, DeviceTimeout
from firmware_bridge.frame import PROTOCOL_VERSION, wire_size
from firmware_bridge.link import HOST_MAX_PAYLOAD, Link, PortOptions, open_serial
from firmware_bridge.payload import ModelPayload, ram_needed
from firmware_bridge.protocol import Msg, Nak
from firmware_bridge.sizing import FrameSizer, LineTimer
from firmware_bridge.transfer import ProgressFn, TransferLost, UploadStats, upload
from lepton_edge.errors import CheckFailed, LeptonError

if TYPE_CHECKING:
    from firmware_bridge.kit import Artifact

HELLO_TIMEOUT_S = 5.0
REQUEST_TIMEOUT_S = 15.0
COMMIT_TIMEOUT_S = 60.0  # a board may take a while to write flash and load the model
_INVOKE_HEADER = 12


@dataclass(frozen=True)
class FlashResult:
    model_bytes: int
    sha256: str
    slot: int | None
    arena_bytes: int
    ram_needed_bytes: int
    seconds: float
    bytes_out: int  # on the line, host to device, from MODEL_BEGIN to the check after commit
    bytes_in: int
    frames: int = 0
    lost_frames: int = 0
    final_payload: int = 0
    already_active: bool = False
    self_test: str = "none"  # passed | none

    @property
    def efficiency(self) -> float:
        """Model bytes over all bytes on the line, both ways."""
        line = self.bytes_out + self.bytes_in
        return self.model_bytes / line if line else 0.0


@dataclass(frozen=True)
class InvokeResult:
    outputs: bytes
    device_us: int


@dataclass(frozen=True)
class FitCheck:
    ram_needed_bytes: int
    margin_bytes: int
    margin_source: str


def connect(options: PortOptions, *, hello_timeout: float = HELLO_TIMEOUT_S, settle: float = 0.2) -> Device:
    """Open the port, wait for the device's HELLO (its boot announcement, or the answer to ours)."""
    ser = open_serial(options)
    device = Device(Link(ser, options.url), options)
    try:
        device.handshake(hello_timeout, settle)
    except BaseException:
        device.close()
        raise
    return device


def check_sizes(hello: p.DeviceHello, source: str, model_bytes: int, arena_bytes: int,
                margin_bytes: int | None) -> FitCheck:
    """CheckFailed when a model of these figures does not fit what the device said in HELLO (its RAM for
    the arena, its slot size). Needs no call on the line: a gateway checks an update's manifest with it."""
    needed, margin, margin_source = ram_needed(arena_bytes, margin_bytes, _profile_margin(hello.profile))
    if needed > hello.arena_ram_bytes:
        margin_text = f" + {margin:,} B kernel margin ({margin_source})" if margin else ""
        raise CheckFailed(
            f"{source} does not fit {hello.profile}: its arena needs {needed:,} B "
            f"({arena_bytes:,} B{margin_text}), the device has {hello.arena_ram_bytes:,} B of RAM "
            "for the arena; nothing was sent")
    if model_bytes > hello.slot_bytes:
        raise CheckFailed(f"{source} does not fit {hello.profile}: the model has "
                          f"{model_bytes:,} B, a slot holds {hello.slot_bytes:,} B; nothing was sent")
    return FitCheck(needed, margin, margin_source)


def _profile_margin(profile: str) -> int | None:
    from firmware_bridge.kit import load_profile

    try:
        return load_profile(profile).arena_margin_bytes
    except LeptonError:
        return None


class Device:
    def __init__(self, link: Link, options: PortOptions) -> None:
        self.link = link
        self.options = options
        self._hello: p.DeviceHello | None = None
        self.sizer = FrameSizer(256)
        self.timer = LineTimer(options.baud)
        self._seq = random.randrange(1, 0x10000)
        self._invoke_allowance_s = 0.5
        self.reboots_seen = 0

    def __enter__(self) -> Device:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.link.close()

    @property
    def name(self) -> str:
        return self.link.name

    def next_seq(self) -> int:
        self._seq = self._seq % 0xFFFF + 1  # 1..65535; 0 is the device's own announcement
        return self._seq

    # --- handshake -----------------------------------------------------------------------------

    def handshake(self, timeout: float = HELLO_TIMEOUT_S, settle: float = 0.2) -> p.DeviceHello:
        """Wait for the device to speak first (after a reset, its announcement), then say HELLO."""
        deadline = time.monotonic() + timeout
        listen_until = deadline if self.options.reset else time.monotonic() + settle
        while time.monotonic() < listen_until:
            frame = self.link.recv(listen_until - time.monotonic())
            if frame is not None and frame.type == Msg.ANNOUNCE:
                self.note_announce(frame.payload)
                break
        self.link.write(b"\x00")  # end whatever partial frame the device may hold
        try:
            answer = self.request(Msg.HELLO, p.pack_host_hello(HOST_MAX_PAYLOAD), what="HELLO",
                                  total_s=max(0.5, deadline - time.monotonic()), first_wait=0.3)
        except DeviceTimeout:
            raise DeviceTimeout(f"no device answered HELLO on {self.name} within {timeout:g} s "
                                "(is firmware speaking PROTOCOL.md running? right --baud?)") from None
        hello = p.DeviceHello.unpack(answer)
        self._adopt(hello)
        return hello

    def _adopt(self, hello: p.DeviceHello) -> None:
        if hello.protocol_version != PROTOCOL_VERSION:
            raise BridgeError(f"the device on {self.name} speaks protocol {hello.protocol_version}, "
                              f"this host {PROTOCOL_VERSION}")
        self._hello = hello
        self.sizer = FrameSizer(max(32, min(hello.max_payload, HOST_MAX_PAYLOAD)))

    def note_announce(self, payload: bytes) -> None:
        """The device (re)started: it forgot any transfer and our HELLO."""
        self.reboots_seen += 1
        try:
            self._adopt(p.DeviceHello.unpack(payload))
        except (p.MalformedPayload, BridgeError):
            pass

    # --- one request, one answer ---------------------------------------------------------------

    def request(self, type_: int, payload: bytes = b"", *, what: str, total_s: float = REQUEST_TIMEOUT_S,
                first_wait: float | None = None, extra_s: float = 0.0, on_reboot: str = "retry",
                resizable: bool = False) -> bytes:
        """Send a request and return the payload of its ACK, sending it again (same sequence number)
        when the answer is late. NAK: :class:`DeviceRefused`. A restart of the device: the request is
        sent again after a new HELLO (``on_reboot="retry"``) or :class:`DeviceRebooted` is raised.
        ``resizable``: give up early when the line turns out too noisy for a frame this big (the caller
        cuts the payload and asks again)."""
        seq = self.next_seq()
        start = time.monotonic()
        wire = self.link.send(type_, seq, payload)
        wait = first_wait if first_wait is not None else self.timer.timeout(wire + wire_size(64), extra_s)
        # A serial line has no congestion to back off from: a lost frame is sent again soon, the wait
        # grows a little only in case the device is slower than it has been so far.
        longest = 2 * wait
        sent_at = start
        while True:
            frame = self.link.recv(sent_at + wait - time.monotonic())
            now = time.monotonic()
            if frame is None:
                if now - start >= total_s:
                    raise DeviceTimeout(f"no answer to {what} from the device on {self.name} "
                                        f"within {total_s:.0f} s")
                self.sizer.loss(len(payload))
                if resizable and len(payload) > self.sizer.size:
                    raise _FrameTooBig()
                self.link.send(type_, seq, payload)
                sent_at, wait = now, min(wait * 1.5, longest)
                continue
            if frame.type == Msg.ANNOUNCE:
                self.note_announce(frame.payload)
                if on_reboot != "retry":
                    raise DeviceRebooted(f"the device on {self.name} restarted during {what}")
                if type_ != Msg.HELLO:
                    self.request(Msg.HELLO, p.pack_host_hello(HOST_MAX_PAYLOAD), what="HELLO",
                                 total_s=max(1.0, total_s - (now - start)))
                self.link.send(type_, seq, payload)
                sent_at = time.monotonic()
                continue
            if frame.seq != seq:
                continue  # a late answer to something earlier
            if frame.type == Msg.ACK:
                self.sizer.success(len(payload))
                return frame.payload
            if frame.type == Msg.NAK:
                try:
                    nak = p.NakInfo.unpack(frame.payload)
                except p.MalformedPayload:
                    continue
                merged = nak.code == Nak.TOO_LARGE and self._hello is not None and \
                    len(payload) <= self._hello.max_payload  # two frames run together on the line
                if nak.code in (Nak.CRC, Nak.BUSY) or merged:
                    time.sleep(0.05 if nak.code == Nak.BUSY else 0)
                    self.link.send(type_, seq, payload)
                    sent_at = time.monotonic()
                    continue
                raise DeviceRefused(nak, what)

    def info(self) -> p.DeviceInfo:
        return p.DeviceInfo.unpack(self.request(Msg.INFO, what="INFO"))

    def stats(self) -> p.DeviceStats:
        return p.DeviceStats.unpack(self.request(Msg.STATS, what="STATS"))

    def reset(self, *, wait: bool = True, timeout: float = HELLO_TIMEOUT_S) -> None:
        """RESET the device; with ``wait``, until it has announced itself and answered HELLO again."""
        before = self.reboots_seen
        try:
            self.request(Msg.RESET, what="RESET", on_reboot="raise")
        except DeviceRebooted:
            pass  # the answer was lost, the restart was not
        if not wait:
            return
        deadline = time.monotonic() + timeout
        while self.reboots_seen == before and time.monotonic() < deadline:
            frame = self.link.recv(deadline - time.monotonic())
            if frame is not None and frame.type == Msg.ANNOUNCE:
                self.note_announce(frame.payload)
        if self.reboots_seen == before:
            raise DeviceTimeout(f"the device on {self.name} did not announce itself after RESET within {timeout:g} s")
        self.request(Msg.HELLO, p.pack_host_hello(HOST_MAX_PAYLOAD), what="HELLO")

    # --- flashing ------------------------------------------------------------------------------

    def check_fit(self, payload: ModelPayload) -> FitCheck:
        """Refuse, before any byte of the model is sent, what the device said it cannot hold."""
        return check_sizes(self._require_hello(), payload.source, len(payload.model), payload.arena_bytes,
                           payload.margin_bytes)

    def confirm(self) -> bool:
        """MODEL_CONFIRM: the active model passed the host's checks; its version becomes the device's floor.
        False when the firmware predates the request (it answers UNSUPPORTED and keeps no floors)."""
        try:
            self.request(Msg.MODEL_CONFIRM, what="MODEL_CONFIRM")
        except DeviceRefused as refusal:
            if refusal.nak.code == Nak.UNSUPPORTED:
                return False
            raise
        return True

    def flash(self, model: ModelPayload | Artifact, *, progress: ProgressFn | None = None, force: bool = False,
              attempts: int = 3, confirm: bool = True) -> FlashResult:
        """Send a model to the inactive slot, have the device verify and activate it, then check.

        ``model``: a :class:`ModelPayload`, or an :class:`lepton_edge.artifact.Artifact`. Nothing is sent
        (``already_active``) when the device runs these bytes already, with the same version for an
        artifact, unless ``force``. With ``confirm`` the model is confirmed once it is verified (and
        its self-test passed); a gateway confirms only after its health check, so that until then the
        device takes the previous model back (MODEL_CONFIRM in PROTOCOL.md).
        """
        payload = model if isinstance(model, ModelPayload) else ModelPayload.from_artifact(model)
        fit = self.check_fit(payload)
        out0, in0, started = self.link.bytes_out, self.link.bytes_in, time.monotonic()

        def result(slot: int | None, stats: UploadStats | None, already: bool, self_test: str) -> FlashResult:
            return FlashResult(len(payload.model), payload.sha256, slot, payload.arena_bytes, fit.ram_needed_bytes,
                               time.monotonic() - started, self.link.bytes_out - out0, self.link.bytes_in - in0,
                               stats.frames if stats else 0, stats.lost if stats else 0, self.sizer.size,
                               already, self_test)

        if not force:
            info = self.info()
            active = info.active
            # The same bytes (and version) with another arena size is a new flash: the arena is the slot's.
            if active is not None and active.sha256 == payload.sha256 and \
                    (payload.version is None or active.version == payload.version) and \
                    (not payload.arena_bytes or active.arena_bytes == payload.arena_bytes):
                if confirm and not active.confirmed:
                    self.confirm()
                return result(info.active_slot, None, True, "none")  # a new version of the same bytes is sent
        blob = (payload.manifest or b"") + (payload.signature or b"") + payload.model
        stats: UploadStats | None = None
        slot: int | None = None
        for attempt in range(attempts):
            xfer = random.randrange(1, 0x10000)
            begin = p.ModelBegin(xfer, len(payload.model), payload.sha256,
                                 0 if payload.manifest and not payload.arena_bytes else payload.arena_bytes,
                                 len(payload.manifest or b""), len(payload.signature or b""))
            try:
                start = p.unpack_u32(self.request(Msg.MODEL_BEGIN, begin.pack(), what="MODEL_BEGIN"))
                stats = upload(self, Msg.MODEL_DATA, xfer, blob, start=min(start, len(blob)), progress=progress)
                slot = p.unpack_u8(self.request(Msg.MODEL_COMMIT, p.pack_xfer(xfer), what="MODEL_COMMIT",
                                                extra_s=1.0, total_s=COMMIT_TIMEOUT_S, on_reboot="raise"))
                break
            except (DeviceRebooted, TransferLost):
                if attempt == attempts - 1:
                    raise BridgeError(f"the device on {self.name} restarted {attempts} times during the "
                                      "transfer; giving up") from None
                self.request(Msg.HELLO, p.pack_host_hello(HOST_MAX_PAYLOAD), what="HELLO")
                active = self.info().active
                if active is not None and active.sha256 == payload.sha256:
                    break  # it restarted after the swap
            except DeviceRefused as refusal:
                if refusal.nak.code == Nak.INCOMPLETE and attempt < attempts - 1:
                    continue
                raise
        info = self.info()
        if info.active is None or info.active.sha256 != payload.sha256:
            got = info.active.sha256[:16] if info.active else "no model"
            raise CheckFailed(f"after the commit the device runs {got}, not {payload.sha256[:16]}")
        self_test = self._self_test(payload)
        if confirm:
            self.confirm()
        return result(info.active_slot if slot is None else slot, stats, False, self_test)

    def _self_test(self, payload: ModelPayload) -> str:
        test = payload.self_test or {}
        expected = (test.get("output_sha256") or {}).get("tflm")
        if not test.get("input_b64") or not expected:
            return "none"
        outputs = self.invoke(base64.b64decode(test["input_b64"])).outputs
        if hashlib.sha256(outputs).hexdigest() != expected:
            raise CheckFailed("the manifest's self-test gave different outputs on the device")
        return "passed"

    # --- inference -----------------------------------------------------------------------------

    def invoke(self, inputs: bytes | Sequence[Any], *, attempts: int = 3) -> InvokeResult:
        """Run the active model on the concatenated input tensors (bytes, or arrays in input order)."""
        data = inputs if isinstance(inputs, (bytes, bytearray, memoryview)) else \
            b"".join(_tensor_bytes(a) for a in inputs)
        data = bytes(data)
        restarts = 0
        while True:
            try:
                return self._invoke_once(data)
            except _FrameTooBig:
                continue  # the sizer shrank: send the input in smaller frames
            except (DeviceRebooted, TransferLost):
                restarts += 1
                if restarts >= attempts:
                    raise BridgeError(f"the device on {self.name} kept restarting during INVOKE") from None
                self.request(Msg.HELLO, p.pack_host_hello(HOST_MAX_PAYLOAD), what="HELLO")

    def _invoke_once(self, data: bytes) -> InvokeResult:
        self._require_hello()
        crc = zlib.crc32(data) & 0xFFFFFFFF
        room = self.sizer.size
        reply_max = max(16, room - _INVOKE_HEADER)
        if len(data) + _INVOKE_HEADER <= room:
            req = p.InvokeRequest(0, len(data), crc, reply_max, data)
        else:
            xfer = random.randrange(1, 0x10000)
            upload(self, Msg.INPUT_DATA, xfer, data)
            req = p.InvokeRequest(xfer, len(data), crc, reply_max)
        answer = p.InvokeAnswer.unpack(self.request(Msg.INVOKE, req.pack(), what="INVOKE",
                                                    extra_s=self._invoke_allowance_s, on_reboot="raise",
                                                    resizable=req.xfer == 0))
        self._invoke_allowance_s = max(0.05, 2 * answer.device_us / 1e6)
        out = bytearray(answer.inline[:answer.output_len])
        while len(out) < answer.output_len:
            chunk_answer = self.request(Msg.OUTPUT_READ, p.pack_output_read(len(out), max(16, self.sizer.size - 4)),
                                        what="OUTPUT_READ", on_reboot="raise")
            offset, chunk = p.unpack_output_chunk(chunk_answer)
            if offset != len(out) or not chunk:
                raise BridgeError(f"the device answered OUTPUT_READ at {len(out)} with offset {offset}")
            out += chunk[:answer.output_len - len(out)]
        if zlib.crc32(out) & 0xFFFFFFFF != answer.output_crc:
            raise BridgeError("the outputs read back do not match the CRC the device announced")
        return InvokeResult(bytes(out), answer.device_us)

    @property
    def hello(self) -> p.DeviceHello:
        """What the device said in its HELLO (:func:`connect` has it before it returns the device)."""
        return self._require_hello()

    def _require_hello(self) -> p.DeviceHello:
        if self._hello is None:
            raise BridgeError(f"no HELLO from the device on {self.name} yet")
        return self._hello


class _FrameTooBig(BridgeError):
    """A request's frame is larger than the noisy line lets through; cut it and ask again."""


def _tensor_bytes(array: Any) -> bytes:
    import numpy as np

    return np.ascontiguousarray(array).tobytes()

