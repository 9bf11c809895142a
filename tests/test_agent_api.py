"""The local HTTP API on real sockets: inference in JSON and raw bytes, status, metrics, bad requests."""

from __future__ import annotations

import json
import socket
import threading
import time

import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

from agent_helpers import connect, request, write_config
from lepton_edge.agent.config import load_config
from lepton_edge.agent.daemon import Agent
from lepton_edge.runtime.base import dequantize, quantize


def start_agent(tmp_path, signing, model, listen="127.0.0.1:0", api_options=""):
    cfg = load_config(write_config(tmp_path / "agent.toml", store=tmp_path / "store", trusted_keys=[signing[1]],
                                   listen=listen, api_options=api_options))
    agent = Agent(cfg)
    agent.start(model)
    return agent


@pytest.fixture
def kws_agent(tmp_path, signing, make_artifact):
    agent = start_agent(tmp_path, signing, make_artifact("kws", 1), api_options="max_body_bytes = 65536")
    yield agent
    agent.stop()


def infer_raw(conn, body: bytes, headers: dict | None = None):
    return request(conn, "POST", "/v1/infer", body, {"Content-Type": "application/octet-stream", **(headers or {})})


def test_raw_bytes_and_json_answer_what_the_runner_answers(kws_agent):
    runner = kws_agent.current().runner
    spec_in, spec_out = runner.inputs[0], runner.outputs[0]
    rng = np.random.default_rng(3)
    x = rng.integers(-128, 128, spec_in.shape, dtype=np.int8)
    expected = runner.run([x])[0]

    conn = connect(kws_agent.url)
    for _ in range(3):  # keep-alive: the same connection serves request after request
        reply = infer_raw(conn, x.tobytes())
        assert reply.status == 200, reply.body
        assert reply.body == expected.tobytes()
        assert reply.headers["x-output-bytes"] == "12" and float(reply.headers["x-latency-ms"]) > 0
        assert reply.headers.get("connection") != "close"

    reply = request(conn, "POST", "/v1/infer", json.dumps({"inputs": x.tolist(), "quantized": True}).encode(),
                    {"Content-Type": "application/json"})
    body = reply.json()
    assert reply.status == 200 and body["outputs"] == [expected.ravel().tolist()]
    assert body["model"] == "kws_ref_model_int8" and body["version"] == 1 and body["latency_ms"] > 0

    floats = dequantize(x, spec_in).ravel().tolist()  # float in, float out: the agent quantizes
    reply = request(conn, "POST", "/v1/infer", json.dumps({"inputs": floats}).encode(),
                    {"Content-Type": "application/json; charset=utf-8"})
    assert reply.status == 200
    np.testing.assert_allclose(reply.json()["outputs"][0], dequantize(expected, spec_out).ravel(), rtol=1e-6)
    assert np.array_equal(quantize(np.array(floats), spec_in), x)
    conn.close()


def test_status_metrics_and_healthz(kws_agent):
    conn = connect(kws_agent.url)
    for _ in range(5):
        assert infer_raw(conn, bytes(490)).status == 200
    status = request(conn, "GET", "/v1/status").json()
    art = kws_agent.current().artifact
    assert status["device"] == {"id": "test-device", "fleet": "test-fleet", "profile": "raspberry-pi-4",
                                "tags": []}
    assert (status["model"]["name"], status["model"]["version"], status["model"]["sha256"]) == \
           (art.name, 1, art.sha256)
    assert status["slot"] == "a" and status["backend"] == "litert" and status["arena_bytes"] is None
    assert status["planned_arena_bytes"] == art.manifest["arena"]["total_bytes"]
    assert status["inferences"] == 5 and status["latency_ms"]["samples"] == 5
    assert 0 < status["latency_ms"]["p50"] <= status["latency_ms"]["p99"]
    assert status["uptime_s"] > 0 and status["store"]["confirmed_version"] == 1

    metrics = request(conn, "GET", "/metrics")
    assert metrics.status == 200 and metrics.headers["content-type"].startswith("text/plain")
    families = {f.name: f for f in text_string_to_metric_families(metrics.body.decode())}
    assert families["lepton_agent_inferences"].samples[0].value == 5
    model_info = families["lepton_agent_model_info"].samples[0]
    assert model_info.labels["sha256"] == art.sha256 and model_info.labels["slot"] == "a"
    assert "process_resident_memory_bytes" in families or "process_resident_memory" in families
    health = request(conn, "GET", "/healthz")
    assert health.status == 200 and health.json()["ok"] is True
    conn.close()


