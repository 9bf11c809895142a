"""The real agent over MQTT: OTA into its A/B store with the health check, status and telemetry.

Controller and HTTP API in this process, the agent (lepton_edge.agent.daemon.Agent with
lepton_edge.agent.mqtt_link) in this process or as a process, real Mosquitto, real MLPerf Tiny models.
Faults: broker restart mid-transfer, agent SIGKILLed mid-download, model bytes altered after signing,
unsigned, older version, too big for the profile; inference requests throughout an update never fail.
"""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from agent_helpers import child_env, connect, request, write_config
from conftest import REPO
from fleet_helpers import DEVICE, api
from lepton_edge.agent.config import load_config
from lepton_edge.agent.daemon import Agent
from lepton_edge.agent.mqtt_link import LinkOptions, start_mqtt
from lepton_edge.agent.update import OtaOptions
from lepton_edge.mqtt import MqttClient, SessionOptions, Status, parse_broker_url
from mosquitto import Broker

pytestmark = pytest.mark.fleet_stores("sqlite")  # the controller is a tool here, not the subject

FAST = SessionOptions(max_queued=1000, min_backoff_s=0.1, max_backoff_s=1.0)


def agent_config(tmp: Path, broker: Broker, signing, mqtt_extra: str = "", **kw) -> Path:
    mqtt = f'\n[mqtt]\nbroker = "{broker.url()}"\nkeepalive = 10\n{mqtt_extra}'
    return write_config(tmp / "agent.toml", store=tmp / "store", trusted_keys=[signing[1]], extra=mqtt, **kw)


@pytest.fixture
def running_agent(tmp_path, broker, fleet, signing, make_artifact):
    """``start(model=None, ota=OtaOptions(), **config) -> (agent, link)`` in this process."""
    started = []

    def start(model: Path | None = None, ota: OtaOptions = OtaOptions(), **config):
        agent = Agent(load_config(agent_config(tmp_path, broker, signing, **config)))
        agent.start(model_path=model)
        link = start_mqtt(agent, LinkOptions(telemetry_interval_s=0.2, ota=ota, session=FAST))
        started.append((agent, link))
        assert link.client.wait_connected(5)
        fleet.wait_online()
        return agent, link
    yield start
    for agent, link in started:
        link.stop()
        agent.stop()


def test_an_update_is_verified_activated_and_reported_while_inference_goes_on(fleet, running_agent, make_artifact):
    agent, _link = running_agent(make_artifact("kws", 1))
    failures, answers = [], []
    stop = threading.Event()

    def client():
        conn = connect(agent.url)
        while not stop.is_set():
            try:
                reply = request(conn, "POST", "/v1/infer", bytes(490), {"Content-Type": "application/octet-stream"})
                (answers if reply.status == 200 else failures).append(reply.status)
            except OSError as exc:
                failures.append(repr(exc))
                conn = connect(agent.url)
        conn.close()
    threads = [threading.Thread(target=client) for _ in range(2)]
    for t in threads:
        t.start()
    try:
        time.sleep(0.3)
        started = time.monotonic()
        dep = fleet.deploy(make_artifact("kws", 2))
        d = fleet.wait_done(dep["deployment"])
        elapsed = time.monotonic() - started
        time.sleep(0.3)
    finally:
        stop.set()
        for t in threads:
            t.join(10)
    assert d["state"] == "healthy", d
    assert elapsed < 10
    assert failures == [] and len(answers) > 20
    served = agent.current()
    assert served.version == 2 and served.slot == "b"
    assert agent.store.state().confirmed_version == 2 and not agent.store.state().pending
    states = [e["state"] for e in fleet.controller.db.job_events(d["job"])]
    assert states[:2] == ["pending", "sent"] and states[-3:] == ["verifying", "activating", "healthy"]
    time.sleep(0.5)
    fleet.controller.wait_idle()
    (dev,) = fleet.controller.devices()
    assert dev["online"] and dev["model"]["version"] == 2 and dev["model"]["slot"] == "b"
    t = dev["telemetry"]
    assert t["model_version"] == 2 and t["inferences"] > 20 and t["latency_p50_ms"] > 0
    assert t["rss_bytes"] > 10_000_000 and "mqtt_inflight" in t
    assert not set(t) & {"broker", "password", "key", "token"}


def test_refusals_happen_before_a_single_block_is_asked_for(fleet, running_agent, make_artifact, tmp_path):
    agent, link = running_agent(make_artifact("kws", 3))
    cases = [(make_artifact("kws", 4, signed=False), "unsigned"),
             (make_artifact("kws", 2), "lower than the confirmed version 3")]
    for art, expect in cases:
        d = fleet.wait_done(fleet.deploy(art)["deployment"])
        assert d["state"] == "failed" and expect in d["reason"], d
        assert d["blocks_served"] == 0
    assert link.ota.requests_sent == 0
    assert agent.current().version == 3


def test_a_model_too_big_for_the_profile_is_refused_before_download(fleet, running_agent, make_artifact, tmp_path):
    tiny = tmp_path / "tiny-board.toml"
    text = (REPO / "device_profiles" / "raspberry-pi-zero-2w.toml").read_text()
    tiny.write_text(text.replace('name = "raspberry-pi-zero-2w"', 'name = "tiny-board"')
                    .replace("flash_bytes = 268435456", "flash_bytes = 40000"))
    agent, link = running_agent(None, profile=str(tiny))
    d = fleet.wait_done(fleet.deploy(make_artifact("kws", 1))["deployment"])  # 54 KB > 20 KB of flash budget
    assert d["state"] == "failed" and "flash budget" in d["reason"] and d["blocks_served"] == 0
    assert link.ota.requests_sent == 0 and agent.current() is None


