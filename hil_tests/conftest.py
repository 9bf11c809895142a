"""Hardware-in-the-loop tests: against a real board with ``--port /dev/ttyACM0 --profile NAME`` (any
firmware that implements firmware_bridge/PROTOCOL.md), or by default against the simulated device,
started here as ``lepton-edge device-sim`` on a pseudo-terminal."""

from __future__ import annotations

import pytest

from hil_tests.support import DEFAULT_SIM_BAUD, DEFAULT_SIM_PROFILE, Simulator, Target, require_model


def pytest_addoption(parser):
    group = parser.getgroup("lepton-edge hardware in the loop")
    group.addoption("--port", default=None, help="serial port of a board running PROTOCOL.md firmware "
                                                 "(default: start the simulated device)")
    group.addoption("--profile", default=None, help="the board's device profile (checked against its HELLO); "
                                                    f"for the simulator, the profile it plays ({DEFAULT_SIM_PROFILE})")
    group.addoption("--baud", type=int, default=None, help="line rate (board: 115200; simulator: "
                                                           f"{DEFAULT_SIM_BAUD})")


@pytest.fixture(scope="session")
def target(request, tmp_path_factory):
    port = request.config.getoption("--port")
    profile = request.config.getoption("--profile")
    baud = request.config.getoption("--baud")
    if port:
        yield Target(port, baud or 115200, profile)
        return
    sim = Simulator(profile or DEFAULT_SIM_PROFILE, DEFAULT_SIM_BAUD if baud is None else baud,
                    tmp_path_factory.mktemp("device-sim") / "state")
    sim.start()
    try:
        yield Target(sim.port, 115200, sim.profile, sim)
    finally:
        sim.stop()


@pytest.fixture(scope="session")
def payloads():
    """``payloads(name) -> ModelPayload``: an MLPerf Tiny int8 model planned for flashing, once per session."""
    from firmware_bridge.payload import load_payload

    cache: dict = {}

    def get(name: str):
        if name not in cache:
            cache[name] = load_payload(require_model(name))
        return cache[name]

    return get
