"""Issue 5 "Security": Mosquitto with a password file, an ACL confining each device to its own topics, and
TLS with a CA made here. A device cannot publish into another device's topics (nobody receives it), nor
read them; a client without (or with wrong) credentials cannot connect; the whole OTA flow still works.
"""

from __future__ import annotations

import json
import time

import pytest

from conftest import run_cli
from fleet_helpers import api, keypair, make_artifact, upload_body
from lepton_edge.fleet.controller import Controller, ControllerOptions
from lepton_edge.fleet.http_api import HttpApi, HttpListen
from lepton_edge.mqtt import (
    Block,
    BlockRequest,
    DeviceTopics,
    MqttClient,
    OtaJob,
    Progress,
    SessionOptions,
    Status,
    Telemetry,
    new_job_id,
    parse_broker_url,
)
from lepton_edge.tools.devsim import SimDevice, SimOptions
from mosquitto import Broker, make_ca

USERS = {"controller": "ctl-secret", "dev-a": "a-secret", "dev-b": "b-secret"}
# What the docs recommend: the controller reads and writes the fleet; a device writes its status,
# telemetry, block requests and progress, and reads its telemetry acks, jobs and blocks. Nothing else.
ACL = """\
pattern write lepton/v1/default/%u/status
pattern write lepton/v1/default/%u/telemetry
pattern write lepton/v1/default/%u/ota/get
pattern write lepton/v1/default/%u/ota/progress
pattern read lepton/v1/default/%u/telemetry/ack
pattern read lepton/v1/default/%u/ota/job
pattern read lepton/v1/default/%u/ota/data

user controller
topic readwrite lepton/v1/#
"""
FAST = SessionOptions(min_backoff_s=0.2, max_backoff_s=1.0)


