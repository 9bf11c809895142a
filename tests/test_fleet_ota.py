"""OTA end to end: controller + HTTP API + simulated devices speaking the real protocol over real Mosquitto.

Faults injected: broker restart mid-transfer, a simulator SIGKILLed mid-download, model bytes altered in
the store after signing, bad signature, older version, model too big, expiry, superseding deployments.
"""

from __future__ import annotations

import json
import math
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path

import paho.mqtt.client as paho
import pytest

from conftest import REPO
from fleet_helpers import api, keypair, make_artifact, upload_body, wait_for
from lepton_edge.fleet.controller import Controller, ControllerOptions
from lepton_edge.fleet.http_api import HttpApi, HttpListen
from lepton_edge.mqtt import (
    BLOCK_UNKNOWN_JOB,
    Block,
    BlockRequest,
    DeviceTopics,
    ModelInfo,
    MqttClient,
    SessionOptions,
    parse_broker_url,
)
from lepton_edge.tools.devsim import SimDevice, SimFleet, SimOptions
from mosquitto import Broker

FAST = SessionOptions(min_backoff_s=0.1, max_backoff_s=1.0, max_queued=1000)


@dataclass
class Env:
    tmp: Path
    broker: Broker
    controller: Controller
    http: HttpApi
    priv: object
    pub: object
    devices: list
    db: str | None  # the controller's database (conftest's fleet_db)

    @property
    def cfg(self):
        return parse_broker_url(self.broker.url())

    def device(self, device_id: str, start: bool = True, **options) -> SimDevice:
        opts = SimOptions(trusted_keys=(self.pub,), require_signature=True, session=FAST, request_timeout_s=2.0)
        model = options.pop("model", None)
        dev = SimDevice(device_id, self.cfg, replace(opts, **options), model=model)
        self.devices.append(dev)
        if start:
            dev.start()
            assert dev.client.wait_connected(5), dev.client.last_error
            deadline = time.monotonic() + 5
            while not self.controller.is_online(device_id) and time.monotonic() < deadline:
                time.sleep(0.01)
        return dev

    def artifact(self, name: str, **kw) -> Path:
        kw.setdefault("private_key", self.priv)
        return make_artifact(self.tmp / name, **kw)

    def upload(self, art: Path) -> str:
        status, body = api(self.http.url, "POST", "/v1/artifacts", upload_body(art))
        assert status in (200, 201), body
        return body["artifact"]

    def deploy(self, artifact_id: str, devices: list[str], **kw) -> dict:
        status, body = api(self.http.url, "POST", "/v1/deployments",
                           {"artifact": artifact_id, "devices": devices, **kw})
        assert status == 201, body
        return body

    def state(self, dep_id: str) -> dict:
        status, body = api(self.http.url, "GET", f"/v1/deployments/{dep_id}")
        assert status == 200, body
        return body

    def wait_done(self, dep_id: str, timeout: float = 20) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.controller.wait_idle()
            dep = self.state(dep_id)
            if dep["done"]:
                return dep
            time.sleep(0.05)
        raise AssertionError(f"deployment not done after {timeout} s: {json.dumps(self.state(dep_id), indent=1)}")


def start_controller(tmp: Path, broker: Broker, db: str | None, **options) -> tuple[Controller, HttpApi]:
    session = SessionOptions(clean_start=False, session_expiry_s=600, max_inflight=200, min_backoff_s=0.1,
                             max_backoff_s=1.0)
    c = Controller(parse_broker_url(broker.url()), tmp / "store", db,
                   ControllerOptions(session=session, housekeeping_s=0.1, **options))
    c.start()
    assert c.wait_connected(5), c.mqtt.last_error
    h = HttpApi(c, HttpListen("127.0.0.1", 0), None)
    h.start()
    return c, h


@pytest.fixture
def env(tmp_path, fleet_db):
    """A controller on each store (conftest's fleet_db) with its HTTP API, on a Mosquitto of its own."""
    priv, pub, _ = keypair(tmp_path / "keys")
    with Broker(tmp_path, max_queued_messages=100000) as broker:
        controller, http = start_controller(tmp_path, broker, fleet_db)
        e = Env(tmp_path, broker, controller, http, priv, pub, [], fleet_db)
        yield e
        for d in e.devices:
            d.stop()
        http.stop()
        e.controller.stop()


