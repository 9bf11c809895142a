"""The one-owner MQTT client against real Mosquitto: threads, reconnects, Last Will, TLS, fds >= 1024."""

from __future__ import annotations

import os
import resource
import signal
import subprocess
import sys
import threading
import time

import pytest

from conftest import REPO
from lepton_edge.errors import BadInput
from lepton_edge.mqtt import DeviceTopics, MqttClient, SessionOptions, Status, Will, parse_broker_url
from mosquitto import Broker, make_ca


def wait_for(predicate, timeout=10.0, step=0.01):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(step)
    return predicate()


@pytest.fixture
def started():
    clients = []

    def start(client: MqttClient) -> MqttClient:
        clients.append(client)
        client.start()
        assert client.wait_connected(10), client.last_error
        return client
    yield start
    for c in clients:
        c.stop()


@pytest.mark.parametrize("protocol", ["5", "3.1.1"])
def test_publish_from_many_threads_and_handlers_run_on_the_loop_thread(tmp_path, started, protocol):
    with Broker(tmp_path, max_queued_messages=100000) as broker:
        cfg = parse_broker_url(broker.url(), protocol=protocol)
        got, threads_seen = [], set()

        def handler(topic, payload):
            threads_seen.add(threading.current_thread().name)
            got.append((topic, payload))
        sub = MqttClient(cfg, f"sub-{protocol}")
        sub.subscribe("t/#", handler, qos=1)
        started(sub)
        time.sleep(0.2)  # SUBACK
        pub = started(MqttClient(cfg, f"pub-{protocol}"))
        workers = [threading.Thread(target=lambda i=i: [pub.publish(f"t/{i}", f"{i}:{n}".encode(), qos=1)
                                                        for n in range(250)]) for i in range(4)]
        for w in workers:
            w.start()
        for w in workers:
            w.join()
        assert wait_for(lambda: len(got) == 1000), len(got)
        assert wait_for(lambda: pub.stats()["inflight"] == 0 and pub.stats()["queued"] == 0)
        assert threads_seen == {sub.loop.name}
        for i in range(4):  # per publisher thread, QoS 1 keeps the order
            mine = [int(p.split(b":")[1]) for t, p in got if t == f"t/{i}"]
            assert mine == list(range(250))
        assert pub.stats()["published"] == 1000 and pub.stats()["dropped"] == 0


def test_reconnects_after_a_broker_restart_and_restores_subscriptions(tmp_path, started):
    with Broker(tmp_path) as broker:
        cfg = parse_broker_url(broker.url())
        fast = SessionOptions(min_backoff_s=0.1, max_backoff_s=0.5)
        got = []
        sub = MqttClient(cfg, "sub", session=fast)
        sub.subscribe("r/+", lambda t, p: got.append(p), qos=1)
        started(sub)
        pub = started(MqttClient(cfg, "pub", session=fast))
        time.sleep(0.2)
        pub.publish("r/1", b"before")
        assert wait_for(lambda: got == [b"before"])
        broker.restart(down_s=1.0)
        assert wait_for(lambda: sub.connected and pub.connected, 10)
        assert sub.stats()["connects"] == 2 and pub.stats()["connects"] == 2
        time.sleep(0.3)  # the restored SUBSCRIBE reaches the new broker
        pub.publish("r/2", b"after")
        assert wait_for(lambda: got == [b"before", b"after"]), got


def test_qos1_published_while_the_broker_is_down_is_sent_after_reconnect(tmp_path, started):
    with Broker(tmp_path) as broker:
        cfg = parse_broker_url(broker.url())
        pub = started(MqttClient(cfg, "pub", session=SessionOptions(min_backoff_s=0.1, max_backoff_s=0.3)))
        broker.stop()
        assert wait_for(lambda: not pub.connected)
        pub.publish("q/retained", b"queued while down", qos=1, retain=True)
        assert pub.stats()["queued"] + pub.stats()["inflight"] >= 1
        broker.start()
        assert wait_for(lambda: pub.connected and pub.stats()["inflight"] == 0, 10)
        got = []
        sub = MqttClient(cfg, "late-sub")
        sub.subscribe("q/#", lambda t, p: got.append(p))
        started(sub)
        assert wait_for(lambda: got == [b"queued while down"])


