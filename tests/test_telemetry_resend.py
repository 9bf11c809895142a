"""Telemetry resent until the controller acknowledges it: the agent and the simulator, real Mosquitto.

The "controller" here is a plain MqttClient (:class:`Acker`) that subscribes to the fleet's telemetry and
answers with ``telemetry/ack`` as the real controller does after its commit, except when told to stay
silent or to skip some seqs. The buffer's rules (bound, no resend before the first ack) are checked on
:class:`TelemetryBuffer` itself with explicit clock values; the wiring on the wire.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from dataclasses import replace

import pytest

from agent_helpers import write_config
from conftest import REPO
from fleet_helpers import wait_for
from lepton_edge.agent.config import load_config
from lepton_edge.agent.daemon import Agent
from lepton_edge.agent.mqtt_link import LinkOptions, start_mqtt
from lepton_edge.agent.telemetry_buffer import TelemetryBuffer
from lepton_edge.mqtt import (
    Block,
    DeviceTopics,
    MqttClient,
    NetworkLoop,
    SessionOptions,
    Telemetry,
    TelemetryAck,
    new_boot_id,
    parse_broker_url,
)
from lepton_edge.tools.devsim import SimDevice, SimOptions

FAST = SessionOptions(max_queued=1000, min_backoff_s=0.1, max_backoff_s=1.0)
FLEET = "default"


class Acker:
    """Receives every device's telemetry (each payload, in order) and acks it unless ``silent`` or the
    seq is in ``skip_once`` (skipped the first time it arrives only)."""

    def __init__(self, broker, fleet: str = FLEET) -> None:
        self.fleet = fleet
        self.silent = False
        self.skip_once: set[int] = set()
        self.received: list[tuple[str, bytes]] = []
        self._lock = threading.Lock()
        self.client = MqttClient(parse_broker_url(broker.url()), f"acker-{new_boot_id()}", session=FAST)
        self.client.subscribe(f"lepton/v1/{fleet}/+/telemetry", self._on_telemetry, qos=1)
        self.client.start()
        assert self.client.wait_connected(10), self.client.last_error
        time.sleep(0.2)  # SUBACK

    def _on_telemetry(self, topic: str, payload: bytes) -> None:
        device = topic.split("/")[3]
        t = Telemetry.from_bytes(payload)
        with self._lock:
            self.received.append((device, payload))
            if self.silent or t.boot is None:
                return
            if t.seq in self.skip_once:
                self.skip_once.discard(t.seq)
                return
        self.client.publish(DeviceTopics(self.fleet, device).telemetry_ack, TelemetryAck(t.boot, (t.seq,)).to_bytes(),
                            qos=0)

    def seqs(self, device: str) -> list[int]:
        with self._lock:
            return [Telemetry.from_bytes(p).seq for d, p in self.received if d == device]

    def payloads(self, device: str, seq: int) -> list[bytes]:
        with self._lock:
            return [p for d, p in self.received if d == device and Telemetry.from_bytes(p).seq == seq]

    def stop(self) -> None:
        self.client.stop()


@pytest.fixture
def acker(broker):
    a = Acker(broker)
    yield a
    a.stop()


@pytest.fixture
def sim(broker):
    """``sim(device_id, **options) -> SimDevice``, connected; stopped after the test."""
    loop = NetworkLoop("sim")
    loop.start()
    devices = []

    def start(device_id: str = "sim-0", **options) -> SimDevice:
        d = SimDevice(device_id, parse_broker_url(broker.url()), replace(SimOptions(session=FAST), **options), loop)
        devices.append(d)
        d.start()
        assert d.client.wait_connected(10), d.client.last_error
        return d
    yield start
    for d in devices:
        d.stop()
    loop.stop()


def send(device: SimDevice, n: int = 1) -> None:
    """``n`` records from the device's loop thread, as its telemetry timer does."""
    def go() -> None:
        for _ in range(n):
            device.send_telemetry()
    device.client.loop.call_soon(go)


def kick(broker, device: SimDevice) -> None:
    """Make the broker drop the device's connection: another client takes over its client id."""
    before = device.client.connects
    intruder = MqttClient(parse_broker_url(broker.url()), device.id, session=FAST)
    intruder.start()
    assert intruder.wait_connected(10)
    intruder.stop()
    wait_for(lambda: device.client.connects > before and device.client.connected, 10, "the device reconnected")


# -- the buffer's rules, with explicit clock values --

