"""The ``host`` firmware build (AddressSanitizer and UBSan, -fno-sanitize-recover: the first finding
kills it) fed 100,000 random bytes and 10,000 mutated valid frames: it stays up, no sanitizer report,
and it answers HELLO afterwards."""

from __future__ import annotations

import random
import struct
import zlib

import numpy as np
import pytest

from conftest import MLPERF_INT8, require_shared
from device_targets import FirmwareBoard, Raw
from firmware_bridge import cobs
from firmware_bridge import protocol as p
from firmware_bridge.frame import HEADER, PROTOCOL_VERSION
from firmware_bridge.protocol import Msg


@pytest.fixture(scope="module")
def kws():
    from firmware_bridge.payload import load_payload

    return load_payload(require_shared(MLPERF_INT8["kws"]))


def assert_healthy(board: FirmwareBoard, raw: Raw) -> None:
    raw.handshake(timeout=120)  # it may still be working through what it was sent
    assert raw.info().slots
    assert board.alive(), board.log_text()[-3000:]
    assert not board.sanitizer_reports(), "\n".join(board.sanitizer_reports()[:20]) + "\n" + board.log_text()[-4000:]


def test_100k_random_bytes(host, kws):
    garbage = np.random.default_rng(100_000).integers(0, 256, 100_000, dtype=np.uint8).tobytes()
    with Raw(host.port) as raw:
        raw.flash(1, kws.model, kws.arena_bytes)
        before = raw.stats()
        for start in range(0, len(garbage), 4096):
            raw.link.write(garbage[start:start + 4096])
        raw.link.write(b"\x00")
        assert_healthy(host, raw)
        after = raw.stats()
        assert after.frames_bad - before.frames_bad > 100
        assert after.uptime_ms >= before.uptime_ms  # it did not restart
        assert raw.info().active.sha256 == kws.sha256


def _seed_frames(kws, inputs: bytes) -> list[tuple[int, bytes]]:
    """Valid requests of every type (RESET aside), as (type, payload)."""
    crc = zlib.crc32(inputs) & 0xFFFFFFFF
    begin = p.ModelBegin(77, len(kws.model), kws.sha256, kws.arena_bytes).pack()
    return [
        (Msg.HELLO, p.pack_host_hello(16384)),
        (Msg.HELLO, b""),
        (Msg.INFO, b""),
        (Msg.STATS, b""),
        (Msg.MODEL_BEGIN, begin),
        (Msg.MODEL_BEGIN, p.ModelBegin(78, 4000, "11" * 32, 0, 300, 64).pack()),
        (Msg.MODEL_DATA, p.pack_data(77, 0, kws.model[:200])),
        (Msg.MODEL_DATA, p.pack_data(77, 1000, kws.model[1000:1100])),
        (Msg.MODEL_DATA, p.pack_data(78, 0, b'{"name": "x", "version": 3, "model": {"sha256": "' + b"1" * 64 + b'"}}')),
        (Msg.MODEL_COMMIT, p.pack_xfer(77)),
        (Msg.MODEL_COMMIT, p.pack_xfer(78)),
        (Msg.MODEL_CONFIRM, b""),
        (Msg.INPUT_DATA, p.pack_data(9, 0, inputs[:200])),
        (Msg.INPUT_DATA, p.pack_data(9, 200, inputs[200:])),
        (Msg.INVOKE, p.InvokeRequest(0, len(inputs), crc, 64, inputs).pack()),
        (Msg.INVOKE, p.InvokeRequest(9, len(inputs), crc, 8).pack()),
        (Msg.OUTPUT_READ, p.pack_output_read(0, 8)),
        (Msg.OUTPUT_READ, p.pack_output_read(4, 0xFFFF)),
        (0x7E, b"\x01\x02"),
    ]


def _mutate(rng: random.Random, type_: int, payload: bytes) -> bytes:
    """A frame as it goes on the line, damaged one way or another; mostly with a CRC that checks, so
    the damage reaches the request handlers."""
    body = bytearray(HEADER.pack(PROTOCOL_VERSION, type_, rng.randrange(1, 0x10000), len(payload)) + payload)
    for _ in range(rng.randrange(1, 5)):
        kind = rng.randrange(8)
        if kind == 0 and len(body) > 0:  # flip a bit
            i = rng.randrange(len(body))
            body[i] ^= 1 << rng.randrange(8)
        elif kind == 1 and len(body) > 6:  # a random byte in the payload
            body[rng.randrange(6, len(body))] = rng.randrange(256)
        elif kind == 2:  # cut short
            del body[rng.randrange(len(body) + 1):]
        elif kind == 3:  # grow
            body += bytes(rng.randrange(256) for _ in range(rng.randrange(1, 64)))
        elif kind == 4 and len(body) > 1:  # another request type (never RESET: it would only reboot)
            body[1] = rng.choice([0x01, 0x02, 0x03, 0x10, 0x11, 0x12, 0x13, 0x20, 0x21, 0x22, 0x31, 0x7F, 0x80, 0xFF])
        elif kind == 5 and len(body) > 10:  # a 32-bit field set to an edge value
            i = rng.randrange(6, len(body) - 3)
            body[i:i + 4] = struct.pack("<I", rng.choice([0, 1, 0x7FFFFFFF, 0x80000000, 0xFFFFFFFF, 0xFFFFFFF0]))
        elif kind == 6 and len(body) > 8:  # a 16-bit field set to an edge value
            i = rng.randrange(6, len(body) - 1)
            body[i:i + 2] = struct.pack("<H", rng.choice([0, 1, 0xFFFF, 0x8000, 4096, 4097]))
        elif kind == 7 and len(body) >= 6:  # the length field disagrees
            body[4:6] = struct.pack("<H", rng.randrange(0x10000))
    if len(body) >= 6 and rng.random() < 0.5:
        body[4:6] = struct.pack("<H", max(0, len(body) - 6))  # consistent length
    if len(body) >= 2 and body[1] == Msg.RESET:
        body[1] = Msg.INFO
    if rng.random() < 0.85:
        body += struct.pack("<I", zlib.crc32(body) & 0xFFFFFFFF)
    else:
        body += bytes(rng.randrange(256) for _ in range(4))
    wire = bytearray(cobs.encode(bytes(body)))
    if rng.random() < 0.05 and wire:  # damage the COBS itself
        wire[rng.randrange(len(wire))] = rng.randrange(256)
    return bytes(wire) + b"\x00"


def test_10k_mutated_valid_frames(host, kws):
    rng = random.Random(10_000)
    with Raw(host.port) as raw:
        raw.flash(2, kws.model, kws.arena_bytes)
        inputs = np.random.default_rng(1).integers(-128, 128, raw.info().input_bytes, dtype=np.int8).tobytes()
        seeds = _seed_frames(kws, inputs)
        before = raw.stats()
        batch = bytearray()
        for _ in range(10_000):
            batch += _mutate(rng, *rng.choice(seeds))
            if len(batch) > 8192:
                raw.link.write(bytes(batch))
                batch.clear()
        raw.link.write(bytes(batch) + b"\x00")
        assert_healthy(host, raw)
        info = raw.info()
        assert info.active is not None and info.active.sha256 == kws.sha256
        answer, _out = raw.invoke(inputs)
        assert answer.output_len == 12
        after = raw.stats()
        # Most mutated frames carry a CRC that checks: they reach the request handlers.
        assert after.frames_ok - before.frames_ok > 3000 and after.naks_sent - before.naks_sent > 2000, after
        assert after.frames_bad - before.frames_bad > 1000, after
