"""PROTOCOL.md, request by request and NAK code by NAK code, on every device the kit can start: the
Python simulator (``device-sim --profile stm32l4r5``), the reference firmware built for ``host`` (ASan,
UBSan, reference kernels) and the same firmware emulated as ``qemu-m4`` (Cortex-M4F, CMSIS-NN).

The same test body runs on the three: a difference between them is a bug in one of them. Raw frames
where the test is about the line (``device_targets.Raw``), the host API where it is about flashing
artifacts. One board per device kind for the module; ``Board.wipe`` restarts it on empty slots.
"""

from __future__ import annotations

import hashlib
import os
import random
import struct
import threading
import zlib
from dataclasses import dataclass

import numpy as np
import pytest

from conftest import MLPERF_INT8, require_shared
from device_targets import DEVICES, Board, Raw, check_nak
from firmware_bridge import cobs
from firmware_bridge import protocol as p
from firmware_bridge.frame import HEADER, PROTOCOL_VERSION, encode_frame, pack_frame
from firmware_bridge.protocol import Msg, Nak

NO_TRANSFER = 0xFFFFFFFF


# --- devices and models ----------------------------------------------------------------------------

@pytest.fixture(scope="module", params=DEVICES)
def board(request, tmp_path_factory):
    b = Board(request.param, tmp_path_factory.mktemp(f"conformance-{request.param}"))
    b.start()
    yield b
    b.stop()


@pytest.fixture
def raw(board):
    """A host session (a fresh HELLO) on the module's board."""
    return board.session()


@pytest.fixture
def empty(board):
    """A session on the board restarted with empty slots."""
    board.wipe()
    return board.session()


@pytest.fixture(scope="module")
def kws():
    from firmware_bridge.payload import load_payload

    return load_payload(require_shared(MLPERF_INT8["kws"]))


@dataclass(frozen=True)
class Tiny:
    """A 656-byte int8 model (``a = x + x`` on int8[1,4], ``b = relu(y)`` on int8[1,2]): quick to send
    on an emulated line, where the test is about the protocol and not the model."""

    model: bytes
    arena_bytes: int = 8192
    input_bytes: int = 6
    output_bytes: int = 6

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.model).hexdigest()


@pytest.fixture(scope="module")
def tiny():
    from agent_helpers import two_in_two_out_model

    return Tiny(two_in_two_out_model())


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory, tiny):
    """``artifacts(version, name=..., key="trusted"|"other"|None) -> Path``: the tiny model as a
    converter-style artifact for stm32l4r5 (no self-test), made once per arguments."""
    from agent_helpers import build_artifact, keypair

    root = tmp_path_factory.mktemp("conformance-artifacts")
    model_path = root / "tiny.tflite"
    model_path.write_bytes(tiny.model)
    keys = {"trusted": keypair(root / "trusted"), "other": keypair(root / "other")}
    made: dict = {}

    def make(version: int, name: str = "conformance", key: str | None = "trusted"):
        if (version, name, key) not in made:
            made[(version, name, key)] = build_artifact(
                root / f"{name}-v{version}-{key}", model_path, version=version,
                name=name, profile="stm32l4r5", self_test=False,
                private_key=keys[key][0] if key else None)
        return made[(version, name, key)]

    make.public_key = lambda which="trusted": keys[which][1]
    return make


def ensure_model(raw: Raw, payload) -> None:
    """``payload`` (bare, no manifest) active on the device."""
    info = raw.info()
    if info.active is None or info.active.sha256 != payload.sha256:
        raw.flash(random.randrange(1, 0x10000), payload.model, payload.arena_bytes)
    assert raw.info().active.sha256 == payload.sha256


def random_input(raw: Raw, seed: int) -> bytes:
    n = raw.info().input_bytes
    return np.random.default_rng(seed).integers(-128, 128, n, dtype=np.int8).tobytes()


def invoke_payload(inputs: bytes, reply_max: int = 1024, *, crc: int | None = None, length: int | None = None,
                   xfer: int = 0, inline: bool = True) -> bytes:
    crc = zlib.crc32(inputs) & 0xFFFFFFFF if crc is None else crc
    return p.InvokeRequest(xfer, len(inputs) if length is None else length, crc, reply_max,
                           inputs if inline else b"").pack()


def host_device(board):
    from firmware_bridge.host import connect
    from firmware_bridge.link import PortOptions

    board.close_session()  # one opener of the port at a time
    return connect(PortOptions(board.port), hello_timeout=15)


