"""The frame codec against the test vectors of firmware_bridge/PROTOCOL.md (the spec is what is tested)."""

from __future__ import annotations

import random
import re
import zlib
from pathlib import Path

import numpy as np
import pytest

from firmware_bridge import cobs
from firmware_bridge.frame import DroppedFrame, Frame, FrameReader, decode_frame, encode_frame, wire_size

REPO = Path(__file__).resolve().parent.parent
PROTOCOL = REPO / "firmware_bridge" / "PROTOCOL.md"
C_VECTORS = REPO / "firmware_bridge" / "c" / "test_vectors.txt"


def spec_vector_lines() -> list[str]:
    """The ```vectors block of PROTOCOL.md, comments included."""
    match = re.search(r"```vectors\n(.*?)```", PROTOCOL.read_text(), re.S)
    assert match, "PROTOCOL.md has no ```vectors block"
    return match.group(1).strip().splitlines()


def vectors(kind: str) -> list[list[str]]:
    return [line.split()[1:] for line in spec_vector_lines() if line.startswith(kind + " ")]


def unhex(text: str) -> bytes:
    return b"" if text == "-" else bytes.fromhex(text)


def test_the_c_vector_file_is_the_spec():
    assert C_VECTORS.read_text().strip().splitlines() == spec_vector_lines()


def test_the_spec_has_vectors_of_every_kind():
    assert len(vectors("frame")) >= 6 and len(vectors("bad")) >= 5 and len(vectors("cobs")) >= 8
    assert {v[1] for v in vectors("bad")} == {"crc", "cobs", "short", "version", "length"}


@pytest.mark.parametrize("vector", vectors("frame"), ids=lambda v: v[0])
def test_frame_vector_encodes_and_decodes(vector):
    _name, type_hex, seq_hex, payload_hex, wire_hex = vector
    type_, seq, payload, wire = int(type_hex, 16), int(seq_hex, 16), unhex(payload_hex), unhex(wire_hex)
    assert encode_frame(type_, seq, payload) == wire
    assert len(wire) <= wire_size(len(payload))
    assert decode_frame(wire) == Frame(type_, seq, payload)
    reader = FrameReader()
    events = [e for byte in wire for e in reader.feed(bytes([byte]))]
    assert events == [Frame(type_, seq, payload)]


@pytest.mark.parametrize("vector", vectors("bad"), ids=lambda v: v[0])
def test_bad_vector_is_dropped_for_its_reason(vector):
    _name, error, wire_hex = vector
    event = decode_frame(unhex(wire_hex))
    assert isinstance(event, DroppedFrame) and event.kind == error
    reader = FrameReader()
    assert [e.kind for e in reader.feed(unhex(wire_hex))] == [error]
    assert reader.errors[error] == 1 and reader.frames == 0


@pytest.mark.parametrize("vector", vectors("cobs"), ids=lambda v: v[0])
def test_cobs_vector(vector):
    _name, data_hex, encoded_hex = vector
    data, encoded = unhex(data_hex), unhex(encoded_hex)
    assert cobs.encode(data) == encoded
    assert cobs.decode(encoded) == data


def test_crc32_is_the_ieee_one():
    assert zlib.crc32(b"123456789") == 0xCBF43926


def test_cobs_round_trips_random_data():
    rng = random.Random(7)
    for _ in range(3000):
        n = rng.randrange(0, 1200)
        data = bytes(rng.choice((0, 1, 0xFF, rng.randrange(256))) for _ in range(n))
        encoded = cobs.encode(data)
        assert 0 not in encoded and len(encoded) <= cobs.max_encoded_size(n)
        assert cobs.decode(encoded) == data


def test_reader_resynchronises_after_100k_random_bytes():
    frames = [encode_frame(int(v[1], 16), int(v[2], 16), unhex(v[3])) for v in vectors("frame")]
    garbage = np.random.default_rng(1).integers(0, 256, 100_000, dtype=np.uint8).tobytes()
    reader = FrameReader(4096)
    events = []
    for start in range(0, len(garbage), 977):
        events += reader.feed(garbage[start:start + 977])
    assert all(isinstance(e, DroppedFrame) for e in events) and len(events) > 300
    good = reader.feed(b"\x00" + b"".join(frames))
    assert [e for e in good if isinstance(e, Frame)] == [decode_frame(f) for f in frames]


def test_reader_reports_an_overlong_frame_with_its_header():
    reader = FrameReader(max_payload=64)
    events = reader.feed(encode_frame(0x11, 0x4242, bytes(range(1, 201))) + encode_frame(0x02, 5))
    assert isinstance(events[0], DroppedFrame) and events[0].kind == "overflow"
    assert (events[0].type, events[0].seq) == (0x11, 0x4242)
    assert events[1] == Frame(0x02, 5)


def test_frames_split_anywhere_are_reassembled():
    rng = random.Random(3)
    stream = b"".join(encode_frame(0x11, i, bytes(rng.randrange(256) for _ in range(rng.randrange(300))))
                      for i in range(50))
    reader = FrameReader()
    events, at = [], 0
    while at < len(stream):
        step = rng.randrange(1, 90)
        events += reader.feed(stream[at:at + step])
        at += step
    assert [e.seq for e in events] == list(range(50))
