"""Garbage on the line: frames cut short, bytes that are not frames, 100 000 random bytes. Both ends
drop what does not check out, find the next frame, and nothing crashes."""

from __future__ import annotations

import numpy as np

from firmware_bridge.frame import encode_frame
from firmware_bridge.protocol import Msg
from hil_tests.support import reference_outputs


def _flash_kws(device, payloads):
    payload = payloads("kws")
    device.flash(payload)
    return payload


def _one_inference_matches(device, payload, seed: int) -> None:
    rng = np.random.default_rng(seed)
    nbytes = device.info().input_bytes
    inputs = rng.integers(-128, 128, nbytes, dtype=np.int8).tobytes()
    assert device.invoke(inputs).outputs == reference_outputs(payload, inputs)


def test_garbage_then_the_line_still_works(target, payloads):
    with target.connect() as device:
        payload = _flash_kws(device, payloads)
        before = device.stats()
        link = device.link
        link.write(encode_frame(Msg.INFO, 7)[:5])  # a frame cut short ...
        link.write(b"\x00")  # ... ended by the next zero
        link.write(bytes(range(1, 256)) * 3 + b"\x00")  # no zero for 765 bytes: not a frame
        frame = bytearray(encode_frame(Msg.INFO, 8))
        frame[3] ^= 0x40
        link.write(bytes(frame))  # a damaged frame
        link.write(b"\x00\x00\x00")
        assert device.info().active.sha256 == payload.sha256
        _one_inference_matches(device, payload, 1)
        assert device.stats().frames_bad > before.frames_bad


def test_100k_random_bytes(target, payloads):
    rng = np.random.default_rng(100_000)
    garbage = rng.integers(0, 256, 100_000, dtype=np.uint8).tobytes()
    with target.connect() as device:
        payload = _flash_kws(device, payloads)
        before = device.stats()
        for start in range(0, len(garbage), 4096):
            device.link.write(garbage[start:start + 4096])
        device.link.write(b"\x00")
        info = device.info()  # answered, after whatever NAKs the garbage drew
        assert info.active is not None and info.active.sha256 == payload.sha256
        for seed in range(3):
            _one_inference_matches(device, payload, seed)
        after = device.stats()
        assert after.frames_bad - before.frames_bad > 100
        assert after.uptime_ms >= before.uptime_ms  # it did not restart


def test_a_new_session_after_garbage_from_the_last_one(target, payloads):
    """A host that died mid-frame leaves half a frame behind; the next host still gets through."""
    with target.connect() as device:
        payload = _flash_kws(device, payloads)
        device.link.write(encode_frame(Msg.MODEL_DATA, 9, bytes(300))[:150])
    with target.connect() as device:
        assert device.info().active.sha256 == payload.sha256
        _one_inference_matches(device, payload, 4)