# --- HELLO, ANNOUNCE, RESET, INFO, STATS, MODEL_CONFIRM ----------------------------------------------

def test_hello_says_what_the_device_is_and_reset_announces_it(board, raw):
    from lepton_edge.profiles import load_profile

    profile = load_profile("stm32l4r5")
    hello = raw.hello
    assert hello.protocol_version == PROTOCOL_VERSION == 1
    assert hello.profile == "stm32l4r5"
    assert hello.arena_ram_bytes == profile.ram_budget_bytes == 491520
    assert hello.slot_bytes == profile.flash_budget_bytes == 1572864
    assert 1 <= hello.window <= 255 and 256 <= hello.max_payload <= 0xFFFF
    expected_firmware = "lepton-edge-sim " if board.kind == "sim" else "lepton-edge-fw "
    assert hello.firmware.startswith(expected_firmware), hello.firmware
    if board.kind != "sim":
        kernels = "reference" if board.kind == "host" else "cmsis-nn"
        assert hello.firmware.split()[-2:] == [board.kind, kernels], hello.firmware

    # HELLO without a payload is answered the same (the host's max_payload defaults to 256).
    first = raw.ack(Msg.HELLO, p.pack_host_hello(16384))
    assert raw.ack(Msg.HELLO) == first

    # RESET: an empty ACK, then the device restarts and speaks first: ANNOUNCE, sequence 0, its HELLO.
    raw.announces.clear()
    assert raw.ack(Msg.RESET) == b""
    frames = list(raw.announces)
    if not frames:
        first_frame = raw.link.recv(5.0)
        frames = [first_frame] if first_frame is not None else []
    frames += raw.quiet(0.3)
    announces = [f for f in frames if f.type == Msg.ANNOUNCE]
    assert len(announces) == 1, frames
    assert announces[0].seq == 0 and announces[0].payload == first
    raw.handshake()
    assert raw.hello == hello


def test_an_empty_device_info_stats_and_the_requests_that_need_a_model(empty):
    raw = empty
    info = raw.info()
    assert info.active_slot is None and info.active is None and len(info.slots) == 2
    assert not any(slot.valid or slot.confirmed for slot in info.slots)
    assert (info.transfer_xfer, info.transfer_total, info.transfer_contiguous) == (0, 0, 0)
    assert (info.input_bytes, info.output_bytes) == (0, 0)
    raw_info = raw.ack(Msg.INFO)
    assert raw_info[0] == p.NO_SLOT and raw_info[1] == 2

    before = raw.stats()
    assert len(raw.ack(Msg.STATS)) == 48
    assert (before.arena_bytes, before.arena_head_bytes, before.arena_tail_bytes) == (0, 0, 0)
    assert (before.invocations, before.invoke_errors, before.model_bytes_received) == (0, 0, 0)

    inputs = bytes(16)
    nak = raw.nak(Msg.INVOKE, invoke_payload(inputs), Nak.NO_MODEL)
    assert nak.detail == 0
    raw.nak(Msg.INPUT_DATA, p.pack_data(5, 0, bytes(8)), Nak.NO_MODEL)
    raw.nak(Msg.MODEL_CONFIRM, b"", Nak.NO_MODEL)
    nak = raw.nak(Msg.OUTPUT_READ, p.pack_output_read(0, 64), Nak.SEQUENCE)  # OUTPUT_READ before INVOKE
    assert nak.detail == NO_TRANSFER

    after = raw.stats()
    assert after.naks_sent == before.naks_sent + 4
    assert after.frames_ok >= before.frames_ok + 5
    assert after.uptime_ms >= before.uptime_ms and after.invoke_errors == 0


