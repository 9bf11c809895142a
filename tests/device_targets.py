"""Devices under test for the protocol conformance, fuzz, reset and bit-exactness tests: the Python
simulator (``device-sim --profile stm32l4r5``) and the reference firmware boards (``host``, ``qemu-m4``,
``qemu-m7``), started on their own slot files, and :class:`Raw`: PROTOCOL.md spoken frame by frame."""

from __future__ import annotations

import sys
import time
from pathlib import Path

from conftest import REPO

if str(REPO) not in sys.path:  # hil_tests is a package at the top of the repository
    sys.path.insert(0, str(REPO))

from firmware_bridge import protocol as p
from firmware_bridge.frame import Frame
from firmware_bridge.link import HOST_MAX_PAYLOAD, Link, PortOptions, open_serial
from firmware_bridge.protocol import Msg
from hil_tests.boards import FirmwareBoard, firmware_missing, make_board, require_firmware  # noqa: F401
from hil_tests.support import Simulator  # noqa: F401

#: The devices every conformance test runs on; the same test body for each.
DEVICES = ("sim", "host", "qemu-m4")
SIM_PROFILE = "stm32l4r5"


class Board:
    """A device under test that can be restarted on new, empty slots (``wipe``) or on the same ones."""

    def __init__(self, kind: str, root: Path, trusted_keys: tuple = ()) -> None:
        self.kind, self.root, self.trusted_keys = kind, root, trusted_keys
        self.generation = 0
        self.device = make_board(kind, root / "g0", trusted_keys=trusted_keys, sim_profile=SIM_PROFILE)
        self._session: Raw | None = None

    def session(self) -> Raw:
        """One host session kept open across tests (QEMU notices a pty reopened only after up to a
        second); a new HELLO for each caller, so each starts a fresh protocol session."""
        if self._session is not None and (self._session.port != self.port or self._session.link.failure):
            self.close_session()
        if self._session is None:
            self._session = Raw(self.port)
        else:
            self._session.link.drain()
            self._session.handshake()
        return self._session

    def close_session(self) -> None:
        if self._session is not None:
            self._session.close()
            self._session = None

    @property
    def port(self) -> str:
        return self.device.port

    @property
    def profile(self) -> str:
        return self.device.profile

    def start(self) -> str:
        self.close_session()
        return self.device.start()

    def stop(self) -> None:
        self.close_session()
        self.device.stop()

    def kill(self) -> None:
        self.close_session()
        self.device.kill()

    def wipe(self) -> str:
        """The same kind of device with empty slots (no model, no version floors)."""
        self.close_session()
        self.device.stop()
        self.generation += 1
        self.device = make_board(self.kind, self.root / f"g{self.generation}", trusted_keys=self.trusted_keys,
                                 sim_profile=SIM_PROFILE)
        return self.device.start()

    def log_text(self) -> str:
        try:
            return Path(self.device.log).read_text(errors="replace")
        except OSError:
            return ""


class NoAnswer(AssertionError):
    pass