@pytest.mark.parametrize("content_type, body, status, message", [
    ("application/octet-stream", bytes(489), 400,
     "body has 489 bytes; the input tensor(s) int8[1, 49, 10, 1] take 490"),
    ("application/json", b'{"inputs": [1, 2', 400, "not valid JSON"),
    ("application/json", b'[1, 2]', 400, "JSON object with 'inputs'"),
    ("application/json", json.dumps({"inputs": [0.5] * 489}).encode(), 400, "needs 490 values, got 489"),
    ("application/json", json.dumps({"inputs": ["a"] * 490}).encode(), 400, "got strings"),
    ("application/json", json.dumps({"inputs": [[1, 2], [3]]}).encode(), 400, "lists of equal length"),
    ("application/json", json.dumps({"inputs": [300] * 490, "quantized": True}).encode(), 400, "[-128, 127]"),
    ("application/json", json.dumps({"inputs": [0.5] * 490, "quantized": True}).encode(), 400, "must be integers"),
    ("application/json", b'{"inputs": [NaN' + b", 0" * 489 + b"]}", 400, "finite"),
    ("text/plain", b"hello", 415, "use application/json or application/octet-stream"),
])
def test_bad_requests_get_a_json_4xx_and_the_connection_goes_on(kws_agent, content_type, body, status, message):
    conn = connect(kws_agent.url)
    reply = request(conn, "POST", "/v1/infer", body, {"Content-Type": content_type})
    assert reply.status == status and message in reply.json()["error"], reply.body
    assert reply.json()["status"] == status
    assert infer_raw(conn, bytes(490)).status == 200  # same keep-alive connection still works
    conn.close()


def test_wrong_dtype_header_routes_and_limits(kws_agent):
    conn = connect(kws_agent.url)
    reply = infer_raw(conn, bytes(490 * 4), {"X-Input-Dtype": "float32"})
    assert reply.status == 400 and "does not match the model's input dtype(s) int8" in reply.json()["error"]
    assert request(conn, "GET", "/nowhere").status == 404
    assert request(conn, "POST", "/v1/status", b"").status == 405
    conn.close()
    conn = connect(kws_agent.url)
    reply = request(conn, "PUT", "/v1/infer", b"x")
    assert reply.status == 501 and reply.json()["status"] == 501
    conn.close()
    conn = connect(kws_agent.url)
    reply = request(conn, "GET", "/v1/infer")
    assert reply.status == 405 and reply.headers["allow"] == "POST"
    conn.close()

    conn = connect(kws_agent.url)
    reply = infer_raw(conn, bytes(70000))  # max_body_bytes = 65536 in this agent's config
    assert reply.status == 413 and reply.headers["connection"] == "close"
    conn.close()

    raw = socket.create_connection(conn_addr(kws_agent.url))
    raw.sendall(b"POST /v1/infer HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n")
    assert raw.recv(4096).startswith(b"HTTP/1.1 411 ")
    raw.close()
    raw = socket.create_connection(conn_addr(kws_agent.url))
    raw.sendall(b"GARBAGE\r\n\r\n")
    answer = raw.recv(4096)
    assert answer.startswith(b"HTTP/1.1 400 ") and b'"error"' in answer
    raw.close()


def conn_addr(url: str) -> tuple[str, int]:
    host, port = url.split("//", 1)[1].rsplit(":", 1)
    return host, int(port)


