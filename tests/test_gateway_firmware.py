"""``lepton-edge gateway`` drives the reference firmware on ``qemu-m4`` as it drives the Python simulator
(tests/test_gateway.py): real Mosquitto, the controller and its HTTP API in this process, the gateway
as a subprocess on the emulator's pseudo-terminal. Two signed over-the-air updates, then one whose
health check fails on the device (too slow for its manifest): the board takes the confirmed model back."""

from __future__ import annotations

import numpy as np
import pytest

from agent_helpers import AgentProcess, write_config
from device_targets import FirmwareBoard
from hil_tests.support import wait_for
from lepton_edge.artifact import load_artifact
from lepton_edge.runtime.factory import open_runner

pytestmark = pytest.mark.fleet_stores("sqlite")  # the controller is a tool here, not the subject

BOARD, PROFILE = "qemu-m4", "stm32l4r5"


@pytest.fixture
def board(tmp_path):
    b = FirmwareBoard(BOARD, tmp_path / "board" / "slots.bin")
    b.start()
    yield b
    b.stop()


def test_the_gateway_takes_a_qemu_board_through_two_signed_updates_and_a_rollback(board, fleet, broker,
                                                                                  signing, make_artifact, tmp_path):
    config = write_config(tmp_path / "gateway.toml", store=tmp_path / "gateway-store", trusted_keys=[signing[1]],
                          profile=PROFILE, backend="tflm",
                          extra=f'\n[mqtt]\nbroker = "{broker.url()}"\nkeepalive = 10\ntelemetry_interval_s = 0.3\n')
    gw = AgentProcess.start(config, command="gateway", extra=("--port", board.port, "--hello-timeout", "5"))
    try:
        fleet.wait_online(30)
        assert wait_for(lambda: fleet.controller.devices(), 10)  # online in memory first, then written
        dev = fleet.controller.devices()[0]
        assert PROFILE in dev["agent"], dev

        first = make_artifact("kws", 1, profile=PROFILE, name="keywords")
        d = fleet.wait_done(fleet.deploy(first)["deployment"], 120)
        assert d["state"] == "healthy", d
        status = gw.get("/v1/status").json()
        assert status["model"]["version"] == 1 and status["serial"]["connected"]
        assert status["last_health_check"]["ok"] and status["last_health_check"]["digest_checked"]

        # The local API runs the model on the emulated board: bit-exact with TFLite Micro here.
        artifact = load_artifact(first, (), require_signature=False)
        host = open_runner(artifact.model_bytes, backend="tflm",
                           arena_bytes=max(artifact.manifest["arena"]["total_bytes"],
                                           artifact.manifest["arena"].get("host_recommended_bytes") or 0))
        x = np.random.default_rng(3).integers(-128, 128, host.inputs[0].shape, dtype=np.int8)
        reply = gw.post("/v1/infer", x.tobytes())
        assert reply.status == 200, reply.body
        assert reply.body == host.run([x])[0].tobytes()

        second = make_artifact("ad", 2, profile=PROFILE, name="keywords")
        d = fleet.wait_done(fleet.deploy(second)["deployment"], 120)
        assert d["state"] == "healthy", d

        # Signed, fits, a right self-test; but slower on the device than its manifest allows: the board
        # holds it unconfirmed, so version 2 goes back.
        slow = make_artifact("ic", 3, profile=PROFILE, name="keywords", latency_budget_ms=0.001)
        d = fleet.wait_done(fleet.deploy(slow)["deployment"], 180)
        assert d["state"] == "rolled_back" and "exceeds the budget of 0.001 ms" in d["reason"], d
        status = gw.get("/v1/status").json()
        assert status["model"]["version"] == 2 and status["store"]["confirmed_version"] == 2, status
    finally:
        code, _out, err = gw.terminate()
    assert code == 0, err

    from firmware_bridge.host import connect
    from firmware_bridge.link import PortOptions

    with connect(PortOptions(board.port), hello_timeout=15) as device:
        active = device.info().active
    assert active.sha256 == load_artifact(second, (), require_signature=False).sha256
    assert active.version == 2 and active.name == "keywords" and active.confirmed
