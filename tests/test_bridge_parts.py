"""The bridge's parts on their own: byte ranges, frame sizing, line faults, payloads, slots, and the
device's protocol engine fed frames directly (real TFLite Micro, no serial line)."""

from __future__ import annotations

import hashlib
import random
import zlib

import numpy as np
import pytest

from conftest import MLPERF_INT8, require_shared
from firmware_bridge import protocol as p
from firmware_bridge.device import DeviceCore, DeviceIdentity
from firmware_bridge.faults import LineFaults, Pacer
from firmware_bridge.frame import Frame, FrameReader, encode_frame
from firmware_bridge.protocol import Msg, Nak
from firmware_bridge.ranges import RangeSet
from firmware_bridge.sizing import FrameSizer, LineTimer
from firmware_bridge.slots import SlotRecord, SlotStore


def test_rangeset_matches_a_set_of_integers():
    rng = random.Random(11)
    for _ in range(500):
        ranges, ref = RangeSet(), set()
        for _ in range(25):
            a = rng.randrange(100)
            b = a + rng.randrange(20)
            if rng.random() < 0.6:
                ranges.add(a, b)
                ref |= set(range(a, b))
            else:
                ranges.remove(a, b)
                ref -= set(range(a, b))
            flat = [i for s, e in ranges for i in range(s, e)]
            assert flat == sorted(ref)
            assert all(e1 < s2 for (_, e1), (s2, _) in zip(list(ranges), list(ranges)[1:], strict=False))  # merged
        assert ranges.first_gap(0, 130) == next((i for i in range(130) if i not in ref), None)
        assert ranges.prefix() == next(i for i in range(200) if i not in ref)


def test_sizer_keeps_big_frames_on_a_clean_line_and_shrinks_on_a_noisy_one():
    sizer = FrameSizer(4096)
    for _ in range(100):
        sizer.success(4096)
    assert sizer.size == 4096 and sizer.error_rate == 0
    rng = random.Random(5)
    for _ in range(2000):  # a line that loses 1 % of bytes, both ways
        size = sizer.size
        if rng.random() < 0.99 ** (size + 40):
            sizer.success(size)
        else:
            sizer.loss(size)
    assert 0.004 < sizer.error_rate < 0.02
    assert 20 <= sizer.size <= 90
    for _ in range(300):
        sizer.success(sizer.size)
    assert sizer.size == 4096  # the line got better: back to the largest frames


def test_line_timer_learns_the_line_rate():
    timer = LineTimer(baud=115200)
    assert timer.timeout(1000) == pytest.approx(2 * 1000 * 10 / 115200, rel=0.01)
    for _ in range(50):
        timer.sample(0.001, 1000)  # a fast line
    assert timer.timeout(1000) == timer.min_timeout
    assert timer.timeout(1000, extra_s=1.0) >= 1.0


def test_line_faults_drop_and_corrupt_at_their_rates():
    faults = LineFaults(drop_rate=0.01, corrupt_rate=0.02, seed=3)
    data = bytes(200_000)
    out = faults.apply(data)
    assert 0.008 < 1 - len(out) / len(data) < 0.012
    assert 0.015 < sum(1 for b in out if b) / len(out) < 0.025
    assert LineFaults().apply(data) == data
    with pytest.raises(ValueError):
        LineFaults(drop_rate=1.5)


def test_pacer_holds_the_line_rate():
    import time

    pacer = Pacer(100_000)  # 10 kB/s
    start = time.monotonic()
    for _ in range(10):
        pacer.wait(100)
    assert time.monotonic() - start >= 0.09
    assert Pacer(0).chunk() > 1000


def test_payloads_round_trip():
    hello = p.DeviceHello(1, 8, 4096, 157286, 629145, "arduino-nano-33-ble", "fw 1.2")
    assert p.DeviceHello.unpack(hello.pack()) == hello
    info = p.DeviceInfo(1, (p.SlotInfo(False), p.SlotInfo(True, 1000, 2048, 3, "ab" * 32, "kws")), 7, 100, 50, 490, 12)
    assert p.DeviceInfo.unpack(info.pack()) == info and info.active.name == "kws"
    stats = p.DeviceStats(*range(1, 13))
    assert p.DeviceStats.unpack(stats.pack()) == stats
    begin = p.ModelBegin(9, 53968, "cd" * 32, 24272, 1500, 64)
    assert p.ModelBegin.unpack(begin.pack()) == begin and begin.total == 53968 + 1564
    nak = p.NakInfo(Nak.INCOMPLETE, Msg.MODEL_COMMIT, 4096, "bytes from 4096 missing")
    assert p.NakInfo.unpack(nak.pack()) == nak
    req = p.InvokeRequest(0, 3, 77, 100, b"abc")
    assert p.InvokeRequest.unpack(req.pack()) == req
    with pytest.raises(p.MalformedPayload):
        p.DeviceHello.unpack(b"\x01\x02")


