"""``lepton-edge gateway``: a simulated microcontroller joins the fleet through a serial gateway.

Everything real and in its own process where a user would have one: Mosquitto, the controller and its
HTTP API (this process), ``lepton-edge device-sim`` (TFLite Micro behind a TCP serial port, so that it
can be killed and started again on the same address) and ``lepton-edge gateway``.
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import numpy as np
import pytest

from agent_helpers import AgentProcess, write_config
from bridge_helpers import SimProcess
from conftest import REPO, assert_one_line_error, run_cli
from fleet_helpers import DEVICE, FLEET, Fleet
from lepton_edge.artifact import load_artifact
from lepton_edge.runtime.factory import open_runner
from lepton_edge.tools.mosquitto import free_port
from mosquitto import Broker
from test_agent_staged import RolloutStandIn, sha

pytestmark = pytest.mark.fleet_stores("sqlite")  # the controller is a tool here, not the subject

PROFILE = "arduino-nano-33-ble"


class Bench:
    """A simulated board on a fixed TCP port and the gateway that speaks for it."""

    def __init__(self, tmp: Path, broker: Broker, signing, profile: str = PROFILE,
                 gateway_profile: str | None = None) -> None:
        self.tmp, self.broker, self.signing, self.profile = tmp, broker, signing, profile
        self.listen = f"127.0.0.1:{free_port()}"
        self.sim: SimProcess | None = None
        self.gateway: AgentProcess | None = None
        self.config = write_config(tmp / "gateway.toml", store=tmp / "gateway-store", trusted_keys=[signing[1]],
                                   profile=gateway_profile or profile, backend="tflm",
                                   extra=f'\n[mqtt]\nbroker = "{broker.url()}"\nkeepalive = 10\n'
                                         "telemetry_interval_s = 0.3\n")

    def start_sim(self, state: str = "board") -> SimProcess:
        self.sim = SimProcess(self.tmp / state, "--baud", "0", "--listen", self.listen, profile=self.profile)
        return self.sim

    def start_gateway(self, *extra: str) -> AgentProcess:
        self.gateway = AgentProcess.start(self.config, command="gateway",
                                          extra=("--port", f"socket://{self.listen}", "--hello-timeout", "2", *extra))
        return self.gateway

    def stop_gateway(self) -> str:
        code, _out, err = self.gateway.terminate()
        assert code == 0, err
        return err

    def close(self) -> None:
        if self.gateway is not None and self.gateway.proc.poll() is None:
            self.gateway.kill()
        if self.sim is not None:
            self.sim.stop()


@pytest.fixture
def bench(tmp_path, broker, signing):
    made = []

    def make(**kw) -> Bench:
        b = Bench(tmp_path, broker, signing, **kw)
        made.append(b)
        return b
    yield make
    for b in made:
        b.close()


def wait_for(predicate, timeout: float = 30.0, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def device_record(fleet: Fleet) -> dict:
    fleet.controller.wait_idle()
    (dev,) = fleet.controller.devices()
    return dev


def test_a_serial_device_joins_the_fleet_and_takes_signed_updates(bench, fleet, make_artifact):
    b = bench()
    b.start_sim()
    gw = b.start_gateway()
    fleet.wait_online()
    dev = device_record(fleet)
    assert dev["model"] is None and "lepton-edge gateway" in dev["agent"] and PROFILE in dev["agent"]

    kws = make_artifact("kws", 1, profile=PROFILE)
    d = fleet.wait_done(fleet.deploy(kws)["deployment"])
    assert d["state"] == "healthy", d
    states = [e["state"] for e in fleet.controller.db.job_events(d["job"])]
    assert states[-3:] == ["verifying", "activating", "healthy"]
    status = gw.get("/v1/status").json()
    assert status["model"]["version"] == 1 and status["serial"]["connected"]
    assert status["last_health_check"]["ok"] and status["last_health_check"]["digest_checked"]

    # The local API runs the model on the device: bit-exact with TFLite Micro in this process.
    artifact = load_artifact(kws, (), require_signature=False)
    host = open_runner(artifact.model_bytes, backend="tflm", arena_bytes=artifact.manifest["arena"]["total_bytes"])
    x = np.random.default_rng(3).integers(-128, 128, host.inputs[0].shape, dtype=np.int8)
    reply = gw.post("/v1/infer", x.tobytes())
    assert reply.status == 200, reply.body
    assert reply.body == host.run([x])[0].tobytes()

    # Telemetry carries the device's own figures (STATS).
    def telemetry():
        t = device_record(fleet)["telemetry"] or {}
        return t if t.get("inferences", 0) >= 7 and t.get("model_version") == 1 else None
    t = wait_for(telemetry, 10, "telemetry with the device's invocations")
    assert t["arena_bytes"] == artifact.manifest["arena"]["recommended_bytes"]
    assert 0 < t["arena_head_bytes"] <= t["arena_bytes"] and t["device_uptime_s"] > 0
    assert t["serial_bad_frames"] == 0

    # A second model replaces the first on the device.
    ad = make_artifact("ad", 2, profile=PROFILE)
    d = fleet.wait_done(fleet.deploy(ad)["deployment"])
    assert d["state"] == "healthy", d
    assert wait_for(lambda: (device_record(fleet)["model"] or {}).get("version") == 2, 10, "status with v2")
    b.stop_gateway()
    _stats, info = b.sim.stats()
    flashed = load_artifact(ad, (), require_signature=False)
    assert info.active.sha256 == flashed.sha256
    assert info.active.version == 2 and info.active.name == flashed.name


def test_refusals_happen_before_any_byte_reaches_the_device(bench, fleet, make_artifact, tmp_path):
    # The board reports 39,321 B of RAM for the arena; the gateway's copy of its profile claims 1 MiB, so
    # only the device's own HELLO figures can refuse IC (60 KB of arena) before the download.
    text = (REPO / "device_profiles" / f"{PROFILE}.toml").read_text().replace(f'name = "{PROFILE}"',
                                                                             'name = "tiny-board"')
    board = tmp_path / "board" / "tiny-board.toml"
    board.parent.mkdir()
    board.write_text(re.sub(r"(?m)^ram_bytes = \d+", "ram_bytes = 65536", text))
    claimed = tmp_path / "claimed" / "tiny-board.toml"
    claimed.parent.mkdir()
    claimed.write_text(re.sub(r"(?m)^ram_bytes = \d+", "ram_bytes = 1048576", text))
    b = bench(profile=str(board), gateway_profile=str(claimed))
    b.start_sim()
    b.start_gateway()
    fleet.wait_online()

    too_big = fleet.wait_done(fleet.deploy(make_artifact("ic", 1, profile=PROFILE))["deployment"])
    assert too_big["state"] == "failed" and too_big["blocks_served"] == 0, too_big
    assert "does not fit tiny-board" in too_big["reason"] and "39,321 B of RAM" in too_big["reason"]

    tampered = tmp_path / "tampered"
    original = make_artifact("kws", 2, profile=PROFILE)
    tampered.mkdir()
    for f in original.iterdir():
        (tampered / f.name).write_bytes(f.read_bytes())
    manifest = json.loads((tampered / "manifest.json").read_bytes())
    manifest["version"] = 3  # what a tamperer would do; the signature no longer covers these bytes
    (tampered / "manifest.json").write_text(json.dumps(manifest))
    d = fleet.wait_done(fleet.deploy(tampered)["deployment"])
    assert d["state"] == "failed" and d["blocks_served"] == 0 and "signature" in d["reason"], d

    unsigned = fleet.wait_done(fleet.deploy(make_artifact("kws", 4, signed=False, profile=PROFILE))["deployment"])
    assert unsigned["state"] == "failed" and unsigned["blocks_served"] == 0, unsigned

    b.stop_gateway()
    stats, info = b.sim.stats()
    assert stats.model_bytes_received == 0 and info.active is None and info.transfer_xfer == 0


def test_a_failed_health_check_on_the_device_rolls_back_to_the_confirmed_model(bench, fleet, make_artifact):
    b = bench()
    b.start_sim()
    gw = b.start_gateway()
    fleet.wait_online()
    good = make_artifact("kws", 1, profile=PROFILE, name="keywords")
    assert fleet.wait_done(fleet.deploy(good)["deployment"])["state"] == "healthy"
    # Signed, fits, the same model name, other bytes, a right self-test; but slower on the device than its
    # manifest allows. The device holds it unconfirmed, so it takes version 1 back.
    slow = make_artifact("ic", 2, profile=PROFILE, name="keywords", latency_budget_ms=0.001)
    d = fleet.wait_done(fleet.deploy(slow)["deployment"])
    assert d["state"] == "rolled_back" and "exceeds the budget of 0.001 ms" in d["reason"], d
    # Its self-test digest is not what TFLite Micro on the device computes: refused at flashing.
    wrong = make_artifact("ic", 3, profile=PROFILE, name="keywords", digests={"tflm": "00" * 32})
    d = fleet.wait_done(fleet.deploy(wrong)["deployment"])
    assert d["state"] == "rolled_back" and "self-test" in d["reason"], d
    status = gw.get("/v1/status").json()
    assert status["model"]["version"] == 1 and status["store"] == {"active": "a", "pending": False,
                                                                   "confirmed_version": 1, "held": None}
    err = b.stop_gateway()
    assert "rolled back to a" in err
    _stats, info = b.sim.stats()
    assert info.active.sha256 == load_artifact(good, (), require_signature=False).sha256  # flashed back
    assert info.active.version == 1 and info.active.confirmed


def test_the_gateway_outlives_its_device_and_a_replaced_board_gets_the_fleet_model(bench, fleet, make_artifact):
    b = bench()
    b.start_sim()
    gw = b.start_gateway()
    fleet.wait_online()
    kws = make_artifact("kws", 1, profile=PROFILE)
    assert fleet.wait_done(fleet.deploy(kws)["deployment"])["state"] == "healthy"

    b.sim.proc.kill()  # the board is unplugged
    b.sim.stop()
    wait_for(lambda: not fleet.controller.is_online(DEVICE), 15, "the device to be reported offline")
    reply = gw.post("/v1/infer", bytes(490))
    assert reply.status == 503 and "device" in reply.json()["error"], reply.body
    assert gw.proc.poll() is None

    # A new, empty board on the same port: the gateway gives it the model the fleet confirmed.
    b.start_sim(state="new-board")
    wait_for(lambda: fleet.controller.is_online(DEVICE), 30, "the device to be back online")
    status = wait_for(lambda: (s := gw.get("/v1/status").json())["serial"]["connects"] >= 2 and s, 10, "reconnect")
    assert status["model"]["version"] == 1
    reply = gw.post("/v1/infer", bytes(490))
    assert reply.status == 200, reply.body
    b.stop_gateway()
    _stats, info = b.sim.stats()
    assert info.active.sha256 == load_artifact(kws, (), require_signature=False).sha256


def test_bad_configurations_are_one_line_errors(bench, tmp_path, signing):
    b = bench()
    b.start_sim()
    mqtt = f'\n[mqtt]\nbroker = "{b.broker.url()}"\n'
    cases = [("rp2040", mqtt, "reports profile arduino-nano-33-ble, the configuration says rp2040"),
             (PROFILE, "", "needs an [mqtt] section")]
    for n, (profile, extra, expected) in enumerate(cases):
        config = write_config(tmp_path / f"bad{n}.toml", store=tmp_path / f"store{n}", trusted_keys=[signing[1]],
                              profile=profile, backend="tflm", extra=extra)
        line = assert_one_line_error(run_cli("gateway", "--config", config, "--port", f"socket://{b.listen}"), 2)
        assert expected in line
    line = assert_one_line_error(run_cli("gateway", "--config", config, "--port", "usb://ttyACM0"), 2)
    assert "--port usb://ttyACM0: invalid URL, protocol 'usb' not known" in line


def test_a_gateway_started_before_its_device_waits_for_it(bench, fleet, make_artifact):
    b = bench()
    gw = b.start_gateway()
    status = wait_for(lambda: fleet.controller.devices(), 10, "a status")[0]
    assert not status["online"] and "no device answers" in (status["offline_reason"] or ""), status
    assert gw.get("/v1/status").json()["serial"]["connected"] is False
    b.start_sim()
    wait_for(lambda: fleet.controller.is_online(DEVICE), 30, "the device to come online")
    d = fleet.wait_done(fleet.deploy(make_artifact("kws", 1, profile=PROFILE))["deployment"])
    assert d["state"] == "healthy", d


def test_a_board_lost_in_the_middle_of_flashing_keeps_its_model(bench, fleet, make_artifact, tmp_path):
    b = bench()
    b.sim = SimProcess(tmp_path / "board", "--baud", "115200", "--listen", b.listen, profile=PROFILE)
    gw = b.start_gateway()
    fleet.wait_online()
    kws = make_artifact("kws", 1, profile=PROFILE)
    assert fleet.wait_done(fleet.deploy(kws)["deployment"])["state"] == "healthy"

    dep = fleet.deploy(make_artifact("ic", 2, profile=PROFILE))  # 97 KB: about 9 s on the line
    job = wait_for(lambda: fleet.state(dep["deployment"])["devices"][0].get("job"), 10, "the job")
    wait_for(lambda: "activating" in [e["state"] for e in fleet.controller.db.job_events(job)], 20, "flashing")
    time.sleep(1.5)
    b.sim.proc.kill()  # the board resets (or is unplugged) with part of the new model on it
    b.sim.stop()
    d = fleet.wait_done(dep["deployment"], 60)
    assert d["state"] == "rolled_back" and "cannot load" in d["reason"], d

    b.sim = SimProcess(tmp_path / "board", "--baud", "115200", "--listen", b.listen, profile=PROFILE)
    wait_for(lambda: fleet.controller.is_online(DEVICE), 30, "the board to be back")
    assert wait_for(lambda: (s := gw.get("/v1/status").json())["serial"]["connected"] and s, 10, "reconnect")
    reply = gw.post("/v1/infer", bytes(490))  # KWS's input: the board still runs version 1
    assert reply.status == 200, reply.body
    status = gw.get("/v1/status").json()
    assert status["model"]["version"] == 1 and status["store"]["confirmed_version"] == 1
    b.stop_gateway()
    _stats, info = b.sim.stats()
    assert info.active.sha256 == load_artifact(kws, (), require_signature=False).sha256


def test_the_gateway_outlives_a_broker_restart(bench, fleet, broker, make_artifact):
    b = bench()
    b.start_sim()
    gw = b.start_gateway()
    fleet.wait_online()
    broker.restart(down_s=1.0)
    wait_for(lambda: fleet.controller.is_online(DEVICE), 30, "the gateway to be back on the broker")
    d = fleet.wait_done(fleet.deploy(make_artifact("kws", 1, profile=PROFILE))["deployment"])
    assert d["state"] == "healthy", d
    assert gw.proc.poll() is None
    assert "lost the broker" in b.stop_gateway()


def test_sigterm_in_the_middle_of_flashing_stops_at_once_and_nothing_is_lost(bench, fleet, make_artifact, tmp_path):
    b = bench()
    b.sim = SimProcess(tmp_path / "board", "--baud", "115200", "--listen", b.listen, profile=PROFILE)
    b.start_gateway()
    fleet.wait_online()
    kws = make_artifact("kws", 1, profile=PROFILE)
    assert fleet.wait_done(fleet.deploy(kws)["deployment"])["state"] == "healthy"
    dep = fleet.deploy(make_artifact("ic", 2, profile=PROFILE))  # about 9 s on the line
    job = wait_for(lambda: fleet.state(dep["deployment"])["devices"][0].get("job"), 10, "the job")
    wait_for(lambda: "activating" in [e["state"] for e in fleet.controller.db.job_events(job)], 20, "flashing")
    time.sleep(1.0)
    started = time.monotonic()
    b.stop_gateway()  # exit 0
    assert time.monotonic() - started < 5
    _stats, info = b.sim.stats()
    assert info.active.sha256 == load_artifact(kws, (), require_signature=False).sha256 and info.transfer_xfer != 0
    gw = b.start_gateway()  # the store is whole: it serves version 1, and the update can be sent again
    status = gw.get("/v1/status").json()
    assert status["model"]["version"] == 1 and status["store"]["pending"] is False


# --- staged rollouts through the gateway (the controller's part played by test_agent_staged.RolloutStandIn) ---

@pytest.fixture
def rollout(broker):
    stand_in = RolloutStandIn(broker, FLEET, DEVICE)
    yield stand_in
    stand_in.close()


def staged_on_the_device(b: Bench, rollout: RolloutStandIn, make_artifact) -> tuple[Path, Path]:
    """Version 1 confirmed, then version 2 of the same model name staged (healthy, the floor held)."""
    b.start_sim()
    gw = b.start_gateway()
    rollout.wait_status(lambda s: s.online)
    old = make_artifact("kws", 1, profile=PROFILE, name="keywords")
    assert rollout.wait_done(rollout.send_job(old, staged=False))[-1].state == "healthy"
    # The same name: had the device confirmed version 2, its floor would refuse version 1 (VERSION).
    new = make_artifact("ic", 2, profile=PROFILE, name="keywords")
    reports = rollout.wait_done(rollout.send_job(new, staged=True), timeout=60)
    assert reports[-1].state == "healthy", [(p.state, p.reason) for p in reports]
    store = gw.get("/v1/status").json()["store"]
    assert store == {"active": "b", "pending": False, "confirmed_version": 1, "held": {"previous": "a"}}
    status = rollout.wait_status(lambda s: s.model is not None and s.model.sha256 == sha(new))
    assert (status.profile, status.latency_budget_ms, status.tags) == (PROFILE, 1000.0, ())  # [health]'s budget
    return old, new


def test_a_staged_update_on_the_device_is_reverted_by_flashing_the_other_slot_again(bench, rollout, make_artifact):
    b = bench()
    old, new = staged_on_the_device(b, rollout, make_artifact)
    b.stop_gateway()
    _stats, info = b.sim.stats()
    assert info.active.sha256 == sha(new) and not info.active.confirmed  # flashed without MODEL_CONFIRM
    b.start_gateway()  # a restart in the held window makes the device run the model, still unconfirmed
    rollout.wait_status(lambda s: s.online and s.model is not None and s.model.sha256 == sha(new))
    revert = rollout.send_command("revert", sha(old))
    reports = rollout.wait_done(revert, timeout=60)
    assert [p.state for p in reports] == ["accepted", "activating", "healthy"], [(p.state, p.reason) for p in reports]
    assert rollout.wait_status(lambda s: s.model is not None and s.model.sha256 == sha(old)).model.slot == "a"
    assert rollout.requests[revert] == 0  # flashed from the gateway's store, nothing downloaded
    status = b.gateway.get("/v1/status").json()
    assert status["store"] == {"active": "a", "pending": False, "confirmed_version": 1, "held": None}
    assert status["last_health_check"]["ok"]
    b.stop_gateway()
    _stats, info = b.sim.stats()
    assert info.active.sha256 == sha(old) and info.active.version == 1 and info.active.confirmed


def test_a_confirm_sends_model_confirm_to_the_device(bench, rollout, make_artifact):
    b = bench()
    old, new = staged_on_the_device(b, rollout, make_artifact)
    refused = rollout.wait_done(rollout.send_command("confirm", sha(old)))
    assert refused[-1].state == "failed" and "the device runs model" in refused[-1].reason
    confirm = rollout.send_command("confirm", sha(new))
    assert [p.state for p in rollout.wait_done(confirm)] == ["accepted", "healthy"]
    store = b.gateway.get("/v1/status").json()["store"]
    assert store == {"active": "b", "pending": False, "confirmed_version": 2, "held": None}
    b.stop_gateway()
    _stats, info = b.sim.stats()
    assert info.active.sha256 == sha(new) and info.active.version == 2 and info.active.confirmed  # MODEL_CONFIRM