def test_flash_info_stats_confirm_and_two_slots(board, raw, kws):
    xfer = 4242
    assert raw.begin(xfer, kws.model, kws.arena_bytes) == 0
    info = raw.info()
    assert (info.transfer_xfer, info.transfer_total, info.transfer_contiguous) == (xfer, len(kws.model), 0)
    half = (len(kws.model) // 2) // raw.chunk * raw.chunk
    ack = raw.data(xfer, kws.model, 0, half)
    assert ack.contiguous == half and raw.info().transfer_contiguous == half
    # MODEL_BEGIN for the same model resumes: the answer is what the device already holds.
    assert raw.begin(xfer, kws.model, kws.arena_bytes) == half
    raw.data(xfer, kws.model, half)
    slot = p.unpack_u8(raw.ack(Msg.MODEL_COMMIT, p.pack_xfer(xfer), timeout=120))
    assert slot in (0, 1)

    info = raw.info()
    active = info.active
    assert info.active_slot == slot and active is not None
    assert (active.size, active.arena_bytes, active.sha256) == (len(kws.model), kws.arena_bytes, kws.sha256)
    assert active.version is None and active.name == "" and not active.confirmed
    assert info.transfer_xfer == 0
    assert (info.input_bytes, info.output_bytes) == (490, 12)  # KWS: int8[1,49,10] in, int8[1,12] out

    assert p.unpack_u8(raw.ack(Msg.MODEL_CONFIRM)) == slot
    assert raw.info().active.confirmed

    before = raw.stats()
    answer, _out = raw.invoke(random_input(raw, 0))
    stats = raw.stats()
    assert stats.arena_bytes == kws.arena_bytes
    assert 0 < stats.arena_head_bytes and 0 < stats.arena_tail_bytes
    assert stats.arena_head_bytes + stats.arena_tail_bytes <= kws.arena_bytes
    assert stats.invocations == before.invocations + 1 and stats.invoke_errors == 0
    assert stats.last_invoke_us == answer.device_us > 0
    assert stats.model_bytes_received >= len(kws.model)
    assert stats.frames_ok > before.frames_ok

    # The next flash goes to the other slot; the previous model stays there, valid.
    other = raw.flash(4243, kws.model, kws.arena_bytes)
    info = raw.info()
    assert other == 1 - slot and info.active_slot == other and info.active.confirmed
    assert info.slots[slot].valid and info.slots[slot].sha256 == kws.sha256


def test_commit_and_invoke_answers_are_remembered_until_hello(raw, tiny):
    ensure_model(raw, tiny)
    a, b = random_input(raw, 1), random_input(raw, 2)
    seq_a, seq_b = 9001, 9002
    first_a = raw.exchange(Msg.INVOKE, invoke_payload(a), seq=seq_a)
    first_b = raw.exchange(Msg.INVOKE, invoke_payload(b), seq=seq_b)
    count = raw.stats().invocations
    again_a = raw.exchange(Msg.INVOKE, invoke_payload(a), seq=seq_a)
    again_b = raw.exchange(Msg.INVOKE, invoke_payload(b), seq=seq_b)
    assert (again_a, again_b) == (first_a, first_b)  # the same bytes, device time included
    assert raw.stats().invocations == count  # not run again
    # The same sequence number with another payload is another request.
    raw.exchange(Msg.INVOKE, invoke_payload(b), seq=seq_a)
    assert raw.stats().invocations == count + 1

    xfer, seq_c = 777, 9003
    raw.begin(xfer, tiny.model, tiny.arena_bytes)
    raw.data(xfer, tiny.model)
    committed = raw.exchange(Msg.MODEL_COMMIT, p.pack_xfer(xfer), seq=seq_c, timeout=120)
    assert committed.type == Msg.ACK
    assert raw.exchange(Msg.MODEL_COMMIT, p.pack_xfer(xfer), seq=seq_c) == committed
    raw.ack(Msg.MODEL_CONFIRM)
    # HELLO starts a session: the device forgets, and the repeat is a new COMMIT of a closed transfer.
    raw.handshake()
    nak = check_nak(raw.exchange(Msg.MODEL_COMMIT, p.pack_xfer(xfer), seq=seq_c), Msg.MODEL_COMMIT, Nak.SEQUENCE)
    assert nak.detail == NO_TRANSFER
    assert raw.exchange(Msg.INVOKE, invoke_payload(a), seq=seq_a).type == Msg.ACK
    assert raw.stats().invocations == count + 2


# --- one test per NAK code ------------------------------------------------------------------------

def test_nak_crc(raw):
    before = raw.stats()
    frame = bytearray(pack_frame(Msg.INFO, 3101))
    frame[-1] ^= 0x5A  # the CRC is wrong; the header's length agrees with the bytes
    answer = raw.send_wire(cobs.encode(bytes(frame)) + b"\x00", 3101)
    nak = check_nak(answer, Msg.INFO, Nak.CRC)
    assert nak.detail == 0 and answer.seq == 3101

    payload_frame = bytearray(pack_frame(Msg.OUTPUT_READ, 3102, p.pack_output_read(0, 8)))
    payload_frame[7] ^= 0x01  # a payload byte damaged
    check_nak(raw.send_wire(cobs.encode(bytes(payload_frame)) + b"\x00", 3102), Msg.OUTPUT_READ, Nak.CRC)

    # A bad CRC whose length field disagrees with the bytes: nothing trustworthy to answer.
    frame = bytearray(pack_frame(Msg.INFO, 3103, b"abc"))
    frame[4] = 9
    frame[-2] ^= 0xFF
    raw.link.write(cobs.encode(bytes(frame)) + b"\x00")
    assert not [f for f in raw.quiet(0.5) if f.seq == 3103]
    after = raw.stats()
    assert after.crc_errors >= before.crc_errors + 3 and after.frames_bad >= before.frames_bad + 3
    assert after.naks_sent >= before.naks_sent + 2


def test_nak_sequence(raw, tiny):
    nak = raw.nak(Msg.MODEL_DATA, p.pack_data(31000, 0, b"\x01\x02\x03"), Nak.SEQUENCE)
    assert nak.detail == NO_TRANSFER
    nak = raw.nak(Msg.MODEL_COMMIT, p.pack_xfer(31000), Nak.SEQUENCE)
    assert nak.detail == NO_TRANSFER
    raw.begin(31001, tiny.model, tiny.arena_bytes)
    nak = raw.nak(Msg.MODEL_DATA, p.pack_data(31002, 0, tiny.model[:64]), Nak.SEQUENCE)  # another transfer
    assert nak.detail == NO_TRANSFER
    assert raw.info().transfer_xfer == 31001
    ensure_model(raw, tiny)
    # After a restart there is no output to read, and no transfer.
    raw.ack(Msg.RESET)
    raw.quiet(0.5)
    raw.handshake()
    assert raw.info().transfer_xfer == 0
    nak = raw.nak(Msg.OUTPUT_READ, p.pack_output_read(0, 16), Nak.SEQUENCE)
    assert nak.detail == NO_TRANSFER


def test_nak_too_large(raw, tiny):
    limit = raw.hello.max_payload
    # A frame above max_payload, whatever its type: the device reads its header and says so.
    big = bytes(random.Random(1).randrange(1, 256) for _ in range(limit + 1024))
    answer = raw.send_wire(encode_frame(Msg.MODEL_DATA, 3301, big), 3301)
    nak = check_nak(answer, Msg.MODEL_DATA, Nak.TOO_LARGE)
    assert nak.detail == limit

    # A model larger than a slot, refused at MODEL_BEGIN.
    begin = p.ModelBegin(3302, raw.hello.slot_bytes + 1, "00" * 32, 1024)
    nak = raw.nak(Msg.MODEL_BEGIN, begin.pack(), Nak.TOO_LARGE)
    assert nak.detail == raw.hello.slot_bytes
    assert raw.info().transfer_xfer != 3302

    # Bytes past the end of the transfer; a frame of exactly max_payload is taken.
    size = 3 * limit
    raw.begin(3303, bytes(size), 8192)
    data = bytes(range(1, 256)) * (limit // 255 + 1)
    ack = p.DataAck.unpack(raw.ack(Msg.MODEL_DATA, p.pack_data(3303, 0, data[:limit - p.DATA_HEADER.size])))
    assert ack.length == limit - 6
    nak = raw.nak(Msg.MODEL_DATA, p.pack_data(3303, size - 10, bytes(11)), Nak.TOO_LARGE)
    assert nak.detail == size

    # Input bytes past the model's input; an output read past the output.
    ensure_model(raw, tiny)
    nak = raw.nak(Msg.INPUT_DATA, p.pack_data(3304, 2, bytes(5)), Nak.TOO_LARGE)
    assert nak.detail == tiny.input_bytes
    raw.invoke(random_input(raw, 3))
    nak = raw.nak(Msg.OUTPUT_READ, p.pack_output_read(tiny.output_bytes + 1, 4), Nak.TOO_LARGE)
    assert nak.detail == tiny.output_bytes
    end = tiny.output_bytes
    assert p.unpack_output_chunk(raw.ack(Msg.OUTPUT_READ, p.pack_output_read(end, 4))) == (end, b"")


def test_nak_no_model(empty):
    nak = empty.nak(Msg.INVOKE, invoke_payload(bytes(6)), Nak.NO_MODEL)
    assert nak.detail == 0
    empty.nak(Msg.MODEL_CONFIRM, b"", Nak.NO_MODEL)


def test_nak_arena_too_small(raw, tiny):
    ensure_model(raw, tiny)
    ram = raw.hello.arena_ram_bytes
    begin = p.ModelBegin(3501, len(tiny.model), tiny.sha256, ram + 16)
    nak = raw.nak(Msg.MODEL_BEGIN, begin.pack(), Nak.ARENA_TOO_SMALL)
    assert nak.detail == ram
    # An arena that fits the RAM but not the model: TFLite Micro cannot allocate it, at COMMIT (16 bytes:
    # not even its allocator fits; 600: the allocator fits, the tensors do not).
    for xfer, arena in ((3502, 16), (3503, 600)):
        raw.begin(xfer, tiny.model, arena)
        raw.data(xfer, tiny.model)
        nak = raw.nak(Msg.MODEL_COMMIT, p.pack_xfer(xfer), Nak.ARENA_TOO_SMALL, timeout=120)
        assert nak.detail == ram
    assert raw.info().active.sha256 == tiny.sha256 and raw.info().active.arena_bytes == tiny.arena_bytes


def test_nak_busy_is_sent_again_by_the_host():
    """BUSY cannot be provoked on these devices: each serves one request at a time, in order, and does
    its work (a flash write, an inference) before it reads the next frame, so there is never a request
    it must turn away. What a host does with BUSY is tested here against a device that answers BUSY to
    the first try: the host waits and sends the same request again, with the same sequence number."""
    from firmware_bridge.frame import FrameReader
    from firmware_bridge.host import connect
    from firmware_bridge.link import PortOptions

    master, slave = os.openpty()
    import tty

    tty.setraw(slave)
    seen: list[tuple[int, int]] = []
    stop = threading.Event()
    hello = p.DeviceHello(1, 1, 256, 1000, 1000, "stm32l4r5", "busy-test").pack()

    def device() -> None:
        reader = FrameReader(4096)
        while not stop.is_set():
            import select

            if not select.select([master], [], [], 0.05)[0]:
                continue
            for frame in reader.feed(os.read(master, 4096)):
                if not hasattr(frame, "payload"):
                    continue
                seen.append((frame.type, frame.seq))
                if frame.type == Msg.HELLO:
                    os.write(master, encode_frame(Msg.ACK, frame.seq, hello))
                elif sum(1 for t, _ in seen if t == Msg.STATS) == 1:
                    os.write(master, encode_frame(Msg.NAK, frame.seq, p.NakInfo(Nak.BUSY, frame.type).pack()))
                else:
                    os.write(master, encode_frame(Msg.ACK, frame.seq, p.DeviceStats(invocations=7).pack()))

    thread = threading.Thread(target=device, daemon=True)
    thread.start()
    try:
        with connect(PortOptions(os.ttyname(slave)), hello_timeout=5) as dev:
            assert dev.stats().invocations == 7
    finally:
        stop.set()
        thread.join(2)
        os.close(master)
        os.close(slave)
    stats_tries = [seq for t, seq in seen if t == Msg.STATS]
    assert len(stats_tries) == 2 and stats_tries[0] == stats_tries[1]


def test_nak_bad_request(raw, tiny):
    ensure_model(raw, tiny)
    nak = raw.nak(Msg.MODEL_BEGIN, p.ModelBegin(0, 100, "00" * 32, 1024).pack(), Nak.BAD_REQUEST)  # xfer 0
    raw.nak(Msg.MODEL_BEGIN, bytes(10), Nak.BAD_REQUEST)  # cut short
    raw.nak(Msg.HELLO, b"\x01", Nak.BAD_REQUEST)
    raw.nak(Msg.MODEL_DATA, b"\x01\x00\x00", Nak.BAD_REQUEST)
    raw.nak(Msg.OUTPUT_READ, b"\x00\x00\x00", Nak.BAD_REQUEST)
    raw.nak(Msg.INVOKE, b"\x00\x00\x01", Nak.BAD_REQUEST)
    raw.nak(Msg.INPUT_DATA, p.pack_data(0, 0, bytes(4)), Nak.BAD_REQUEST)  # transfer id 0 is reserved
    inputs = random_input(raw, 4)
    nak = raw.nak(Msg.INVOKE, invoke_payload(inputs[:3]), Nak.BAD_REQUEST)  # wrong input length
    assert nak.detail == tiny.input_bytes
    raw.nak(Msg.INVOKE, invoke_payload(inputs[:3], length=6), Nak.BAD_REQUEST)  # inline bytes != announced
    # A frame whose CRC checks but whose length field disagrees with the bytes received.
    body = HEADER.pack(PROTOCOL_VERSION, Msg.INFO, 3701, 5) + b"ab"
    answer = raw.send_wire(cobs.encode(body + struct.pack("<I", zlib.crc32(body))) + b"\x00", 3701)
    check_nak(answer, Msg.INFO, Nak.BAD_REQUEST)
    # COMMIT of a model without a manifest and without an arena size.
    raw.begin(3702, tiny.model, 0)
    raw.data(3702, tiny.model)
    raw.nak(Msg.MODEL_COMMIT, p.pack_xfer(3702), Nak.BAD_REQUEST)
    assert raw.info().active.sha256 == tiny.sha256


def test_nak_incomplete(raw, tiny):
    raw.begin(3801, tiny.model, tiny.arena_bytes)
    chunk = 100
    gap = 2 * chunk
    raw.data(3801, tiny.model, 0, gap, chunk=chunk)
    raw.data(3801, tiny.model, gap + chunk, chunk=chunk)  # out of order: everything after one frame
    nak = raw.nak(Msg.MODEL_COMMIT, p.pack_xfer(3801), Nak.INCOMPLETE)
    assert nak.detail == gap
    assert raw.info().transfer_contiguous == gap
    raw.data(3801, tiny.model, gap, gap + chunk)
    assert raw.info().transfer_contiguous == len(tiny.model)
    raw.ack(Msg.MODEL_COMMIT, p.pack_xfer(3801), timeout=120)
    raw.ack(Msg.MODEL_CONFIRM)

    inputs = random_input(raw, 5)
    raw.data(3802, inputs, 0, 2, type_=Msg.INPUT_DATA)
    nak = raw.nak(Msg.INVOKE, invoke_payload(inputs, xfer=3802, inline=False), Nak.INCOMPLETE)
    assert nak.detail == 2
    raw.data(3802, inputs, 2, type_=Msg.INPUT_DATA)
    staged = p.InvokeAnswer.unpack(raw.ack(Msg.INVOKE, invoke_payload(inputs, xfer=3802, inline=False)))
    answer, out = raw.invoke(inputs)  # the same input inline
    assert staged.inline == out and staged.output_crc == answer.output_crc


def test_nak_hash_mismatch(raw, tiny, artifacts):
    ensure_model(raw, tiny)
    other = hashlib.sha256(b"another model").hexdigest()
    raw.begin(3901, tiny.model, tiny.arena_bytes, sha256=other)
    raw.data(3901, tiny.model)
    raw.nak(Msg.MODEL_COMMIT, p.pack_xfer(3901), Nak.HASH_MISMATCH, timeout=120)
    # The manifest names another model than MODEL_BEGIN announces.
    from lepton_edge.artifact import read_artifact_files

    manifest, signature, model = read_artifact_files(artifacts(1, "hash-check"))
    changed = model[:-1] + bytes([model[-1] ^ 1])
    raw.begin(3902, changed, 0, manifest, signature)
    raw.data(3902, manifest + signature + changed)
    raw.nak(Msg.MODEL_COMMIT, p.pack_xfer(3902), Nak.HASH_MISMATCH, timeout=120)
    # The staged input's CRC is not the one announced.
    inputs = random_input(raw, 6)
    nak = raw.nak(Msg.INVOKE, invoke_payload(inputs, crc=zlib.crc32(inputs) ^ 1), Nak.HASH_MISMATCH)
    assert nak.detail == zlib.crc32(inputs) & 0xFFFFFFFF
    assert raw.info().active.sha256 == tiny.sha256


def exp_model() -> bytes:
    """``y = exp(x)`` on float32[1, 8]: TFLite Micro has the kernel, the firmware's op list does not."""
    from lepton_edge.tflite.vendor import schema_py_generated as fb
    from lepton_edge.tflite.writer import pack

    def tensor(name: str):
        t = fb.TensorT()
        t.shape, t.type, t.buffer, t.name = [1, 8], fb.TensorType.FLOAT32, 0, name
        return t

    op = fb.OperatorT()
    op.opcodeIndex, op.inputs, op.outputs = 0, [0], [1]
    op.builtinOptionsType, op.builtinOptions = fb.BuiltinOptions.ExpOptions, fb.ExpOptionsT()
    subgraph = fb.SubGraphT()
    subgraph.tensors, subgraph.inputs, subgraph.outputs, subgraph.operators = \
        [tensor("x"), tensor("y")], [0], [1], [op]
    code = fb.OperatorCodeT()
    code.builtinCode, code.deprecatedBuiltinCode, code.version = fb.BuiltinOperator.EXP, fb.BuiltinOperator.EXP, 1
    model = fb.ModelT()
    model.version, model.operatorCodes, model.subgraphs = 3, [code], [subgraph]
    model.buffers, model.description = [fb.BufferT()], "lepton-edge conformance: EXP"
    return pack(model)


def test_nak_model_invalid(raw, tiny):
    ensure_model(raw, tiny)
    junk = bytes(random.Random(10).randrange(256) for _ in range(3000))  # not a .tflite
    raw.begin(4001, junk, 32768)
    raw.data(4001, junk)
    raw.nak(Msg.MODEL_COMMIT, p.pack_xfer(4001), Nak.MODEL_INVALID, timeout=120)
    model = exp_model()  # an operator the firmware lacks
    raw.begin(4002, model, 4096)
    raw.data(4002, model)
    raw.nak(Msg.MODEL_COMMIT, p.pack_xfer(4002), Nak.MODEL_INVALID, timeout=120)
    info = raw.info()
    assert info.active.sha256 == tiny.sha256 and info.transfer_xfer == 0


def test_nak_version(board, artifacts):
    from firmware_bridge.errors import DeviceRefused
    from lepton_edge.artifact import load_artifact

    v1, v2, v3 = (load_artifact(artifacts(v, f"floor-{board.kind}"), (), require_signature=False) for v in (1, 2, 3))
    with host_device(board) as device:
        device.flash(v2)  # confirmed: the floor of this name is 2
        with pytest.raises(DeviceRefused) as older:
            device.flash(v1, force=True)
        assert older.value.nak.code == Nak.VERSION and older.value.nak.detail == 2
        device.flash(v3, confirm=False)  # unconfirmed: the floor stays 2, so 2 can come back
        assert device.info().active.version == 3 and not device.info().active.confirmed
        device.flash(v2, force=True)
        info = device.info()
        assert info.active.version == 2 and info.active.name == f"floor-{board.kind}" and info.active.confirmed
    # Floors are kept across a restart.
    board.kill()
    board.start()
    with host_device(board) as device:
        with pytest.raises(DeviceRefused) as older:
            device.flash(v1, force=True)
        assert older.value.nak.code == Nak.VERSION and older.value.nak.detail == 2


@pytest.fixture(scope="module")
def keyed_board(request, board, artifacts, tmp_path_factory):
    """The same kind of device, started with one trusted key: it takes only manifests signed by it."""
    b = Board(board.kind, tmp_path_factory.mktemp(f"conformance-keyed-{board.kind}"),
              trusted_keys=(artifacts.public_key("trusted"),))
    b.start()
    yield b
    b.stop()


def test_nak_signature(keyed_board, artifacts, tiny, tmp_path):
    from firmware_bridge.errors import DeviceRefused
    from lepton_edge.artifact import load_artifact, read_artifact_files

    def load(path):
        return load_artifact(path, (), require_signature=False)

    with host_device(keyed_board) as device:
        for refused in (artifacts(1, "signed", key=None), artifacts(1, "signed", key="other")):
            with pytest.raises(DeviceRefused) as failure:
                device.flash(load(refused))
            assert failure.value.nak.code == Nak.SIGNATURE, failure.value
        assert device.info().active is None
        device.flash(load(artifacts(1, "signed")))
        assert device.info().active.version == 1
    raw = keyed_board.session()
    # A signed manifest changed after signing (the version raised).
    manifest, signature, model = read_artifact_files(artifacts(2, "signed"))
    tampered = manifest.replace(b'"version": 2', b'"version": 9')
    assert tampered != manifest and len(tampered) == len(manifest)
    raw.begin(4101, model, 0, tampered, signature)
    raw.data(4101, tampered + signature + model)
    raw.nak(Msg.MODEL_COMMIT, p.pack_xfer(4101), Nak.SIGNATURE, timeout=120)
    # No manifest at all.
    raw.begin(4102, tiny.model, tiny.arena_bytes)
    raw.data(4102, tiny.model)
    raw.nak(Msg.MODEL_COMMIT, p.pack_xfer(4102), Nak.SIGNATURE, timeout=120)
    assert raw.info().active.version == 1


def test_nak_invoke_failed_is_never_sent_for_a_model_that_loaded(raw, tiny):
    """INVOKE_FAILED cannot be provoked from the line: the device loads a model at COMMIT (and at boot)
    by allocating its tensors and running it once, and refuses there (MODEL_INVALID, ARENA_TOO_SMALL)
    what TFLite Micro cannot run; the input length and CRC are checked before the interpreter runs.
    What can be checked: a loaded model's invocations never fail, and STATS counts none."""
    ensure_model(raw, tiny)
    before = raw.stats()
    for seed in range(3):
        raw.invoke(random_input(raw, 100 + seed))
    after = raw.stats()
    assert after.invocations == before.invocations + 3 and after.invoke_errors == 0


def test_nak_unsupported(raw):
    nak = raw.nak(0x7E, b"", Nak.UNSUPPORTED)  # a request type no device knows
    assert nak.detail == PROTOCOL_VERSION
    # Another protocol version (its CRC checks): the device says which one it speaks.
    answer = raw.send_wire(encode_frame(Msg.INFO, 4201, b"", version=2), 4201)
    nak = check_nak(answer, Msg.INFO, Nak.UNSUPPORTED)
    assert nak.detail == PROTOCOL_VERSION
    # Answer types sent to the device (an echo on a loop) are not requests: no answer.
    raw.link.send(Msg.ACK, 4202, b"")
    raw.link.send(Msg.ANNOUNCE, 4203, b"")
    assert not [f for f in raw.quiet(0.5) if f.seq in (4202, 4203)]
    assert raw.info().slots


def test_a_window_of_data_frames_in_flight_in_any_order(raw, kws):
    """``window`` MODEL_DATA frames sent back to back, the later ranges first: every one is answered, in
    the order sent, and the device holds the whole model (it takes data in any order)."""
    window = raw.hello.window
    xfer = 4301
    raw.begin(xfer, kws.model, kws.arena_bytes)
    offsets = list(range(0, len(kws.model), raw.chunk))
    sent = 0
    while sent < len(offsets):
        group = offsets[sent:sent + window][::-1]
        seqs = []
        for offset in group:
            seqs.append(raw.next_seq())
            raw.link.send(Msg.MODEL_DATA, seqs[-1], p.pack_data(xfer, offset, kws.model[offset:offset + raw.chunk]))
        answers = [raw.answer(seq) for seq in seqs]
        assert all(a.type == Msg.ACK for a in answers), answers
        acks = [p.DataAck.unpack(a.payload) for a in answers]
        assert [a.offset for a in acks] == group
        sent += len(group)
    assert acks[-1].contiguous == len(kws.model)
    raw.ack(Msg.MODEL_COMMIT, p.pack_xfer(xfer), timeout=120)
    raw.ack(Msg.MODEL_CONFIRM)
    assert raw.info().active.sha256 == kws.sha256


def test_answers_fit_the_largest_payload_the_host_said_it_takes(raw):
    """HELLO's ``max_payload``: the device cuts INVOKE's inline output and OUTPUT_READ's chunks to it
    (never below 256, what every host takes); the rest is read in pieces."""
    from hil_tests.models import wide_add_model

    model = wide_add_model(300)  # y = x + x on float32[1, 300]: 1,200 output bytes
    raw.flash(4401, model, 16384)
    x = np.arange(300, dtype=np.float32) / 7
    for host_payload in (100, 256, 700):
        raw.ack(Msg.HELLO, p.pack_host_hello(host_payload))
        room = max(256, host_payload)
        answer = p.InvokeAnswer.unpack(raw.ack(Msg.INVOKE, invoke_payload(x.tobytes(), reply_max=0xFFFF)))
        assert answer.output_len == 1200 and len(answer.inline) == room - 12
        out = bytearray(answer.inline)
        while len(out) < answer.output_len:
            offset, chunk = p.unpack_output_chunk(raw.ack(Msg.OUTPUT_READ, p.pack_output_read(len(out), 0xFFFF)))
            assert offset == len(out) and 0 < len(chunk) <= room - 4
            out += chunk
        assert zlib.crc32(bytes(out)) & 0xFFFFFFFF == answer.output_crc
        assert np.frombuffer(bytes(out), np.float32).tobytes() == (x + x).tobytes()
    raw.handshake()