def test_slot_store_survives_a_new_instance_and_rejects_a_damaged_slot(tmp_path):
    store = SlotStore(tmp_path)
    assert store.active() is None and store.inactive_index() == 0
    model = b"model bytes"
    record = SlotRecord(0, model, hashlib.sha256(model).hexdigest(), 1024, "m", 2)
    store.write(0, record)
    assert store.active() is None  # written, not yet active
    store.activate(0)
    again = SlotStore(tmp_path).active()
    assert again is not None and again.model == model and again.version == 2 and again.arena_bytes == 1024
    assert store.inactive_index() == 1
    (tmp_path / "slot0" / "model.tflite").write_bytes(b"damaged")
    assert SlotStore(tmp_path).active() is None  # the hash no longer matches


# --- the device's protocol engine, fed frames directly ---------------------------------------

class Host:
    """Speaks to a DeviceCore frame by frame, as a test harness."""

    def __init__(self, core: DeviceCore) -> None:
        self.core = core
        self.reader = FrameReader()
        self.seq = 0

    def send_raw(self, data: bytes) -> list[Frame]:
        return [e for out in self.core.feed(data) for e in self.reader.feed(out) if isinstance(e, Frame)]

    def ask(self, type_: int, payload: bytes = b"", seq: int | None = None) -> Frame:
        if seq is None:
            self.seq += 1
            seq = self.seq
        answers = self.send_raw(encode_frame(type_, seq, payload))
        assert len(answers) == 1 and answers[0].seq == seq
        return answers[0]

    def ok(self, type_: int, payload: bytes = b"") -> bytes:
        answer = self.ask(type_, payload)
        assert answer.type == Msg.ACK, p.NakInfo.unpack(answer.payload)
        return answer.payload

    def nak(self, type_: int, payload: bytes = b"") -> p.NakInfo:
        answer = self.ask(type_, payload)
        assert answer.type == Msg.NAK
        return p.NakInfo.unpack(answer.payload)


@pytest.fixture
def kws():
    from firmware_bridge.payload import plan_for_device

    path = require_shared(MLPERF_INT8["kws"])
    model, arena, _ = plan_for_device(path.read_bytes(), str(path))
    return model, arena


def _core(tmp_path, ram: int = 200_000, slot: int = 600_000) -> DeviceCore:
    return DeviceCore(DeviceIdentity("test-board", "fw", ram, slot, 1024, 4), SlotStore(tmp_path))


def _begin(model: bytes, arena: int, xfer: int = 5) -> bytes:
    return p.ModelBegin(xfer, len(model), hashlib.sha256(model).hexdigest(), arena).pack()


def test_device_flashes_out_of_order_data_and_remembers_the_commit(tmp_path, kws):
    model, arena = kws
    host = Host(_core(tmp_path))
    assert p.DeviceHello.unpack(host.ok(Msg.HELLO, p.pack_host_hello(4096))).profile == "test-board"
    assert host.nak(Msg.INVOKE, p.InvokeRequest(0, 0, 0, 100).pack()).code == Nak.NO_MODEL
    assert p.unpack_u32(host.ok(Msg.MODEL_BEGIN, _begin(model, arena))) == 0
    chunks = [(o, model[o:o + 1000]) for o in range(0, len(model), 1000)]
    random.Random(1).shuffle(chunks)
    for offset, chunk in chunks[:-1]:
        host.ok(Msg.MODEL_DATA, p.pack_data(5, offset, chunk))
    missing = chunks[-1][0]
    incomplete = host.nak(Msg.MODEL_COMMIT, p.pack_xfer(5))
    assert incomplete.code == Nak.INCOMPLETE and incomplete.detail == missing
    ack = p.DataAck.unpack(host.ok(Msg.MODEL_DATA, p.pack_data(5, missing, chunks[-1][1])))
    assert ack.contiguous == len(model)
    host.ok(Msg.MODEL_DATA, p.pack_data(5, 0, model[:1000]))  # a repeat is harmless
    commit = host.ask(Msg.MODEL_COMMIT, p.pack_xfer(5), seq=900)
    assert commit.type == Msg.ACK and p.unpack_u8(commit.payload) == 0
    assert host.ask(Msg.MODEL_COMMIT, p.pack_xfer(5), seq=900) == commit  # answered again, not re-done
    info = p.DeviceInfo.unpack(host.ok(Msg.INFO))
    assert info.active.sha256 == hashlib.sha256(model).hexdigest() and info.transfer_xfer == 0

    data = np.random.default_rng(0).integers(-128, 128, info.input_bytes, dtype=np.int8).tobytes()
    answer = p.InvokeAnswer.unpack(host.ok(Msg.INVOKE, p.InvokeRequest(0, len(data), zlib.crc32(data), 4).pack()
                                           + data))
    assert answer.output_len == info.output_bytes and len(answer.inline) == 4 and answer.device_us > 0
    offset, rest = p.unpack_output_chunk(host.ok(Msg.OUTPUT_READ, p.pack_output_read(4, 100)))
    assert offset == 4 and zlib.crc32(answer.inline + rest) == answer.output_crc
    stats = p.DeviceStats.unpack(host.ok(Msg.STATS))
    assert stats.invocations == 1 and stats.arena_bytes == arena and stats.arena_head_bytes > 0
    assert stats.model_bytes_received == len(model) + 1000