def wait_for(predicate, timeout=5.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return predicate()


@pytest.fixture(scope="module")
def secured(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("secure")
    tls = make_ca(tmp / "pki")
    with Broker(tmp, users=USERS, acl=ACL, tls=tls, plain=False) as broker:
        yield broker, tls


def url(broker: Broker, user: str | None = None) -> str:
    return broker.tls_url(user, USERS.get(user) if user else None)


def client(broker, tls, user, client_id=None, **kw) -> MqttClient:
    return MqttClient(parse_broker_url(url(broker, user), ca=tls.ca_cert), client_id or f"{user}-{time.monotonic_ns()}",
                      session=FAST, **kw)


def test_clients_without_valid_credentials_cannot_connect(secured):
    broker, tls = secured
    for user, password in ((None, None), ("dev-a", "wrong"), ("nobody", "x")):
        u = broker.tls_url(user, password)
        c = MqttClient(parse_broker_url(u, ca=tls.ca_cert), "intruder", session=SessionOptions(min_backoff_s=5))
        c.start()
        try:
            assert not c.wait_connected(1.0), user
            assert "refused the connection" in c.last_error
            assert "Not authorized" in c.last_error or "Bad user name or password" in c.last_error
            assert "wrong" not in c.last_error  # no secret in what we report
        finally:
            c.stop()
    # and the CLI says so in one line, in bounded time
    proc = run_cli("fleet", "watch", "--broker", broker.tls_url(), "--ca", tls.ca_cert, "--once",
                   "--connect-timeout", "1.5")
    assert proc.returncode == 1 and "refused the connection" in proc.stderr and len(proc.stderr.splitlines()) == 1


def test_a_device_cannot_publish_into_or_read_another_devices_topics(secured):
    broker, tls = secured
    seen_by_controller, seen_by_b = [], []
    ctl = client(broker, tls, "controller")
    ctl.subscribe("lepton/v1/#", lambda t, p: seen_by_controller.append(t))
    b = client(broker, tls, "dev-b", "dev-b")
    b.subscribe(DeviceTopics("default", "dev-b").ota_job, lambda t, p: seen_by_b.append(t))
    b.subscribe(DeviceTopics("default", "dev-b").ota_data, lambda t, p: seen_by_b.append(t))
    seen_by_a = []
    a = client(broker, tls, "dev-a", "dev-a")
    # Mosquitto grants these subscriptions but delivers nothing the ACL does not let dev-a read.
    a.subscribe(DeviceTopics("default", "dev-b").ota_data, lambda t, p: seen_by_a.append(t))
    a.subscribe("lepton/v1/#", lambda t, p: seen_by_a.append(t))
    for c in (ctl, b, a):
        c.start()
        assert c.wait_connected(5), c.last_error
    time.sleep(0.3)  # SUBACKs
    try:
        other = DeviceTopics("default", "dev-b")
        job = new_job_id()
        spoofs = [
            (other.status, Status(False, reason="spoofed").to_bytes()),
            (other.telemetry, Telemetry(0, 0.0).to_bytes()),
            (other.ota_progress, Progress(job, "healthy").to_bytes()),
            (other.ota_get, BlockRequest(job, 0, 100).to_bytes()),
            (other.ota_job, OtaJob(job, "d", b"{}", None, "00" * 32, 1, 1024, 0.0, 0.0).to_bytes()),  # a fake job
            (other.ota_data, Block(job, b"", 0, b"evil").to_bytes()),
        ]
        for topic, payload in spoofs:
            a.publish(topic, payload, qos=1)
        # a message dev-a may send, published after the spoofs: once it arrives, they would have too
        own = DeviceTopics("default", "dev-a").telemetry
        a.publish(own, Telemetry(1, 0.0).to_bytes(), qos=1)
        assert wait_for(lambda: own in seen_by_controller)
        ctl.publish(other.ota_job, b"controller may", qos=1)
        ctl.publish(other.ota_data, b"blocks for dev-b only", qos=1)
        ctl.publish(DeviceTopics("default", "dev-a").ota_data, b"blocks for dev-a", qos=1)
        assert wait_for(lambda: other.ota_data in seen_by_b and seen_by_a)
        time.sleep(0.3)
        assert [t for t in seen_by_controller if "/dev-b/" in t] == [other.ota_job, other.ota_data]  # its own
        assert seen_by_b == [other.ota_job, other.ota_data]  # the controller's, none of dev-a's
        assert seen_by_a == [DeviceTopics("default", "dev-a").ota_data]  # its own, nothing of dev-b's
        assert a.stats()["inflight"] == 0  # the broker acknowledged and dropped them
    finally:
        for c in (a, b, ctl):
            c.stop()


def test_the_ota_flow_works_under_acl_passwords_and_tls(secured, tmp_path):
    broker, tls = secured
    priv, pub, _ = keypair(tmp_path / "keys")
    controller = Controller(parse_broker_url(url(broker, "controller"), ca=tls.ca_cert), tmp_path / "store",
                            options=ControllerOptions(housekeeping_s=0.1))
    controller.start()
    http = HttpApi(controller, HttpListen("127.0.0.1", 0), None)
    http.start()
    dev = SimDevice("dev-a", parse_broker_url(url(broker, "dev-a"), ca=tls.ca_cert),
                    SimOptions(trusted_keys=(pub,), require_signature=True, session=FAST, telemetry_interval_s=0.2))
    try:
        assert controller.wait_connected(5) and not controller.mqtt.refused_subscriptions
        dev.start()
        assert dev.client.wait_connected(5) and not dev.client.refused_subscriptions
        assert wait_for(lambda: controller.is_online("dev-a"))
        art = make_artifact(tmp_path / "art", size=300_000, private_key=priv)
        status, up = api(http.url, "POST", "/v1/artifacts", upload_body(art))
        status, _dep = api(http.url, "POST", "/v1/deployments", {"artifact": up["artifact"], "devices": ["dev-a"]})
        assert status == 201
        p = dev.wait_state({"healthy", "failed"}, 10)
        assert p is not None and p.state == "healthy", dev.progress_log
        watch = run_cli("fleet", "watch", "--broker", url(broker, "controller"), "--ca", tls.ca_cert, "--once",
                        "--json", "--wait", "0.8")
        assert watch.returncode == 0, watch.stderr
        (row,) = [d for d in json.loads(watch.stdout)["devices"] if d["device"] == "dev-a"]
        assert row["online"] and row["model"]["version"] == 1
        assert USERS["controller"] not in watch.stdout + watch.stderr
    finally:
        dev.stop()
        http.stop()
        controller.stop()


def test_client_certificates_when_the_broker_requires_them(tmp_path):
    tls = make_ca(tmp_path / "pki")
    cert, key = tls.client_cert("dev-a")
    with Broker(tmp_path, tls=tls, plain=False, require_certificate=True) as broker:
        good = MqttClient(parse_broker_url(broker.tls_url(), ca=tls.ca_cert, cert=cert, key=key), "with-cert")
        bad = MqttClient(parse_broker_url(broker.tls_url(), ca=tls.ca_cert), "without-cert",
                         session=SessionOptions(min_backoff_s=5))
        good.start()
        bad.start()
        try:
            assert good.wait_connected(5), good.last_error
            assert not bad.wait_connected(1.0)
            assert bad.last_error
        finally:
            good.stop()
            bad.stop()