def test_a_1mb_artifact_is_delivered_verified_and_activated(env):
    dev = env.device("cam-1", telemetry_interval_s=0.2)
    art_id = env.upload(env.artifact("v1", size=1_000_000))
    started = time.monotonic()
    dep = env.deploy(art_id, ["cam-1"])
    # sent at once to the online device, which may already have answered when the response is made
    assert dep["devices"][0]["state"] in ("sent", "accepted", "downloading") and dep["devices"][0]["online"]
    p = dev.wait_state({"healthy", "failed"}, 10)
    elapsed = time.monotonic() - started
    assert p is not None and p.state == "healthy", dev.progress_log
    assert elapsed < 10  # the 3 s target is measured by bench/ota.py
    dep = env.wait_done(dep["deployment"])
    (d,) = dep["devices"]
    assert d["state"] == "healthy" and d["received"] == 1_000_000
    assert d["bytes_served"] == 1_000_000 and d["blocks_served"] == math.ceil(1_000_000 / 65536)
    states = [p.state for p in dev.progress_log]
    assert states[0] == "accepted" and states[-3:] == ["verifying", "activating", "healthy"]
    time.sleep(0.5)
    env.controller.wait_idle()
    (row,) = env.controller.devices()
    assert row["online"] and row["model"]["version"] == 1 and row["model"]["sha256"] == dep["model_sha256"]
    assert row["telemetry"]["model_version"] == 1 and row["ota"]["state"] == "healthy"
    assert env.controller.db.telemetry_count("cam-1") >= 2


@pytest.mark.parametrize("block_qos", [0, 1])
def test_blocks_go_out_at_the_qos_asked_for_and_the_model_arrives_whole(tmp_path, broker, block_qos):
    """``--block-qos 0`` (for NATS, where a QoS 1 publish is a JetStream write): an observer subscribed at
    QoS 1 gets every block at the QoS the controller published it with, and the device still installs."""
    priv, pub, _ = keypair(tmp_path / "keys")
    controller, http = start_controller(tmp_path, broker, None, block_qos=block_qos)
    env = Env(tmp_path, broker, controller, http, priv, pub, [], None)
    seen: list[int] = []
    observer = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id=f"blocks-{time.monotonic_ns()}")
    observer.on_message = lambda _c, _u, msg: seen.append(msg.qos)
    observer.connect("127.0.0.1", broker.port)
    observer.subscribe(DeviceTopics("default", "q-1").ota_data, qos=1)
    observer.loop_start()
    try:
        time.sleep(0.3)  # the subscription is in place before the first block
        dev = env.device("q-1")
        dep = env.deploy(env.upload(env.artifact("v1", size=300_000)), ["q-1"], block_size=16384)
        p = dev.wait_state({"healthy", "failed"}, 15)
        assert p is not None and p.state == "healthy", dev.progress_log
        (d,) = env.wait_done(dep["deployment"])["devices"]
        assert d["state"] == "healthy" and d["received"] == 300_000
        wait_for(lambda: len(seen) >= math.ceil(300_000 / 16384), 5, seen)
        assert set(seen) == {block_qos}
    finally:
        observer.loop_stop()
        observer.disconnect()
        dev.stop()
        http.stop()
        controller.stop()


def test_an_offline_device_gets_its_job_when_it_comes_back(env):
    art_id = env.upload(env.artifact("v1", size=50_000))
    dep = env.deploy(art_id, ["late-1", "late-2"])
    assert {d["state"] for d in dep["devices"]} == {"pending"}
    assert not any(d["online"] for d in dep["devices"])
    time.sleep(0.3)
    env.device("late-1")
    env.device("late-2")
    dep = env.wait_done(dep["deployment"])
    assert [d["state"] for d in dep["devices"]] == ["healthy", "healthy"]


def test_jobs_expire_and_an_expired_job_is_never_sent(env):
    art_id = env.upload(env.artifact("v1", size=50_000))
    dep = env.deploy(art_id, ["sleepy"], expires_s=1)
    dep = env.wait_done(dep["deployment"], timeout=5)
    (d,) = dep["devices"]
    assert d["state"] == "expired" and "expired" in d["reason"]
    dev = env.device("sleepy")
    time.sleep(0.7)
    assert dev.progress_log == []  # no job came


