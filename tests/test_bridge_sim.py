"""Host and simulated device end to end, in one process: real pseudo-terminals, real TFLite Micro."""

from __future__ import annotations

import contextlib
import json

import numpy as np
import pytest

from conftest import MLPERF_FLOAT, MLPERF_INT8, require_shared
from firmware_bridge.errors import DeviceRefused, DeviceTimeout
from firmware_bridge.frame import Frame, encode_frame
from firmware_bridge.host import connect
from firmware_bridge.link import Link, PortOptions, open_serial
from firmware_bridge.payload import ModelPayload, load_payload
from firmware_bridge.protocol import Msg, Nak
from firmware_bridge.sim import DeviceSimOptions, SimulatedDevice
from firmware_bridge.transport import PtyTransport, TcpTransport
from firmware_bridge.validation import split_outputs, validate_on_device
from lepton_edge.runtime.tflm import load_tflm

PROFILE = "arduino-nano-33-ble"


@contextlib.contextmanager
def simulator(state_dir, *, profile: str = PROFILE, tcp: bool = False, **options):
    transport = TcpTransport("127.0.0.1", 0) if tcp else PtyTransport()
    sim = SimulatedDevice(DeviceSimOptions(profile, state_dir, baud=options.pop("baud", 0), **options), transport)
    sim.start()
    try:
        yield sim
    finally:
        sim.close()


@pytest.fixture(scope="module")
def payload():
    cache: dict = {}

    def get(name: str, table=MLPERF_INT8) -> ModelPayload:
        key = (name, id(table))
        if key not in cache:
            cache[key] = load_payload(require_shared(table[name]))
        return cache[key]

    return get


def reference(payload: ModelPayload, inputs: bytes) -> bytes:
    runner = load_tflm(payload.model, payload.arena_bytes)
    outputs = runner.run(split_outputs(inputs, runner.inputs))
    return b"".join(np.ascontiguousarray(o).tobytes() for o in outputs)


def random_input(device, seed: int = 0) -> bytes:
    n = device.info().input_bytes
    return np.random.default_rng(seed).integers(-128, 128, n, dtype=np.int8).tobytes()


def test_flash_invoke_and_two_slots_that_survive_a_restart(tmp_path, payload):
    kws, ic = payload("kws"), payload("ic")
    with simulator(tmp_path) as sim, connect(PortOptions(sim.port)) as device:
        assert device.hello.profile == PROFILE and device.hello.arena_ram_bytes == 157286
        first = device.flash(kws)
        assert first.slot == 0 and first.efficiency > 0.95 and first.lost_frames == 0
        inputs = random_input(device)
        assert device.invoke(inputs).outputs == reference(kws, inputs)
        second = device.flash(ic)
        assert second.slot == 1
    with simulator(tmp_path) as sim, connect(PortOptions(sim.port)) as device:
        info = device.info()
        assert info.active_slot == 1 and info.active.sha256 == ic.sha256
        assert info.slots[0].valid and info.slots[0].sha256 == kws.sha256  # the previous model, kept
        inputs = random_input(device, 1)
        answer = device.invoke(inputs)
        assert answer.outputs == reference(ic, inputs) and answer.device_us > 0
        stats = device.stats()
        assert stats.arena_bytes == ic.arena_bytes and stats.arena_head_bytes > 0 and stats.arena_tail_bytes > 0


def test_small_frames_stop_and_wait_and_split_inputs_and_outputs(tmp_path, payload):
    ad = payload("ad")  # 640 input bytes, 640 output bytes: more than one frame each here
    with simulator(tmp_path, max_payload=200, window=1) as sim, connect(PortOptions(sim.port)) as device:
        assert device.hello.max_payload == 200 and device.hello.window == 1
        result = device.flash(ad)
        assert result.final_payload <= 200 and result.frames > len(ad.model) // 200
        for seed in range(3):
            inputs = random_input(device, seed)
            assert device.invoke(inputs).outputs == reference(ad, inputs)


def test_socket_url_works_like_a_serial_port(tmp_path, payload):
    kws = payload("kws")
    import firmware_bridge  # the names a gateway uses

    with simulator(tmp_path, tcp=True) as sim:
        assert sim.port.startswith("socket://")
        with firmware_bridge.connect(firmware_bridge.PortOptions(sim.port)) as device:
            device.flash(kws)
            inputs = random_input(device)
            assert device.invoke(inputs).outputs == reference(kws, inputs)


def test_loop_url_carries_frames_and_a_missing_device_times_out_in_one_line():
    link = Link(open_serial(PortOptions("loop://")), "loop://")
    try:
        link.send(Msg.INFO, 42, b"abc")
        assert link.recv(2.0) == Frame(Msg.INFO, 42, b"abc")
    finally:
        link.close()
    with pytest.raises(DeviceTimeout) as failure:
        connect(PortOptions("loop://"), hello_timeout=0.5)
    assert "no device answered HELLO on loop://" in str(failure.value) and "\n" not in str(failure.value)


def test_host_resynchronises_on_garbage_from_the_device(tmp_path, payload):
    kws = payload("kws")
    with simulator(tmp_path) as sim, connect(PortOptions(sim.port)) as device:
        device.flash(kws)
        garbage = np.random.default_rng(9).integers(0, 256, 100_000, dtype=np.uint8).tobytes()
        sim.transport.write(garbage + encode_frame(Msg.ACK, 1, b"stale") + b"\x00")
        inputs = random_input(device)
        assert device.invoke(inputs).outputs == reference(kws, inputs)
        assert device.link.reader.bad_frames > 100