class Raw:
    """One host session on the line, frame by frame: ``ack``/``nak`` send a request and check its answer."""

    def __init__(self, port: str, *, hello: bool = True, timeout: float = 15.0) -> None:
        self.port = port
        self.link = Link(open_serial(PortOptions(port)), port)
        self.seq = 1000
        self.announces: list[Frame] = []
        self.hello: p.DeviceHello | None = None
        if hello:
            self.handshake(timeout)

    def __enter__(self) -> Raw:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self.link.close()

    def handshake(self, timeout: float = 15.0) -> p.DeviceHello:
        """HELLO until answered (an emulator may still be booting when its port appears)."""
        self.link.write(b"\x00")
        deadline = time.monotonic() + timeout
        seq = self.next_seq()
        while True:
            self.link.send(Msg.HELLO, seq, p.pack_host_hello(HOST_MAX_PAYLOAD))
            try:
                frame = self.answer(seq, 0.5)
                break
            except NoAnswer:
                if time.monotonic() > deadline:
                    raise NoAnswer(f"no answer to HELLO on {self.port} within {timeout} s") from None
        assert frame.type == Msg.ACK, frame
        self.hello = p.DeviceHello.unpack(frame.payload)
        return self.hello

    def next_seq(self) -> int:
        self.seq = self.seq % 0xFFFF + 1
        return self.seq

    def answer(self, seq: int, timeout: float = 10.0) -> Frame:
        """The ACK or NAK carrying ``seq`` (ANNOUNCEs are kept in ``announces``; other answers skipped)."""
        deadline = time.monotonic() + timeout
        while True:
            frame = self.link.recv(deadline - time.monotonic())
            if frame is None:
                raise NoAnswer(f"no answer with sequence number {seq} within {timeout} s")
            if frame.type == Msg.ANNOUNCE:
                self.announces.append(frame)
            elif frame.seq == seq and frame.type in (Msg.ACK, Msg.NAK):
                return frame

    def quiet(self, seconds: float) -> list[Frame]:
        """Every frame that arrives within ``seconds``."""
        frames, deadline = [], time.monotonic() + seconds
        while (frame := self.link.recv(deadline - time.monotonic())) is not None:
            frames.append(frame)
            if frame.type == Msg.ANNOUNCE:
                self.announces.append(frame)
        return frames

    def exchange(self, type_: int, payload: bytes = b"", *, seq: int | None = None, timeout: float = 30.0) -> Frame:
        seq = self.next_seq() if seq is None else seq
        self.link.send(type_, seq, payload)
        return self.answer(seq, timeout)

    def send_wire(self, wire: bytes, seq: int, timeout: float = 10.0) -> Frame:
        self.link.write(wire)
        return self.answer(seq, timeout)

    def ack(self, type_: int, payload: bytes = b"", **kw) -> bytes:
        frame = self.exchange(type_, payload, **kw)
        if frame.type != Msg.ACK:
            raise AssertionError(f"{Msg(type_).name}: {p.NakInfo.unpack(frame.payload).describe()}")
        return frame.payload

    def nak(self, type_: int, payload: bytes = b"", code: int | None = None, **kw) -> p.NakInfo:
        frame = self.exchange(type_, payload, **kw)
        return check_nak(frame, type_, code)

    # --- requests --------------------------------------------------------------------------------

    def info(self) -> p.DeviceInfo:
        return p.DeviceInfo.unpack(self.ack(Msg.INFO))

    def stats(self) -> p.DeviceStats:
        return p.DeviceStats.unpack(self.ack(Msg.STATS))

    @property
    def chunk(self) -> int:
        """Data bytes per MODEL_DATA/INPUT_DATA frame: the device's max_payload less the data header."""
        return min(self.hello.max_payload, 4096) - p.DATA_HEADER.size

    def begin(self, xfer: int, model: bytes, arena: int, manifest: bytes = b"", signature: bytes = b"",
              sha256: str | None = None) -> int:
        import hashlib

        digest = sha256 or hashlib.sha256(model).hexdigest()
        begin = p.ModelBegin(xfer, len(model), digest, arena, len(manifest), len(signature))
        return p.unpack_u32(self.ack(Msg.MODEL_BEGIN, begin.pack()))

    def data(self, xfer: int, blob: bytes, start: int = 0, end: int | None = None,
             type_: int = Msg.MODEL_DATA, chunk: int | None = None) -> p.DataAck:
        end = len(blob) if end is None else end
        chunk = chunk or self.chunk
        ack = None
        for offset in range(start, end, chunk):
            piece = blob[offset:min(end, offset + chunk)]
            ack = p.DataAck.unpack(self.ack(type_, p.pack_data(xfer, offset, piece)))
            assert (ack.xfer, ack.offset, ack.length) == (xfer, offset, len(piece)), ack
        return ack

    def flash(self, xfer: int, model: bytes, arena: int, manifest: bytes = b"", signature: bytes = b"",
              confirm: bool = True) -> int:
        """Open, send, commit (and confirm) a model; the slot it went to."""
        self.begin(xfer, model, arena, manifest, signature)
        self.data(xfer, manifest + signature + model)
        slot = p.unpack_u8(self.ack(Msg.MODEL_COMMIT, p.pack_xfer(xfer), timeout=120))
        if confirm:
            assert p.unpack_u8(self.ack(Msg.MODEL_CONFIRM)) == slot
        return slot

    def invoke(self, inputs: bytes, reply_max: int = 0xFFFF) -> tuple[p.InvokeAnswer, bytes]:
        """INVOKE (inline when it fits, staged otherwise); the answer and every output byte."""
        import random
        import zlib

        crc = zlib.crc32(inputs) & 0xFFFFFFFF
        if len(inputs) + 12 <= self.hello.max_payload:
            req = p.InvokeRequest(0, len(inputs), crc, reply_max, inputs)
        else:
            xfer = random.randrange(1, 0x10000)
            self.data(xfer, inputs, type_=Msg.INPUT_DATA)
            req = p.InvokeRequest(xfer, len(inputs), crc, reply_max)
        answer = p.InvokeAnswer.unpack(self.ack(Msg.INVOKE, req.pack(), timeout=120))
        out = bytearray(answer.inline[:answer.output_len])
        while len(out) < answer.output_len:
            offset, chunk = p.unpack_output_chunk(self.ack(Msg.OUTPUT_READ, p.pack_output_read(len(out), 1024)))
            assert offset == len(out) and chunk, (offset, len(out))
            out += chunk
        assert zlib.crc32(bytes(out)) & 0xFFFFFFFF == answer.output_crc
        return answer, bytes(out)


def check_nak(frame: Frame, type_: int, code: int | None) -> p.NakInfo:
    assert frame.type == Msg.NAK, f"{Msg(type_).name}: expected a NAK, got {frame}"
    nak = p.NakInfo.unpack(frame.payload)
    if code is not None:
        assert nak.code == code, f"{Msg(type_).name}: expected NAK {p.nak_name(code)}, got {nak.describe()}"
    assert nak.request == type_, nak
    assert len(frame.payload) - 6 <= p.NAK_MESSAGE_MAX, nak
    frame.payload[6:].decode("utf-8")  # the message is UTF-8
    return nak