def test_expiry_in_the_middle_of_a_download_stops_the_block_server(env):
    dev = env.device("slow", block_delay_s=0.1, window=1)
    art_id = env.upload(env.artifact("v1", size=400_000))
    dep = env.deploy(art_id, ["slow"], expires_s=1, block_size=16384)
    dep = env.wait_done(dep["deployment"], timeout=10)
    (d,) = dep["devices"]
    assert d["state"] in ("expired", "failed") and d["bytes_served"] < 400_000
    assert dev.wait_state({"failed"}, 5).reason.endswith("job expired")
    assert dev.model is None


@pytest.mark.parametrize("fault", ["bad signature", "older version", "too big for the profile"])
def test_refused_before_a_single_block_is_asked_for(env, fault, tmp_path):
    if fault == "bad signature":
        other_priv, _, _ = keypair(tmp_path / "other-keys")
        art = env.artifact("bad", size=20_000, private_key=other_priv)
        dev = env.device("d1")
        expect = "signature does not verify"
    elif fault == "older version":
        art = env.artifact("old", size=20_000, version=3)
        dev = env.device("d1", model=ModelInfo("sim-model", 5, "00" * 32, "a"))
        expect = "lower than the confirmed version 5"
    else:
        art = env.artifact("big", size=20_000)
        dev = env.device("d1", max_model_bytes=10_000)
        expect = "does not fit"
    dep = env.deploy(env.upload(art), ["d1"])
    dep = env.wait_done(dep["deployment"])
    (d,) = dep["devices"]
    assert d["state"] == "failed" and expect in d["reason"], d
    assert d["blocks_served"] == 0 and dev.requests_sent == 0
    assert [p.state for p in dev.progress_log] == ["failed"]


def test_model_bytes_altered_after_signing_fail_with_a_hash_reason(env):
    old = ModelInfo("sim-model", 1, "11" * 32, "a")
    art_id = env.upload(env.artifact("v2", size=200_000, version=2))
    dep = env.deploy(art_id, ["victim"])  # the device is offline: nothing is sent yet
    model = env.controller.artifacts.model_path(art_id)
    data = bytearray(model.read_bytes())
    data[123_456] ^= 0xFF  # same size, one byte off
    model.write_bytes(bytes(data))
    dev = env.device("victim", model=old)
    dep = env.wait_done(dep["deployment"])
    (d,) = dep["devices"]
    assert d["state"] == "failed" and "sha256" in d["reason"] and "does not match" in d["reason"]
    assert dev.model == old  # the old model keeps serving
    status, body = api(env.http.url, "POST", "/v1/deployments", {"artifact": art_id, "devices": ["x"]})
    assert status == 400 and "no longer matches" in body["error"]  # and the controller notices next time


def test_the_download_survives_a_broker_restart(env):
    dev = env.device("survivor", block_delay_s=0.03, window=2)
    art_id = env.upload(env.artifact("v1", size=1_000_000))
    dep = env.deploy(art_id, ["survivor"], block_size=16384)
    deadline = time.monotonic() + 10
    machine = dev.ota.machine
    while time.monotonic() < deadline and not (machine.download and machine.download.received > 300_000):
        time.sleep(0.02)
    assert dev.ota.machine.busy
    env.broker.restart(down_s=0.5)
    p = dev.wait_state({"healthy", "failed"}, 30)
    assert p is not None and p.state == "healthy", dev.progress_log[-3:]
    dep = env.wait_done(dep["deployment"])
    assert dep["devices"][0]["state"] == "healthy"
    assert dev.client.stats()["connects"] == 2 and env.controller.mqtt.stats()["connects"] == 2