def test_the_buffer_keeps_at_most_its_capacity_dropping_the_oldest_and_counts_them():
    buf = TelemetryBuffer("ab12", capacity=3, resend_s=10)
    for seq in range(5):
        buf.add(seq, f"r{seq}".encode(), now=float(seq))
    assert buf.seqs == [2, 3, 4]
    assert (buf.counts.records, buf.counts.dropped, buf.counts.unconfirmed) == (5, 2, 5)
    assert buf.ack(TelemetryAck("ab12", (0, 3))) == 1  # 0 was dropped already
    assert buf.seqs == [2, 4] and buf.counts.confirmed == 1 and buf.counts.unconfirmed == 4


def test_the_buffer_resends_nothing_before_an_ack_then_only_what_fell_due_the_same_bytes():
    buf = TelemetryBuffer("ab12", capacity=10, resend_s=10)
    buf.add(0, b"zero", now=0.0)
    buf.add(1, b"one", now=5.0)
    assert buf.due(100.0) == [] and buf.everything(100.0) == [] and buf.next_due() is None
    assert buf.ack(TelemetryAck("ffff", (0,))) == 0  # another boot's ack: nothing confirmed, resending on
    assert buf.seqs == [0, 1] and buf.next_due() == 10.0
    assert buf.due(12.0) == [b"zero"]          # 1 was sent at 5: not due until 15
    assert buf.due(14.0) == []                 # 0 was just resent at 12
    assert buf.everything(14.5) == [b"zero", b"one"]  # a reconnect: all of them
    assert buf.counts.resent == 3
    buf.ack(TelemetryAck("ab12", (0, 1)))
    assert buf.seqs == [] and buf.next_due() is None and buf.counts.confirmed == 2


# -- the simulator on the wire --

def test_a_device_never_resends_to_a_controller_that_does_not_ack(sim, acker):
    acker.silent = True
    d = sim(telemetry_resend_s=0.2)
    send(d, 3)
    wait_for(lambda: len(acker.seqs(d.id)) >= 3, 10, "three records")
    time.sleep(1.0)  # five resend intervals
    assert acker.seqs(d.id) == [0, 1, 2]
    c = d.counts()
    assert c["telemetry_resent"] == 0 and c["telemetry_sent"] == 3 and c["telemetry_unconfirmed"] == 3
    assert Telemetry.from_bytes(acker.payloads(d.id, 0)[0]).boot == d.telemetry.boot


def test_a_skipped_record_is_resent_after_the_interval_the_same_bytes_until_acked(sim, acker):
    acker.skip_once = {1, 3}
    d = sim(telemetry_resend_s=0.3)
    send(d, 5)
    wait_for(lambda: d.counts()["telemetry_confirmed"] == 5, 10, lambda: d.counts())
    c = d.counts()
    assert c["telemetry_sent"] == 5 and c["telemetry_unconfirmed"] == 0 and c["telemetry_resent"] == 2
    for seq in (1, 3):
        first, again = acker.payloads(d.id, seq)
        assert first == again
    assert sorted(acker.seqs(d.id)) == [0, 1, 1, 2, 3, 3, 4]
    time.sleep(0.8)  # acked: nothing more comes
    assert len(acker.seqs(d.id)) == 7 and d.counts()["telemetry_resent"] == 2


def test_after_a_reconnect_every_unacked_record_is_resent(broker, sim, acker):
    d = sim(telemetry_resend_s=600)  # only the reconnect can make it resend
    send(d, 1)
    wait_for(lambda: d.counts()["telemetry_confirmed"] == 1, 10, "the first ack")
    acker.silent = True
    send(d, 2)
    wait_for(lambda: d.counts()["telemetry_acked"] == 3, 10, "PUBACKs: the broker has them")
    assert acker.seqs(d.id) == [0, 1, 2]
    acker.silent = False
    kick(broker, d)
    wait_for(lambda: d.counts()["telemetry_confirmed"] == 3, 10, lambda: (d.counts(), acker.seqs(d.id)))
    assert acker.seqs(d.id)[3:] == [1, 2] and d.counts()["telemetry_resent"] == 2


def test_before_any_ack_a_reconnect_resends_nothing(broker, sim, acker):
    acker.silent = True
    d = sim(telemetry_resend_s=600)
    send(d, 2)
    wait_for(lambda: d.counts()["telemetry_acked"] == 2, 10, "PUBACKs")
    kick(broker, d)
    time.sleep(0.5)
    assert acker.seqs(d.id) == [0, 1] and d.counts()["telemetry_resent"] == 0


