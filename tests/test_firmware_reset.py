"""A ``qemu-m4`` board reset in the middle of a transfer (a RESET request, QEMU killed and started again
on the same slot file, killed right after MODEL_BEGIN or in the middle of COMMIT) boots with its
previous model: INFO names the same active sha256, and the model gives the same output bytes."""

from __future__ import annotations

import random
import time

import numpy as np
import pytest

from conftest import MLPERF_INT8, require_shared
from device_targets import FirmwareBoard, Raw
from firmware_bridge import protocol as p
from firmware_bridge.protocol import Msg

BOARD = "qemu-m4"


@pytest.fixture(scope="module")
def board(tmp_path_factory):
    b = FirmwareBoard(BOARD, tmp_path_factory.mktemp("reset") / "slots.bin")
    b.start()
    yield b
    b.stop()


@pytest.fixture(scope="module")
def models():
    from firmware_bridge.payload import load_payload

    return {name: load_payload(require_shared(MLPERF_INT8[name])) for name in ("kws", "ic")}


def _inputs(n: int, seed: int) -> bytes:
    return np.random.default_rng(seed).integers(-128, 128, n, dtype=np.int8).tobytes()


def _fingerprint(raw: Raw, seeds=(0, 1)) -> tuple[str, list[bytes]]:
    """The active model's sha256 and its outputs on fixed inputs."""
    info = raw.info()
    assert info.active is not None and info.transfer_xfer == 0, info
    return info.active.sha256, [raw.invoke(_inputs(info.input_bytes, s))[1] for s in seeds]


def _reboot(board: FirmwareBoard) -> None:
    board.kill()
    board.start()


def _flash_previous(board: FirmwareBoard, payload) -> tuple[str, list[bytes]]:
    with Raw(board.port) as raw:
        info = raw.info()
        if info.active is None or info.active.sha256 != payload.sha256:
            raw.flash(random.randrange(1, 0x10000), payload.model, payload.arena_bytes)
        before = _fingerprint(raw)
    assert before[0] == payload.sha256
    return before


def _reference(payload, inputs: bytes) -> bytes:
    from hil_tests.support import reference_outputs

    return reference_outputs(payload, inputs)


def test_reset_request_in_the_middle_of_a_transfer(board, models):
    previous, new = models["kws"], models["ic"]
    before = _flash_previous(board, previous)
    with Raw(board.port) as raw:
        raw.begin(501, new.model, new.arena_bytes)
        raw.data(501, new.model, 0, len(new.model) // 2)
        assert raw.info().transfer_xfer == 501
        raw.announces.clear()
        assert raw.ack(Msg.RESET) == b""
        deadline = time.monotonic() + 5
        while not raw.announces and time.monotonic() < deadline:
            raw.quiet(0.2)
        raw.quiet(0.3)
        assert [f.seq for f in raw.announces] == [0]
        raw.handshake()
        assert _fingerprint(raw) == before
        assert before[1][0] == _reference(previous, _inputs(490, 0))
        # The transfer is gone; sending the model again from the start works.
        assert raw.begin(502, new.model, new.arena_bytes) == 0
        raw.data(502, new.model)
        raw.ack(Msg.MODEL_COMMIT, p.pack_xfer(502), timeout=120)
        raw.ack(Msg.MODEL_CONFIRM)
        assert raw.info().active.sha256 == new.sha256


def test_qemu_killed_in_the_middle_of_a_transfer(board, models):
    previous, new = models["ic"], models["kws"]
    before = _flash_previous(board, previous)
    with Raw(board.port) as raw:
        raw.begin(601, new.model, new.arena_bytes)
        raw.data(601, new.model, 0, int(len(new.model) * 0.4))
    _reboot(board)
    with Raw(board.port) as raw:
        assert _fingerprint(raw) == before


def _whole_model(raw: Raw, payloads: dict) -> str:
    """The active model is one of ``payloads`` (by sha256) and gives TFLite Micro's outputs; its sha256."""
    info = raw.info()
    assert info.active is not None and info.active.sha256 in payloads, info
    payload = payloads[info.active.sha256]
    for seed in (0, 1):
        inputs = _inputs(info.input_bytes, seed)
        assert raw.invoke(inputs)[1] == _reference(payload, inputs)
    return info.active.sha256


def test_qemu_killed_right_after_model_begin_or_during_commit(board, models):
    """MODEL_BEGIN invalidates and erases the inactive slot; COMMIT verifies, flushes and swaps (within a
    few milliseconds here). QEMU is killed at moments inside both: the board boots with a whole model
    every time (the previous one, or after a COMMIT that got through, the new one), never with none."""
    previous, new = models["ic"], models["kws"]
    before = _flash_previous(board, previous)
    for delay in (0.0, 0.005):
        with Raw(board.port) as raw:
            begin = p.ModelBegin(700, len(new.model), new.sha256, new.arena_bytes)
            raw.link.send(Msg.MODEL_BEGIN, raw.next_seq(), begin.pack())
            time.sleep(delay)
        _reboot(board)
        with Raw(board.port) as raw:
            assert _fingerprint(raw) == before
    payloads = {m.sha256: m for m in (previous, new)}
    active = previous.sha256
    for n, delay in enumerate((0.0, 0.002, 0.004)):
        other = new if active == previous.sha256 else previous
        with Raw(board.port) as raw:
            raw.begin(710 + n, other.model, other.arena_bytes)
            raw.data(710 + n, other.model)
            raw.link.send(Msg.MODEL_COMMIT, raw.next_seq(), p.pack_xfer(710 + n))
            time.sleep(delay)
        _reboot(board)
        with Raw(board.port) as raw:
            active = _whole_model(raw, payloads)