def test_a_killed_device_resumes_from_what_it_has_on_disk(env):
    state_dir = env.tmp / "sim-state"
    cmd = [sys.executable, "-m", "lepton_edge.tools.devsim", "--broker", env.broker.url(), "--count", "1",
           "--prefix", "phoenix-", "--state-dir", str(state_dir), "--block-delay", "0.03", "--window", "1",
           "--trusted-key", str(env.tmp / "keys" / "signing.pub")]
    art_id = env.upload(env.artifact("v1", size=600_000))
    dep = env.deploy(art_id, ["phoenix-0000"], block_size=16384)
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, text=True)
    try:
        assert '"ready"' in proc.stdout.readline()
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and env.state(dep["deployment"])["devices"][0]["received"] < 250_000:
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
        proc.wait(5)
    finally:
        proc.kill()
        proc.stdout.close()
    env.controller.wait_idle()
    served_before = env.state(dep["deployment"])["devices"][0]["bytes_served"]
    assert 250_000 <= served_before < 600_000
    proc = subprocess.Popen(cmd[:cmd.index("--block-delay")] + cmd[cmd.index("--trusted-key"):], cwd=REPO,
                            stdout=subprocess.PIPE, text=True)
    try:
        assert '"ready"' in proc.stdout.readline()
        result = env.wait_done(dep["deployment"], timeout=20)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(5)
        proc.stdout.close()
    (d,) = result["devices"]
    assert d["state"] == "healthy"
    resumed = [e for e in env.controller.db.job_events(d["job"]) if e["state"] == "downloading"]
    assert resumed[-1]["received"] >= 250_000 - 16384  # it started again from what it held, not from zero
    assert d["bytes_served"] < 600_000 + served_before - 200_000
    assert json.loads((state_dir / "phoenix-0000" / "state.json").read_text())["model"]["version"] == 1


def test_a_new_deployment_supersedes_an_unfinished_one(env):
    dev = env.device("busy", block_delay_s=0.05, window=1)
    v1 = env.upload(env.artifact("v1", size=500_000, version=1))
    v2 = env.upload(env.artifact("v2", size=30_000, version=2))
    dep1 = env.deploy(v1, ["busy"], block_size=16384)
    time.sleep(0.5)
    dep2 = env.deploy(v2, ["busy"])
    result = env.wait_done(dep2["deployment"])
    assert result["devices"][0]["state"] == "healthy"
    assert env.state(dep1["deployment"])["devices"][0]["state"] == "superseded"
    assert dev.model.version == 2


def test_a_failed_health_check_reports_rolled_back(env):
    old = ModelInfo("sim-model", 1, "22" * 32, "a")
    dev = env.device("flaky", fail_health_check=True, model=old)
    dep = env.deploy(env.upload(env.artifact("v2", size=10_000, version=2)), ["flaky"])
    (d,) = env.wait_done(dep["deployment"])["devices"]
    assert d["state"] == "rolled_back" and "health check" in d["reason"]
    assert dev.model == old


def test_a_restarted_controller_keeps_its_jobs(env):
    art_id = env.upload(env.artifact("v1", size=40_000))
    dep = env.deploy(art_id, ["returning"])
    env.http.stop()
    env.controller.stop()
    env.controller, env.http = start_controller(env.tmp, env.broker, env.db)
    env.device("returning")
    assert env.wait_done(dep["deployment"])["devices"][0]["state"] == "healthy"


def test_a_device_cannot_fetch_another_devices_job(env):
    env.device("owner", block_delay_s=5)  # accepts the job, then waits
    dep = env.deploy(env.upload(env.artifact("v1", size=40_000)), ["owner"])
    job = dep["devices"][0]["job"]
    thief_topics = DeviceTopics("default", "thief")
    got = []
    thief = MqttClient(env.cfg, "thief")
    thief.subscribe(thief_topics.ota_data, lambda t, p: got.append(Block.from_bytes(p)))
    thief.start()
    try:
        assert thief.wait_connected(5)
        time.sleep(0.2)
        thief.publish(thief_topics.ota_get, BlockRequest(job, 0, 1024).to_bytes())
        deadline = time.monotonic() + 5
        while not got and time.monotonic() < deadline:
            time.sleep(0.02)
        assert got and got[0].status == BLOCK_UNKNOWN_JOB and got[0].data == b""
    finally:
        thief.stop()


def test_telemetry_from_many_devices_is_recorded_without_loss(env):
    fleet = SimFleet(env.cfg, 20, prefix="t-", options=SimOptions(session=FAST))
    fleet.start()
    try:
        assert fleet.wait_connected(10)
        fleet.burst(50)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and env.controller.db.telemetry_count() < 1000:
            time.sleep(0.05)
    finally:
        fleet.stop()
    env.controller.wait_idle()
    db = env.controller.db
    assert db.telemetry_count() == 1000
    seqs = db._conn().execute("SELECT device, COUNT(DISTINCT seq), MIN(seq), MAX(seq) FROM telemetry"
                              " GROUP BY device").fetchall()
    assert len(seqs) == 20 and all(tuple(r)[1:] == (50, 0, 49) for r in seqs)