def test_model_bytes_altered_after_signing_fail_and_the_old_model_keeps_serving(fleet, broker, tmp_path, signing,
                                                                                 make_artifact, running_agent):
    art_id = fleet.upload(make_artifact("kws", 2))
    model = fleet.controller.artifacts.model_path(art_id)
    _status, dep = api(fleet.http.url, "POST", "/v1/deployments", {"artifact": art_id, "devices": [DEVICE]})
    data = bytearray(model.read_bytes())
    data[len(data) // 2] ^= 0x01
    model.write_bytes(bytes(data))  # the device is not up yet: it will download the altered bytes
    agent, _link = running_agent(make_artifact("kws", 1))
    d = fleet.wait_done(dep["deployment"])
    assert d["state"] == "failed" and "sha256" in d["reason"], d
    assert agent.current().version == 1 and agent.store.state().active == "a"
    assert not list((tmp_path / "store" / "partial").glob("*"))  # the bad download is gone


def test_the_download_survives_a_broker_restart(fleet, broker, running_agent, make_artifact):
    agent, link = running_agent(make_artifact("kws", 1), OtaOptions(block_size=4096, max_bytes_per_s=150_000))
    dep = fleet.deploy(make_artifact("ad", 2))  # 277 KB at 150 KB/s: about 2 s
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and fleet.state(dep["deployment"])["devices"][0]["received"] < 60_000:
        time.sleep(0.02)
    broker.restart(down_s=0.5)
    d = fleet.wait_done(dep["deployment"])
    assert d["state"] == "healthy", d
    assert agent.current().name.startswith("ad01") and link.client.stats()["connects"] == 2


def test_an_agent_killed_mid_download_resumes_after_restart(fleet, broker, tmp_path, signing, make_artifact):
    config = agent_config(tmp_path, broker, signing, mqtt_extra="telemetry_interval_s = 0.5\n"
                          "ota_block_size = 4096\nota_max_bytes_per_s = 100000\n")
    cmd = [sys.executable, "-m", "lepton_edge", "agent", "--config", str(config)]
    env = dict(child_env(), PYTHONUNBUFFERED="1")

    def spawn(*extra: str) -> subprocess.Popen:
        proc = subprocess.Popen(cmd + list(extra), cwd=REPO, env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
        lines = [proc.stdout.readline(), proc.stdout.readline()]  # "serving ...", then "listening on ..."
        if "listening on" not in lines[1]:
            proc.kill()
            raise AssertionError("".join(lines) + proc.stderr.read())
        return proc

    proc = spawn("--model", str(make_artifact("kws", 1)))
    try:
        fleet.wait_online(20)
        dep = fleet.deploy(make_artifact("ad", 2))
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and fleet.state(dep["deployment"])["devices"][0]["received"] < 100_000:
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
    finally:
        proc.kill()
        proc.stdout.close()
        proc.stderr.close()
    time.sleep(0.3)
    on_disk = sum(f.stat().st_size for f in (tmp_path / "store" / "partial").glob("*/model.part"))
    assert on_disk >= 90_000
    proc = spawn()
    try:
        d = fleet.wait_done(dep["deployment"], timeout=30)
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=20)
    assert d["state"] == "healthy", (d, err)
    assert "resuming at" in err
    resumed = [e for e in fleet.controller.db.job_events(d["job"]) if e["state"] == "accepted"]
    assert resumed[-1]["received"] >= 90_000  # the second run started from what the first left on disk


def test_status_is_retained_and_the_last_will_says_offline(fleet, broker, running_agent, make_artifact):
    _agent, link = running_agent(make_artifact("kws", 1))
    seen = []
    watcher = MqttClient(parse_broker_url(broker.url()), "status-watcher")
    watcher.subscribe(link.topics.status, lambda t, p: seen.append(Status.from_bytes(p)))
    watcher.start()
    try:
        deadline = time.monotonic() + 5
        while not seen and time.monotonic() < deadline:
            time.sleep(0.02)
        assert seen and seen[0].online and seen[0].model.version == 1 and seen[0].model.slot == "a"
        assert seen[0].agent.startswith("lepton-edge ")
        sock = link.client._paho.socket()
        sock.shutdown(socket.SHUT_RDWR)  # the connection dies without a DISCONNECT: the Will fires
        deadline = time.monotonic() + 5
        while not any(not s.online for s in seen) and time.monotonic() < deadline:
            time.sleep(0.02)
        offline = [s for s in seen if not s.online]
        assert offline and offline[0].reason == "connection lost"
    finally:
        watcher.stop()


def test_an_agent_fails_over_to_the_next_broker_in_its_list(fleet, broker, tmp_path, signing, make_artifact):
    with socket.socket() as s:  # a port where nothing listens
        s.bind(("127.0.0.1", 0))
        dead = s.getsockname()[1]
    mqtt = f'\n[mqtt]\nbrokers = ["mqtt://127.0.0.1:{dead}", "{broker.url()}"]\nkeepalive = 10\n'
    agent = Agent(load_config(write_config(tmp_path / "agent.toml", store=tmp_path / "store",
                                           trusted_keys=[signing[1]], extra=mqtt)))
    agent.start(model_path=make_artifact("kws", 1))
    link = start_mqtt(agent, LinkOptions(telemetry_interval_s=0.2, session=FAST))
    try:
        assert link.client.wait_connected(10), link.client.last_error
        assert link.client.broker.port == broker.port
        fleet.wait_online()
    finally:
        link.stop()
        agent.stop()