def test_device_refuses_what_does_not_fit_at_begin(tmp_path, kws):
    model, arena = kws
    host = Host(_core(tmp_path, ram=arena - 16, slot=len(model) - 1))
    too_big = host.nak(Msg.MODEL_BEGIN, _begin(model, arena))
    assert too_big.code == Nak.TOO_LARGE and too_big.detail == len(model) - 1
    host = Host(_core(tmp_path, ram=arena - 16))
    no_room = host.nak(Msg.MODEL_BEGIN, _begin(model, arena))
    assert no_room.code == Nak.ARENA_TOO_SMALL and no_room.detail == arena - 16


def test_device_checks_the_hash_before_touching_a_slot(tmp_path, kws):
    model, arena = kws
    host = Host(_core(tmp_path))
    begin = p.ModelBegin(3, len(model), "00" * 32, arena).pack()
    host.ok(Msg.MODEL_BEGIN, begin)
    for offset in range(0, len(model), 1000):
        host.ok(Msg.MODEL_DATA, p.pack_data(3, offset, model[offset:offset + 1000]))
    assert host.nak(Msg.MODEL_COMMIT, p.pack_xfer(3)).code == Nak.HASH_MISMATCH
    assert SlotStore(tmp_path).active_index() is None and not (tmp_path / "slot0").exists()


def test_device_answers_frame_errors_and_ignores_garbage(tmp_path):
    host = Host(_core(tmp_path))
    frame = bytearray(encode_frame(Msg.INFO, 77, b"abc"))
    frame[-3] ^= 0x01  # damage the CRC, keep the header
    answers = host.send_raw(bytes(frame))
    assert len(answers) == 1 and answers[0].seq == 77 and p.NakInfo.unpack(answers[0].payload).code == Nak.CRC
    big = host.send_raw(encode_frame(Msg.MODEL_DATA, 78, bytes(range(1, 256)) * 8))
    assert p.NakInfo.unpack(big[0].payload).code == Nak.TOO_LARGE
    garbage = np.random.default_rng(2).integers(0, 256, 20_000, dtype=np.uint8).tobytes()
    assert all(answer.type == Msg.NAK for answer in host.send_raw(garbage + b"\0"))
    assert host.nak(0x55).code == Nak.UNSUPPORTED
    assert host.nak(Msg.MODEL_DATA, b"\x01").code == Nak.BAD_REQUEST
    assert p.DeviceHello.unpack(host.ok(Msg.HELLO)).max_payload == 1024


def _send(host: Host, model: bytes, arena: int, xfer: int) -> p.NakInfo | int:
    host.ok(Msg.MODEL_BEGIN, _begin(model, arena, xfer))
    for offset in range(0, len(model), 1000):
        host.ok(Msg.MODEL_DATA, p.pack_data(xfer, offset, model[offset:offset + 1000]))
    answer = host.ask(Msg.MODEL_COMMIT, p.pack_xfer(xfer))
    return p.NakInfo.unpack(answer.payload) if answer.type == Msg.NAK else p.unpack_u8(answer.payload)


def test_device_refuses_models_that_do_not_load_and_keeps_the_active_one(tmp_path, kws):
    model, arena = kws
    host = Host(_core(tmp_path))
    assert _send(host, model, arena, 1) == 0
    small = _send(host, model, 2048, 2)
    assert small.code == Nak.ARENA_TOO_SMALL, small
    junk = _send(host, b"TFL3" * 300, 4096, 3)
    assert junk.code == Nak.MODEL_INVALID, junk
    info = p.DeviceInfo.unpack(host.ok(Msg.INFO))
    assert info.active_slot == 0 and info.active.sha256 == hashlib.sha256(model).hexdigest()
    assert not info.slots[1].valid


def test_reset_drops_what_follows_it_and_forgets_the_transfer(tmp_path, kws):
    model, arena = kws
    core = _core(tmp_path)
    host = Host(core)
    host.ok(Msg.MODEL_BEGIN, _begin(model, arena, 4))
    answers = host.send_raw(encode_frame(Msg.RESET, 50) + encode_frame(Msg.INFO, 51))
    assert [a.seq for a in answers] == [50] and core.reset_requested
    rebooted = Host(_core(tmp_path))
    assert p.DeviceInfo.unpack(rebooted.ok(Msg.INFO)).transfer_xfer == 0