def test_many_clients_at_once_with_bad_ones_among_them(kws_agent):
    runner = kws_agent.current().runner
    rng = np.random.default_rng(0)
    inputs = [rng.integers(-128, 128, runner.inputs[0].shape, dtype=np.int8) for _ in range(8)]
    expected = [runner.run([x])[0].tobytes() for x in inputs]
    before = kws_agent.metrics.inference_count
    failures: list[str] = []

    def good_client(i: int) -> None:
        conn = connect(kws_agent.url)
        for k in range(40):
            reply = infer_raw(conn, inputs[(i + k) % 8].tobytes())
            if reply.status != 200 or reply.body != expected[(i + k) % 8]:
                failures.append(f"client {i}: {reply.status} {reply.body[:80]!r}")
        conn.close()

    def bad_client(i: int) -> None:
        for k in range(20):
            if k % 3 == 0:  # vanish in the middle of a body
                s = socket.create_connection(conn_addr(kws_agent.url))
                s.sendall(b"POST /v1/infer HTTP/1.1\r\nContent-Type: application/octet-stream\r\n"
                          b"Content-Length: 490\r\n\r\n" + bytes(100))
                s.close()
            else:
                conn = connect(kws_agent.url)
                reply = request(conn, "POST", "/v1/infer", b"{oops", {"Content-Type": "application/json"})
                if reply.status != 400:
                    failures.append(f"bad client {i}: {reply.status}")
                conn.close()

    threads = [threading.Thread(target=good_client, args=(i,)) for i in range(6)]
    threads += [threading.Thread(target=bad_client, args=(i,)) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not failures, failures[:5]
    assert kws_agent.metrics.inference_count - before == 6 * 40


def test_connection_limit_answers_503_and_frees_up(tmp_path, signing, make_artifact):
    agent = start_agent(tmp_path, signing, make_artifact("kws", 1), api_options="max_connections = 2")
    try:
        first, second = connect(agent.url), connect(agent.url)
        assert request(first, "GET", "/healthz").status == 200
        assert request(second, "GET", "/healthz").status == 200
        third = connect(agent.url)
        reply = request(third, "GET", "/healthz")
        assert reply.status == 503 and "too many connections" in reply.json()["error"]
        third.close()
        first.close()
        for _ in range(50):  # the server notices the closed connection and frees its place
            fourth = connect(agent.url)
            reply = request(fourth, "GET", "/healthz")
            fourth.close()
            if reply.status == 200:
                break
            time.sleep(0.05)
        assert reply.status == 200
        assert request(second, "GET", "/healthz").status == 200
        second.close()
    finally:
        agent.stop()


def test_no_model_yet_answers_503(tmp_path, signing):
    agent = start_agent(tmp_path, signing, None)
    try:
        conn = connect(agent.url)
        reply = request(conn, "POST", "/v1/infer", bytes(490), {"Content-Type": "application/octet-stream"})
        assert reply.status == 503 and reply.json()["error"] == "no model is active"
        assert request(conn, "GET", "/healthz").status == 503
        assert request(conn, "GET", "/v1/status").json()["model"] is None
        conn.close()
    finally:
        agent.stop()


def test_unix_socket_and_a_model_with_two_inputs_and_two_outputs(tmp_path, signing, make_artifact):
    sock = tmp_path / "run" / "agent.sock"
    agent = start_agent(tmp_path, signing, make_artifact("two-io", 1), listen=f"unix:{sock}")
    try:
        assert agent.url == f"unix:{sock}" and sock.is_socket()
        conn = connect(agent.url)
        x = np.array([[1, -2, 3, 127]], np.int8)
        y = np.array([[-5, 7]], np.int8)
        reply = request(conn, "POST", "/v1/infer", x.tobytes() + y.tobytes(),
                        {"Content-Type": "application/octet-stream", "X-Input-Dtype": "int8,int8"})
        assert reply.status == 200 and reply.headers["x-output-bytes"] == "4,2"
        assert reply.body == x.tobytes() + np.array([[-1, 7]], np.int8).tobytes()  # ADD(x,x) at scale 1, RELU(y)

        by_name = {"inputs": {"y": [-1.5, 2.0], "x": [0.5, -1.0, 1.5, 63.5]}}
        reply = request(conn, "POST", "/v1/infer", json.dumps(by_name).encode(), {"Content-Type": "application/json"})
        assert reply.status == 200 and reply.json()["outputs"] == [[1.0, -2.0, 3.0, 127.0], [0.0, 2.0]]
        by_order = {"inputs": [[0.5, -1.0, 1.5, 63.5], [-1.5, 2.0]]}
        reply2 = request(conn, "POST", "/v1/infer", json.dumps(by_order).encode(), {"Content-Type": "application/json"})
        assert reply2.json()["outputs"] == reply.json()["outputs"]
        reply = request(conn, "POST", "/v1/infer", json.dumps({"inputs": [[0.5] * 4]}).encode(),
                        {"Content-Type": "application/json"})
        assert reply.status == 400 and "takes 2 inputs" in reply.json()["error"]
        conn.close()
    finally:
        agent.stop()
    assert not sock.exists()  # removed on stop
