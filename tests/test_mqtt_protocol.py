"""Topics, payload schemas and broker URLs of lepton_edge.mqtt (no broker needed)."""

from __future__ import annotations

import json

import pytest

from lepton_edge.errors import BadInput
from lepton_edge.mqtt import (
    BLOCK_EXPIRED,
    BLOCK_HEADER,
    Block,
    BlockRequest,
    DeviceTopics,
    ModelInfo,
    OtaJob,
    PayloadError,
    Progress,
    Status,
    Telemetry,
    fleet_filter,
    new_job_id,
    offline_will_payload,
    parse_broker_url,
    parse_topic,
)


def test_topics_of_a_device_and_their_parsing():
    t = DeviceTopics("plant-1", "cam-07")
    assert t.status == "lepton/v1/plant-1/cam-07/status"
    assert t.ota_get == "lepton/v1/plant-1/cam-07/ota/get"
    assert [t.telemetry, t.ota_job, t.ota_data, t.ota_progress] == [
        f"lepton/v1/plant-1/cam-07/{k}" for k in ("telemetry", "ota/job", "ota/data", "ota/progress")]
    assert fleet_filter("plant-1", "ota/progress") == "lepton/v1/plant-1/+/ota/progress"
    parts = parse_topic(t.ota_progress)
    assert (parts.fleet, parts.device, parts.kind) == ("plant-1", "cam-07", "ota/progress")
    for bad in ("lepton/v1/f/d", "lepton/v2/f/d/status", "lepton/v1/f/d/ota/nope", "x/v1/f/d/status"):
        assert parse_topic(bad) is None


@pytest.mark.parametrize("name", ["", "a/b", "a+b", "#", "a b", "-lead", "x" * 65])
def test_names_that_would_break_topics_are_refused(name):
    with pytest.raises(BadInput):
        DeviceTopics("default", name)


def test_broker_urls():
    c = parse_broker_url("mqtt://example.org")
    assert (c.host, c.port, c.tls, c.username, c.password, c.protocol) == ("example.org", 1883, False, None, None, "5")
    c = parse_broker_url("mqtts://dev%2F1:p%40ss:w@10.0.0.5", protocol="3.1.1")
    assert (c.host, c.port, c.tls, c.username, c.password, c.protocol) == (
        "10.0.0.5", 8883, True, "dev/1", "p@ss:w", "3.1.1")
    assert "p@ss" not in repr(c) and "p@ss" not in c.display_url
    assert parse_broker_url("mqtt://[::1]:1999").display_url == "mqtt://[::1]:1999"
    for bad in ("http://host", "mqtt://", "mqtt://host:99999", "mqtt://host/path", "host:1883"):
        with pytest.raises(BadInput) as info:
            parse_broker_url(bad)
        assert "\n" not in str(info.value)
    with pytest.raises(BadInput, match="mqtts"):
        parse_broker_url("mqtt://host", ca=__file__)
    with pytest.raises(BadInput, match="no such file"):
        parse_broker_url("mqtts://host", ca="/nonexistent/ca.pem")
    with pytest.raises(BadInput) as info:
        parse_broker_url("ftp://user:secret@host")
    assert "secret" not in str(info.value)


def test_status_telemetry_progress_round_trip():
    model = ModelInfo("kws", 3, "ab" * 32, "b")
    s = Status.from_bytes(Status(True, model, "agent 0.1", 12.5).to_bytes())
    assert s.online and s.model == model and s.ts == 12.5
    will = Status.from_bytes(offline_will_payload())
    assert not will.online and will.reason == "connection lost"
    t = Telemetry(7, 1.5, {"latency_p99_ms": 3.25, "model_name": "kws", "rss_bytes": 1000})
    back = Telemetry.from_bytes(t.to_bytes())
    assert back == t
    assert json.loads(t.to_bytes())["schema"] == 1
    with pytest.raises(ValueError):
        Telemetry(0, 0.0, {"password": "x"}).to_bytes()  # only the documented fields travel
    p = Progress.from_bytes(Progress("a" * 32, "failed", 10, 20, "sha256 mismatch", model).to_bytes())
    assert (p.state, p.received, p.total, p.reason, p.model) == ("failed", 10, 20, "sha256 mismatch", model)


def test_job_keeps_the_manifest_bytes_exactly():
    manifest = b'{\n  "name": "x",   "version": 1}\n'  # whitespace a re-serialiser would lose
    job = OtaJob(new_job_id(), "dep", manifest, b"\x01" * 64, "cd" * 32, 1000, 65536, 100.0, 50.0)
    back = OtaJob.from_bytes(job.to_bytes())
    assert back.manifest_bytes == manifest and back.signature == b"\x01" * 64 and back == job
    unsigned = OtaJob.from_bytes(OtaJob(job.job, "d", manifest, None, "cd" * 32, 1, 1024, 1.0, 0.0).to_bytes())
    assert unsigned.signature is None


def test_block_header_layout():
    job = new_job_id()
    b = Block(job, bytes.fromhex("0123456789abcdef"), 65536, b"hello")
    raw = b.to_bytes()
    assert len(raw) == BLOCK_HEADER.size + 5 == 45
    assert raw[:2] == b"LB" and raw[2] == 1 and raw[3] == 0 and raw[4:20] == bytes.fromhex(job)
    assert raw[20:28] == bytes.fromhex("0123456789abcdef")
    assert int.from_bytes(raw[28:36], "big") == 65536 and int.from_bytes(raw[36:40], "big") == 5
    assert Block.from_bytes(raw) == b
    refusal = Block.from_bytes(Block(job, b"", 0, b"", BLOCK_EXPIRED).to_bytes())
    assert refusal.status_text == "job expired" and refusal.data == b""
    for bad in (raw[:10], b"XX" + raw[2:], raw + b"extra"):
        with pytest.raises(PayloadError):
            Block.from_bytes(bad)


@pytest.mark.parametrize("payload", [
    b"", b"not json", b"[]", b'{"schema": 2, "job": "x"}',
    b'{"schema": 1, "job": "zz", "offset": 0, "length": 10}',
    b'{"schema": 1, "job": "' + b"a" * 32 + b'", "offset": -1, "length": 10}',
    b'{"schema": 1, "job": "' + b"a" * 32 + b'", "offset": 0, "length": 0}',
    b'{"schema": 1, "job": "' + b"a" * 32 + b'", "offset": 0, "length": 99999999}',
    b'{"schema": 1, "job": "' + b"a" * 32 + b'", "offset": true, "length": 10}',
])
def test_malformed_block_requests_are_refused(payload):
    with pytest.raises(PayloadError):
        BlockRequest.from_bytes(payload)


def test_block_request_round_trip():
    r = BlockRequest(new_job_id(), 131072, 65536)
    assert BlockRequest.from_bytes(r.to_bytes()) == r


def test_topic_matching_agrees_with_paho():
    import paho.mqtt.client as paho

    from lepton_edge.mqtt import topic_matches

    filters = ["#", "+", "a/#", "a/+", "a/+/c", "+/+/c", "a/b/c", "a/b", "+/#", "lepton/v1/f/+/ota/get", "a/b/#",
               "$SYS/#", "+/b"]
    topics = ["a", "a/b", "a/b/c", "a/b/c/d", "x/b/c", "a//c", "/a", "lepton/v1/f/d/ota/get", "lepton/v1/f/d/ota",
              "$SYS/broker", "b"]
    for f in filters:
        for t in topics:
            assert topic_matches(f.split("/"), t.split("/"), t) == paho.topic_matches_sub(f, t), (f, t)