def test_float_model_validates_within_tolerance(tmp_path, payload):
    ic = payload("ic", MLPERF_FLOAT)
    with simulator(tmp_path, profile="stm32h743") as sim, connect(PortOptions(sim.port)) as device:
        device.flash(ic)
        report = validate_on_device(device, ic.model, device.info().active.arena_bytes, samples=2)
    assert not report.integer_outputs and report.within_tolerance == 2 and report.ok
    assert report.to_dict()["device_latency_us_p50"] > 0


# --- artifacts: manifest, signature, version ---------------------------------------------------

def make_artifact(directory, planned: ModelPayload, *, version: int, key=None, name: str = "kws"):
    import base64

    from lepton_edge.artifact import load_artifact, sha256_hex, write_artifact_files
    from lepton_edge.fsio import atomic_directory

    runner = load_tflm(planned.model, planned.arena_bytes)
    inputs = np.random.default_rng(0).integers(-128, 128, runner.inputs[0].shape, dtype=np.int8)
    outputs = b"".join(np.ascontiguousarray(o).tobytes() for o in runner.run([inputs]))
    manifest = {
        "name": name, "version": version, "created": "2026-01-01T00:00:00Z", "profile": PROFILE,
        "runtime": "tflm", "kernel_library": "cmsis-nn", "layout": "NHWC",
        "inputs": [s.to_dict() for s in runner.inputs], "outputs": [s.to_dict() for s in runner.outputs],
        "arena": {"head_bytes": 0, "tail_bytes": 0, "lower_bound_bytes": 0,
                  "recommended_bytes": planned.arena_bytes, "margin_bytes": 4096,
                  "total_bytes": planned.arena_bytes + 4096, "measured": {}},
        "self_test": {"input_b64": base64.b64encode(inputs.tobytes()).decode(),
                      "output_sha256": {"tflm": sha256_hex(outputs)}},
    }
    with atomic_directory(directory) as staging:
        write_artifact_files(staging, planned.model, manifest, key)
    return load_artifact(directory, (), require_signature=False)


def test_signed_artifact_self_test_and_version_rollback(tmp_path, payload):
    from lepton_edge.artifact import generate_keypair, load_private_key, load_public_key

    generate_keypair(tmp_path / "keys")
    key = load_private_key(tmp_path / "keys" / "signing.key")
    trusted = load_public_key(tmp_path / "keys" / "signing.pub")
    kws = payload("kws")
    v2 = make_artifact(tmp_path / "v2", kws, version=2, key=key)
    v1 = make_artifact(tmp_path / "v1", kws, version=1, key=key)
    unsigned = make_artifact(tmp_path / "unsigned", kws, version=3)
    with simulator(tmp_path / "state", trusted_keys=(trusted,)) as sim, connect(PortOptions(sim.port)) as device:
        result = device.flash(v2)  # an Artifact, as a gateway holds it
        assert result.self_test == "passed"
        info = device.info()
        assert info.active.name == "kws" and info.active.version == 2
        with pytest.raises(DeviceRefused) as older:
            device.flash(v1, force=True)
        assert older.value.nak.code == Nak.VERSION and older.value.exit_code == 1
        with pytest.raises(DeviceRefused) as not_signed:
            device.flash(unsigned, force=True)
        assert not_signed.value.nak.code == Nak.SIGNATURE
        assert device.info().active.version == 2


def test_an_unconfirmed_model_can_be_replaced_by_the_confirmed_version_and_a_confirmed_one_cannot(tmp_path, payload):
    """MODEL_CONFIRM: the version floor is the highest confirmed version, so a host whose health check
    fails can flash the previous model back; after a restart the floors are still there."""
    kws, ic = payload("kws"), payload("ic")
    v1 = make_artifact(tmp_path / "v1", kws, version=1, name="keywords")
    v2 = make_artifact(tmp_path / "v2", ic, version=2, name="keywords")
    with simulator(tmp_path / "state") as sim, connect(PortOptions(sim.port)) as device:
        device.flash(v1)
        assert device.info().active.confirmed
        device.flash(v2, confirm=False)
        assert device.info().active.version == 2 and not device.info().active.confirmed
        back = device.flash(v1)  # the health check of v2 failed: v1 goes back
        assert not back.already_active and device.info().active.sha256 == v1.sha256
        device.flash(v2)  # this time it passes and is confirmed
        assert device.info().active.confirmed
    with simulator(tmp_path / "state") as sim, connect(PortOptions(sim.port)) as device:
        with pytest.raises(DeviceRefused) as older:
            device.flash(v1, force=True)
        assert older.value.nak.code == Nak.VERSION and older.value.nak.detail == 2
        assert device.info().active.version == 2


def test_artifact_signed_by_another_key_is_refused(tmp_path, payload):
    from lepton_edge.artifact import generate_keypair, load_private_key, load_public_key

    generate_keypair(tmp_path / "ours")
    generate_keypair(tmp_path / "theirs")
    artifact = make_artifact(tmp_path / "a", payload("kws"), version=1,
                             key=load_private_key(tmp_path / "theirs" / "signing.key"))
    ours = load_public_key(tmp_path / "ours" / "signing.pub")
    with simulator(tmp_path / "state", trusted_keys=(ours,)) as sim, connect(PortOptions(sim.port)) as device:
        with pytest.raises(DeviceRefused) as refused:
            device.flash(artifact)
        assert refused.value.nak.code == Nak.SIGNATURE
        assert device.info().active is None


def test_flash_result_reports_the_line(tmp_path, payload):
    kws = payload("kws")
    with simulator(tmp_path) as sim, connect(PortOptions(sim.port)) as device:
        result = device.flash(kws)
        assert result.bytes_out > result.model_bytes and 0.95 < result.efficiency < 1
        assert json.dumps(result.__dict__)
        again = device.flash(kws)
        assert again.already_active and again.bytes_out < 200
