"""Hardware-in-the-loop tests: against a real board with ``--port /dev/ttyACM0 --profile NAME`` (any
firmware that implements firmware_bridge/PROTOCOL.md), or by default against every device this machine
can start: the simulated device (``lepton-edge device-sim`` on a pseudo-terminal), and the reference
firmware built for ``host`` and emulated as ``qemu-m4`` (``--targets`` picks among them)."""

from __future__ import annotations

import pytest

from hil_tests.support import DEFAULT_SIM_BAUD, DEFAULT_SIM_PROFILE, Simulator, Target, require_model

DEFAULT_TARGETS = ("sim", "host", "qemu-m4")


def pytest_addoption(parser):
    group = parser.getgroup("lepton-edge hardware in the loop")
    group.addoption("--port", default=None, help="serial port of a board running PROTOCOL.md firmware "
                                                 "(default: start the simulated and emulated devices)")
    group.addoption("--profile", default=None, help="the board's device profile (checked against its HELLO); "
                                                    f"for the simulator, the profile it plays ({DEFAULT_SIM_PROFILE})")
    group.addoption("--baud", type=int, default=None, help="line rate (board: 115200; simulator: "
                                                           f"{DEFAULT_SIM_BAUD})")
    group.addoption("--targets", default=",".join(DEFAULT_TARGETS),
                    help="devices to start without --port, comma-separated: sim, host, qemu-m4, qemu-m7 "
                         f"(default {','.join(DEFAULT_TARGETS)})")


def pytest_collection_modifyitems(config, items):
    """Under pytest-xdist these tests run on one worker: they share the session's devices."""
    for item in items:
        if item.get_closest_marker("xdist_group") is None and "hil_tests" in item.path.parts:
            item.add_marker(pytest.mark.xdist_group("hil_tests"))


def pytest_generate_tests(metafunc):
    if "target_kind" not in metafunc.fixturenames:
        return
    if metafunc.config.getoption("--port"):
        kinds = ["board"]
    else:
        kinds = [k.strip() for k in metafunc.config.getoption("--targets").split(",") if k.strip()]
    metafunc.parametrize("target_kind", kinds, scope="session")


@pytest.fixture(scope="session")
def target(request, target_kind, tmp_path_factory):
    port = request.config.getoption("--port")
    profile = request.config.getoption("--profile")
    baud = request.config.getoption("--baud")
    if target_kind == "board":
        yield Target(port, baud or 115200, profile)
        return
    if target_kind == "sim":
        device = Simulator(profile or DEFAULT_SIM_PROFILE, DEFAULT_SIM_BAUD if baud is None else baud,
                           tmp_path_factory.mktemp("device-sim") / "state")
    else:
        from hil_tests.boards import FirmwareBoard

        device = FirmwareBoard(target_kind, tmp_path_factory.mktemp(target_kind) / "slots.bin")
    device.start()
    try:
        yield Target(device.port, 115200, device.profile, device)
    finally:
        device.stop()


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