def test_last_will_marks_a_killed_device_offline_and_a_clean_stop_says_shutdown(tmp_path, started):
    with Broker(tmp_path) as broker:
        cfg = parse_broker_url(broker.url())
        seen: list[Status] = []
        watcher = MqttClient(cfg, "watcher")
        watcher.subscribe(DeviceTopics("default", "k-0000").status, lambda t, p: seen.append(Status.from_bytes(p)))
        started(watcher)
        proc = subprocess.Popen([sys.executable, "-m", "lepton_edge.tools.devsim", "--broker", broker.url(),
                                 "--count", "1", "--prefix", "k-"], cwd=REPO, stdout=subprocess.PIPE, text=True)
        try:
            assert '"ready"' in proc.stdout.readline()
            assert wait_for(lambda: seen and seen[-1].online)
            proc.send_signal(signal.SIGKILL)
            proc.wait(5)
        finally:
            proc.kill()
            proc.stdout.close()
        assert wait_for(lambda: not seen[-1].online, 5), seen
        assert seen[-1].reason == "connection lost"

        from lepton_edge.tools.devsim import SimDevice
        dev = SimDevice("k-0000", cfg)
        dev.start()
        assert dev.client.wait_connected(5)
        assert wait_for(lambda: seen[-1].online)
        dev.stop(timeout=15)  # a loaded machine can take seconds for the final PUBACK; past it, the Will fires
        assert wait_for(lambda: not seen[-1].online)
        assert seen[-1].reason == "shutdown"


def test_tls_with_a_ca_made_here(tmp_path, started):
    tls = make_ca(tmp_path / "pki")
    with Broker(tmp_path, tls=tls, plain=False) as broker:
        good = parse_broker_url(broker.tls_url(), ca=tls.ca_cert)
        got = []
        sub = MqttClient(good, "tls-sub")
        sub.subscribe("s/#", lambda t, p: got.append(p))
        started(sub)
        pub = started(MqttClient(good, "tls-pub"))
        time.sleep(0.2)
        pub.publish("s/1", b"over TLS " + b"x" * 200_000)  # bigger than one TLS record
        assert wait_for(lambda: got and got[0].endswith(b"x" * 1000))
        untrusting = MqttClient(parse_broker_url(broker.tls_url()), "no-ca",
                                session=SessionOptions(min_backoff_s=5))  # system CAs do not know ours
        untrusting.start()
        try:
            assert not untrusting.wait_connected(1.5)
            assert "certificate verify failed" in (untrusting.last_error or ""), untrusting.last_error
        finally:
            untrusting.stop()


