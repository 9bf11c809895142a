"""No lost records: a record the database refuses costs only itself, never the batch it came in."""

from __future__ import annotations

import time

import paho.mqtt.client as paho

from fleet_helpers import FLEET
from lepton_edge.mqtt import DeviceTopics, ModelInfo, Status, Telemetry

INT64_OVERFLOW = 2**70  # valid JSON and a valid int to the parser; SQLite cannot store it


def _publisher(broker) -> paho.Client:
    client = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id="poison-test")
    client.connect("127.0.0.1", broker.port)
    client.loop_start()
    return client


def test_poison_records_cost_only_themselves(fleet, broker):
    ctl = fleet.controller
    pub = _publisher(broker)
    good_telemetry, poison = 0, 0
    try:
        for i in range(60):
            dev = DeviceTopics(FLEET, f"dev-{i:02d}")
            if i % 10 == 3:   # a telemetry whose seq does not fit in 64 bits
                payload = Telemetry(INT64_OVERFLOW, time.time(), {"inferences": 1}).to_bytes()
                poison += 1
                pub.publish(dev.telemetry, payload, qos=1).wait_for_publish(5)
                continue
            if i % 10 == 7:   # a status whose model version does not fit either
                status = Status(True, ModelInfo("m", INT64_OVERFLOW, "ab" * 32, "a"))
                poison += 1
                pub.publish(dev.status, status.to_bytes(), qos=1).wait_for_publish(5)
                continue
            pub.publish(dev.status, Status(True, ModelInfo("m", 1, "ab" * 32, "a"), tags=("site:x",)).to_bytes(),
                        qos=1).wait_for_publish(5)
            for seq in range(3):
                pub.publish(dev.telemetry, Telemetry(seq, time.time(), {"inferences": seq}).to_bytes(),
                            qos=1).wait_for_publish(5)
                good_telemetry += 1
        deadline = time.monotonic() + 20
        while ctl.counters.write_failures < poison and time.monotonic() < deadline:
            time.sleep(0.05)
        assert ctl.wait_idle(10)
    finally:
        pub.loop_stop()
        pub.disconnect()

    assert ctl.counters.write_failures == poison == 12
    assert ctl.db.telemetry_count() == good_telemetry == 48 * 3
    devices = {d["device"]: d for d in ctl.devices()}
    for i in range(60):
        name = f"dev-{i:02d}"
        if i % 10 == 3:
            assert name not in devices  # its only record was the poison one
        elif i % 10 == 7:
            assert name not in devices
        else:
            assert devices[name]["online"] and devices[name]["model"]["version"] == 1
            assert ctl.db.telemetry_count(name) == 3


def test_a_crowd_of_reconnects_is_one_log_line(caplog):
    from lepton_edge.fleet.controller import PRESENCE_LINES, Controller

    caplog.set_level("INFO", logger="lepton_edge.fleet")
    Controller._log_presence([("a", True, None), ("b", False, "connection lost")], 1)
    assert [r.getMessage() for r in caplog.records] == ["a is online", "b is offline (connection lost)"]
    caplog.clear()
    crowd = [(f"d{i}", i % 4 != 0, None) for i in range(PRESENCE_LINES + 80)]
    Controller._log_presence(crowd, 75)
    assert [r.getMessage() for r in caplog.records] == [
        "75 device(s) came online and 25 went offline; 75 online now"]