def test_a_full_buffer_drops_the_oldest_which_are_then_never_resent(sim, acker):
    acker.silent = True
    d = sim(telemetry_resend_s=0.3, telemetry_buffer=3)
    send(d, 5)
    wait_for(lambda: len(acker.seqs(d.id)) == 5, 10, "five records")
    acker.silent = False
    send(d, 1)  # seq 5 is acked: resending starts for 3 and 4 (0, 1, 2 were dropped)
    wait_for(lambda: d.counts()["telemetry_confirmed"] == 3, 10, lambda: d.counts())
    c = d.counts()
    assert c["telemetry_dropped"] == 3 and c["telemetry_unconfirmed"] == 3 and c["telemetry_resent"] == 2
    assert acker.seqs(d.id) == [0, 1, 2, 3, 4, 5, 3, 4]
    last = Telemetry.from_bytes(acker.payloads(d.id, 5)[0])
    assert last.values["telemetry_dropped"] == 2  # the device says so in its telemetry (before seq 5's own drop)


def test_ota_blocks_and_duplicate_blocks_are_counted(broker, sim):
    d = sim()
    ctrl = MqttClient(parse_broker_url(broker.url()), "ctrl", session=FAST)
    ctrl.start()
    assert ctrl.wait_connected(10)
    try:
        job = new_boot_id() * 2  # 32 hex digits, as a job id
        for offset in (0, 4096, 0):
            ctrl.publish(d.topics.ota_data, Block(job, b"\0" * 8, offset, b"x" * 4096).to_bytes(), qos=1)
        ctrl.publish(d.topics.ota_data, Block(job, b"\0" * 8, 8192, b"", status=1).to_bytes(), qos=1)  # a refusal
        wait_for(lambda: d.counts()["ota_blocks"] == 3, 10, lambda: d.counts())
        time.sleep(0.2)
        assert d.counts()["ota_blocks"] == 3 and d.counts()["ota_duplicate_blocks"] == 1
    finally:
        ctrl.stop()


def test_the_simulator_process_sums_the_counts_and_lists_each_device(broker, acker):
    acker.skip_once = {0, 2}
    proc = subprocess.Popen([sys.executable, "-m", "lepton_edge.tools.devsim", "--broker", broker.url(),
                             "--count", "2", "--telemetry-resend", "0.3", "--control"],
                            cwd=REPO, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert json.loads(proc.stdout.readline())["event"] == "ready"
        proc.stdin.write("burst 4\n")
        proc.stdin.flush()
        assert json.loads(proc.stdout.readline())["event"] == "burst"
        # every device's 0 and 2 skipped once (the first device to send them): 2 resends in all
        wait_for(lambda: len(acker.received) == 10, 10, lambda: len(acker.received))
        time.sleep(0.3)
        proc.stdin.write("stop\n")
        proc.stdin.flush()
        out = proc.communicate(timeout=30)[0]
    finally:
        if proc.poll() is None:
            proc.kill()
    stopped = json.loads(out.splitlines()[-1])
    assert stopped["event"] == "stopped"
    assert (stopped["telemetry_sent"], stopped["telemetry_confirmed"], stopped["telemetry_unconfirmed"],
            stopped["telemetry_resent"], stopped["telemetry_dropped"]) == (8, 8, 0, 2, 0)
    devices = stopped["device_counts"]
    assert sorted(devices) == ["sim-0000", "sim-0001"]
    assert sum(c["telemetry_resent"] for c in devices.values()) == 2
    assert all(c["telemetry_confirmed"] == 4 for c in devices.values())


# -- the agent --

def test_the_agent_resends_a_skipped_record_and_reports_a_boot(tmp_path, broker, signing):
    acker = Acker(broker, fleet="test-fleet")
    acker.skip_once = {1}
    mqtt = f'\n[mqtt]\nbroker = "{broker.url()}"\nkeepalive = 10\ntelemetry_interval_s = 0.2\n' \
           'telemetry_resend_s = 0.4\ntelemetry_buffer = 50\n'
    config = load_config(write_config(tmp_path / "agent.toml", store=tmp_path / "store",
                                      trusted_keys=[signing[1]], extra=mqtt))
    assert (config.mqtt.telemetry_resend_s, config.mqtt.telemetry_buffer) == (0.4, 50)
    agent = Agent(config)
    agent.start()
    link = start_mqtt(agent, replace(LinkOptions(), telemetry_interval_s=0.2, telemetry_resend_s=0.4,
                                     telemetry_buffer=50, session=FAST))
    try:
        wait_for(lambda: len(acker.payloads("test-device", 1)) == 2, 15, lambda: acker.seqs("test-device"))
        first, again = acker.payloads("test-device", 1)
        assert first == again and Telemetry.from_bytes(first).boot == link.telemetry.boot
        wait_for(lambda: 1 not in link.telemetry.pending(), 5, "seq 1 confirmed")
        assert link.telemetry.counts.resent >= 1
    finally:
        link.stop()
        agent.stop()
        acker.stop()