def test_file_descriptors_above_1024_work(tmp_path, started):
    """paho's own loop uses select(), which fails on fds >= 1024; ours polls with selectors."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < 1300:
        pytest.skip(f"RLIMIT_NOFILE hard limit {hard} is below 1300")
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, 1300), hard))
    fillers = [os.open(os.devnull, os.O_RDONLY) for _ in range(1100)]
    try:
        with Broker(tmp_path) as broker:
            cfg = parse_broker_url(broker.url())
            got = []
            c = MqttClient(cfg, "high-fd")
            c.subscribe("h/#", lambda t, p: got.append(p))
            started(c)
            assert c._paho.socket().fileno() >= 1024
            c.publish("h/1", b"hello")
            assert wait_for(lambda: got == [b"hello"])
    finally:
        for fd in fillers:
            os.close(fd)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def test_a_client_that_never_connects_stops_quickly_and_says_why():
    cfg = parse_broker_url("mqtt://127.0.0.1:1")  # nothing listens on port 1
    c = MqttClient(cfg, "nobody", session=SessionOptions(min_backoff_s=0.05, max_backoff_s=0.1))
    c.start()
    assert not c.wait_connected(0.5)
    assert "connection refused" in c.last_error
    started = time.monotonic()
    c.stop()
    assert time.monotonic() - started < 2
    assert not c.loop.running


# --- lists of brokers ------------------------------------------------------------------------------


def test_a_broker_list_parses_shares_its_settings_and_rotates():
    cfg = parse_broker_url(["mqtt://a:1883", "mqtt://u:secret@b", "mqtt://[::1]:1999"], protocol="3.1.1")
    assert [(a.host, a.port, a.username) for a in cfg.addresses] == [("a", 1883, None), ("b", 1883, "u"),
                                                                     ("::1", 1999, None)]
    assert cfg.display_url == "mqtt://a:1883,mqtt://u@b:1883,mqtt://[::1]:1999"
    assert "secret" not in repr(cfg) and "secret" not in cfg.display_url
    assert cfg.at(1).password == "secret" and cfg.at(1).protocol == "3.1.1" and not cfg.at(1).more
    assert [a.host for a in cfg.rotated(2).addresses] == ["::1", "a", "b"]
    assert parse_broker_url(["mqtt://a"]) == parse_broker_url("mqtt://a")  # one URL: what it always was
    for bad, message in ((["mqtt://a", "mqtts://b"], "not a mix"), (["mqtt://a", "mqtt://a:1883"], "listed twice"),
                         ([], "no broker"), (["mqtt://a", "http://b"], "expected mqtt://")):
        with pytest.raises(BadInput, match=message):
            parse_broker_url(bad)


def test_broker_args_take_one_or_several_brokers():
    import argparse

    from lepton_edge.commands.mqtt_args import add_broker_args, broker_from_args

    parser = argparse.ArgumentParser()
    add_broker_args(parser)
    one = parser.parse_args(["--broker", "mqtt://a:1"])
    assert one.broker == "mqtt://a:1" and broker_from_args(one).display_url == "mqtt://a:1"
    two = parser.parse_args(["--broker", "mqtt://a:1", "--broker", "mqtt://b:2", "--mqtt-version", "3.1.1"])
    cfg = broker_from_args(two)
    assert two.broker == "mqtt://a:1" and two.brokers == ["mqtt://a:1", "mqtt://b:2"]
    assert cfg.display_url == "mqtt://a:1,mqtt://b:2" and cfg.protocol == "3.1.1"


def test_a_list_skips_a_dead_broker_then_fails_over_keeping_subscriptions_and_the_will(tmp_path, started):
    """The first broker of the list is down: the client connects to the second. That one dies: the client
    goes on to the third with its subscriptions restored and its Last Will set there."""
    fast = SessionOptions(min_backoff_s=0.05, max_backoff_s=0.2)
    with Broker(tmp_path / "b") as b, Broker(tmp_path / "c") as c:
        cfg = parse_broker_url(["mqtt://127.0.0.1:1", b.url(), c.url()])  # nothing listens on port 1
        got: list[bytes] = []
        will = Will("wills/dev", b"gone", qos=1, retain=True)
        client = started(MqttClient(cfg, "dev", will=will, session=fast))
        assert client.broker.port == b.port
        client.subscribe("cmd/#", lambda topic, payload: got.append(payload))
        b.kill()
        assert wait_for(lambda: client.connected and client.broker.port == c.port, 10), client.last_error
        watcher = started(MqttClient(parse_broker_url(c.url()), "watcher"))
        wills: list[bytes] = []
        watcher.subscribe("wills/#", lambda topic, payload: wills.append(payload))
        assert wait_for(lambda: client.stats()["connects"] == 2)
        time.sleep(0.3)  # the restored SUBSCRIBE is on its way
        watcher.publish("cmd/x", b"hello", qos=1)
        assert wait_for(lambda: got == [b"hello"]), got
        client.loop.call_soon(lambda: client._paho.socket().close())  # a dead link, not a clean goodbye
        assert wait_for(lambda: b"gone" in wills, 10)


def test_connack_timeout_moves_on_from_a_broker_that_never_answers(tmp_path, started):
    """A listener that takes the TCP connection but never answers CONNECT (a NATS node whose JetStream lost
    quorum does that): after connack_timeout_s the client tries the next broker."""
    import socket as _socket

    mute = _socket.socket()
    mute.bind(("127.0.0.1", 0))
    mute.listen(4)
    try:
        with Broker(tmp_path) as b:
            cfg = parse_broker_url([f"mqtt://127.0.0.1:{mute.getsockname()[1]}", b.url()])
            client = started(MqttClient(cfg, "patient", session=SessionOptions(
                min_backoff_s=0.05, max_backoff_s=0.2, connack_timeout_s=0.5)))
            assert client.broker.port == b.port
    finally:
        mute.close()


def test_agent_config_takes_a_broker_list_and_the_old_single_broker(tmp_path):
    from lepton_edge.agent.config import load_config

    def config(mqtt: str):
        path = tmp_path / "agent.toml"
        path.write_text('[device]\nid = "d1"\nfleet = "f"\nprofile = "raspberry-pi-4"\n[store]\ndir = "s"\n'
                        f'[security]\nrequire_signature = false\n[mqtt]\n{mqtt}\n')
        return load_config(path)

    old = config('broker = "mqtt://a:1883"').mqtt
    assert old.broker == "mqtt://a:1883" and old.brokers == ("mqtt://a:1883",)
    new = config('brokers = ["mqtt://a:1883", "mqtt://b:1884"]\nprotocol = "3.1.1"').mqtt
    assert new.broker == "mqtt://a:1883" and new.brokers == ("mqtt://a:1883", "mqtt://b:1884")
    assert parse_broker_url(new.brokers, protocol=new.protocol).display_url == "mqtt://a:1883,mqtt://b:1884"
    for bad, message in (('broker = "mqtt://a"\nbrokers = ["mqtt://b"]', "both broker and brokers"),
                         ("brokers = []", "non-empty array"), ('brokers = ["mqtt://a", "http://b"]', "must be URLs"),
                         ('brokers = ["mqtt://a", "mqtts://b"]', "not a mix")):
        with pytest.raises(BadInput, match=message):
            config(bad)
