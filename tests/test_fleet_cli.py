"""The fleet commands as a user runs them: `fleet serve`, `deploy`, `fleet watch`; the HTTP API's edges."""

from __future__ import annotations

import http.client
import json
import os
import re
import signal
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import REPO, assert_one_line_error, run_cli, run_on_a_terminal
from fleet_helpers import api, keypair, make_artifact, upload_body
from lepton_edge.mqtt import SessionOptions, parse_broker_url
from lepton_edge.tools.devsim import SimDevice, SimOptions
from mosquitto import Broker, free_port

FAST = SessionOptions(min_backoff_s=0.1, max_backoff_s=1.0)


class Serve:
    """`lepton-edge fleet serve` in a subprocess; ``url`` is its HTTP API."""

    def __init__(self, broker: Broker, store: Path, *extra: str) -> None:
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        self.proc = subprocess.Popen([sys.executable, "-m", "lepton_edge", "fleet", "serve", "--broker", broker.url(),
                                      "--store", str(store), *extra], cwd=REPO, env=env, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True)
        line = self.proc.stdout.readline()
        m = re.search(r"http://[^ ]+", line)
        assert m, line + self.proc.stderr.read()
        self.url = m.group(0).replace("0.0.0.0", "127.0.0.1")
        self.line = line

    def stop(self) -> tuple[int, str]:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            rc = self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            rc = self.proc.wait(5)
        err = self.proc.stderr.read()
        self.proc.stdout.close()
        self.proc.stderr.close()
        return rc, err


@pytest.fixture
def serve(broker, tmp_path, fleet_db):
    """`fleet serve` on each store (conftest's fleet_db), its HTTP API on a free loopback port."""
    s = Serve(broker, tmp_path / "store", "--http", "127.0.0.1:0", *(["--db", fleet_db] if fleet_db else []))
    yield s
    s.stop()


@pytest.fixture
def devices(broker):
    made = []

    def make(device_id: str, **options) -> SimDevice:
        dev = SimDevice(device_id, parse_broker_url(broker.url()), SimOptions(session=FAST, **options))
        dev.start()
        assert dev.client.wait_connected(5)
        made.append(dev)
        return dev
    yield make
    for d in made:
        d.stop()


def wait_online(url: str, *device_ids: str, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        _status, body = api(url, "GET", "/v1/devices")
        if {d["device"] for d in body["devices"] if d["online"]} >= set(device_ids):
            return
        time.sleep(0.05)
    raise AssertionError(f"{device_ids} not online: {body}")


def test_deploy_wait_exits_0_when_every_device_is_healthy(serve, devices, tmp_path):
    devices("cli-1"), devices("cli-2")
    wait_online(serve.url, "cli-1", "cli-2")
    art = make_artifact(tmp_path / "art", size=200_000)
    proc = run_cli("deploy", art, "--controller", serve.url, "--device", "cli-1", "--device", "cli-2",
                   "--wait", "--timeout", "20", "--json", timeout=60)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert result["ok"] is True and result["version"] == 1 and result["timed_out"] == []
    assert [d["state"] for d in result["devices"]] == ["healthy", "healthy"]
    human = run_cli("deploy", art, "--controller", serve.url, "--device", "cli-1", "--wait", "--timeout", "20")
    assert human.returncode == 0 and "healthy" in human.stdout and human.stderr == ""  # already runs it


def test_deploy_exits_1_with_one_line_naming_what_failed(serve, devices, tmp_path):
    devices("small", max_model_bytes=1000)
    wait_online(serve.url, "small")
    art = make_artifact(tmp_path / "art", size=5000)
    proc = run_cli("deploy", art, "--controller", serve.url, "--device", "small", "--device", "absent",
                   "--wait", "--timeout", "2", timeout=60)
    warning, line = proc.stderr.splitlines()  # "absent" was never seen: a warning, then the one-line error
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert warning == "warning: device absent has never been seen by the controller; its job waits for it"
    assert "2 of 2" in line and "small failed" in line and "does not fit" in line
    assert "absent timed out (pending 0%, offline)" in line
    assert "small" in proc.stdout and "absent" in proc.stdout  # the table still shows every device


def test_deploy_without_wait_only_creates_the_deployment(serve, tmp_path):
    art = make_artifact(tmp_path / "art", size=5000)
    proc = run_cli("deploy", art, "--controller", serve.url, "--device", "later", "--json")
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert result["ok"] is None and result["devices"][0]["state"] == "pending"
    status, dep = api(serve.url, "GET", f"/v1/deployments/{result['deployment']}")
    assert status == 200 and dep["devices"][0]["device"] == "later"


def test_deploy_gives_up_on_an_unreachable_controller_in_bounded_time(tmp_path):
    art = make_artifact(tmp_path / "art", size=5000)
    started = time.monotonic()
    proc = run_cli("deploy", art, "--controller", f"http://127.0.0.1:{free_port()}", "--device", "x",
                   "--connect-timeout", "1")
    line = assert_one_line_error(proc, 1)
    assert "cannot reach the controller" in line and "connection refused" in line
    assert time.monotonic() - started < 10


@pytest.mark.parametrize("case", ["missing dir", "tampered model", "bad device id", "bad controller url"])
def test_deploy_bad_input_exits_2(case, tmp_path):
    art = make_artifact(tmp_path / "art", size=5000)
    args = [art, "--controller", "http://127.0.0.1:9", "--device", "ok"]
    if case == "missing dir":
        args[0] = tmp_path / "nope"
    elif case == "tampered model":
        (art / "model.tflite").write_bytes(b"x" * 5000)
    elif case == "bad device id":
        args[-1] = "a/b"
    else:
        args[2] = "ftp://somewhere"
    line = assert_one_line_error(run_cli("deploy", *args), 2)
    assert line.startswith("lepton-edge deploy: error:")


@pytest.mark.fleet_stores("sqlite")  # what the terminal shows; the deployment itself is the test above's
def test_deploy_draws_a_progress_bar_per_device_on_a_terminal(serve, devices, tmp_path):
    devices("tty-1"), devices("tty-2")
    wait_online(serve.url, "tty-1", "tty-2")
    art = make_artifact(tmp_path / "art", size=300_000)
    code, out, text = run_on_a_terminal("deploy", str(art), "--controller", serve.url, "--device", "tty-1",
                                        "--device", "tty-2", "--wait", "--timeout", "20", timeout=60)
    assert code == 0, text
    assert "tty-1 [" in text and "tty-2 [" in text and "100.0% healthy" in text
    assert "\x1b[2F" in text  # redrawn in place, two lines up
    assert "healthy" in out


def test_watch_once_shows_devices_and_their_telemetry(broker, devices):
    devices("w-1", telemetry_interval_s=0.2, factory_model=True)  # latency only while serving a model
    devices("w-2", telemetry_interval_s=0.2).stop()
    proc = run_cli("fleet", "watch", "--broker", broker.url(), "--once", "--json", "--wait", "1")
    assert proc.returncode == 0, proc.stderr
    view = {d["device"]: d for d in json.loads(proc.stdout)["devices"]}
    assert view["w-1"]["online"] is True and view["w-2"]["online"] is False
    assert view["w-1"]["telemetry"]["latency_p50_ms"] > 0 and view["w-1"]["telemetry"]["rss_bytes"] > 0
    table = run_cli("fleet", "watch", "--broker", broker.url(), "--once", "--wait", "0.6")
    assert table.returncode == 0
    assert "p50 ms" in table.stdout and "inf/s" in table.stdout and "last seen" in table.stdout
    assert re.search(r"w-1\s+yes", table.stdout) and re.search(r"w-2\s+no", table.stdout)


def test_watch_once_fails_in_bounded_time_without_a_broker():
    started = time.monotonic()
    proc = run_cli("fleet", "watch", "--broker", f"mqtt://127.0.0.1:{free_port()}", "--once", "--connect-timeout", "1")
    line = assert_one_line_error(proc, 1)
    assert "connection refused" in line and time.monotonic() - started < 10


def test_serve_rejects_bad_input_in_one_line(tmp_path):
    line = assert_one_line_error(run_cli("fleet", "serve", "--broker", "http://x", "--store", tmp_path / "s"), 2)
    assert "broker URL" in line
    line = assert_one_line_error(run_cli("fleet", "serve", "--broker", "mqtt://h", "--store", tmp_path / "s",
                                         "--http", "nonsense"), 2)
    assert "HOST:PORT" in line


def test_serve_carries_on_through_a_broker_outage(broker, tmp_path):
    s = Serve(broker, tmp_path / "store", "--http", "127.0.0.1:0")
    try:
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and not api(s.url, "GET", "/v1/health")[1]["broker_connected"]:
            time.sleep(0.05)
        broker.stop()
        time.sleep(2.5)
        status, health = api(s.url, "GET", "/v1/health")
        assert status == 200 and health["broker_connected"] is False
        broker.start()
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and not api(s.url, "GET", "/v1/health")[1]["broker_connected"]:
            time.sleep(0.1)
        assert api(s.url, "GET", "/v1/health")[1]["broker_connected"] is True
    finally:
        rc, err = s.stop()
    assert rc == 0
    assert "lost the broker" in err and "retrying" in err and "Traceback" not in err


def test_a_token_is_required_off_loopback(broker, tmp_path, devices):
    store = tmp_path / "store"
    s = Serve(broker, store, "--http", "0.0.0.0:0")
    try:
        token_file = store / "api.token"
        assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
        token = token_file.read_text().strip()
        assert len(token) >= 32 and token not in s.line
        assert api(s.url, "GET", "/v1/health")[0] == 200
        assert api(s.url, "GET", "/v1/devices")[0] == 401
        assert api(s.url, "GET", "/v1/devices", token="wrong-token-xxxxxxxx")[0] == 401
        assert api(s.url, "GET", "/v1/devices", token=token)[0] == 200
        art = make_artifact(tmp_path / "art", size=3000)
        line = assert_one_line_error(run_cli("deploy", art, "--controller", s.url, "--device", "t"), 2)
        assert "token" in line
        devices("tok-1")
        proc = run_cli("deploy", art, "--controller", s.url, "--device", "tok-1", "--token-file", token_file,
                       "--wait", "--timeout", "20")
        assert proc.returncode == 0, proc.stderr
    finally:
        s.stop()


def test_a_token_file_makes_the_token_required_on_loopback_too(broker, tmp_path):
    tf = tmp_path / "token"
    tf.write_text("a-long-enough-secret-token\n")
    s = Serve(broker, tmp_path / "store", "--http", "127.0.0.1:0", "--token-file", str(tf))
    try:
        assert api(s.url, "GET", "/v1/devices")[0] == 401
        assert api(s.url, "GET", "/v1/devices", token="a-long-enough-secret-token")[0] == 200
    finally:
        s.stop()


def test_http_api_answers_errors_as_json(serve, tmp_path):
    host, port = serve.url.split("://")[1].split(":")
    assert api(serve.url, "GET", "/v1/nope") == (404, {"error": "no such endpoint: GET /v1/nope"})
    assert api(serve.url, "DELETE", "/v1/devices")[0] == 405
    assert api(serve.url, "GET", "/v1/deployments/0123abcd")[0] == 404
    status, body = api(serve.url, "POST", "/v1/deployments", {"artifact": "ab" * 32, "devices": ["x"]})
    assert status == 404 and "not uploaded" in body["error"]
    assert api(serve.url, "POST", "/v1/deployments", {"artifact": "ab" * 32, "devices": "x"})[0] == 400
    body = upload_body(make_artifact(tmp_path / "art", size=1000))
    body["model_b64"] = body["model_b64"][:-8] + "AAAAAAA="
    status, err = api(serve.url, "POST", "/v1/artifacts", body)
    assert status == 400 and ("sha256" in err["error"] or "size" in err["error"])
    conn = http.client.HTTPConnection(host, int(port), timeout=5)
    conn.request("POST", "/v1/artifacts", body=b"{not json", headers={"Content-Type": "application/json"})
    resp = conn.getresponse()
    assert resp.status == 400 and "JSON" in json.loads(resp.read())["error"]
    # keep-alive: the same connection answers again
    conn.request("GET", "/v1/health")
    assert conn.getresponse().status == 200
    conn.close()
    with socket.create_connection((host, int(port)), timeout=5) as raw:
        raw.sendall(b"POST /v1/artifacts HTTP/1.1\r\nHost: x\r\nContent-Length: 999999999999\r\n\r\n")
        assert b" 413 " in raw.recv(4096).split(b"\r\n")[0]


def test_upload_requires_a_trusted_signature_when_the_controller_has_keys(broker, tmp_path):
    priv, _pub, pub_path = keypair(tmp_path / "keys")
    s = Serve(broker, tmp_path / "store", "--http", "127.0.0.1:0", "--trusted-key", str(pub_path))
    try:
        signed = make_artifact(tmp_path / "signed", size=1000, private_key=priv)
        unsigned = make_artifact(tmp_path / "unsigned", size=1000)
        assert api(s.url, "POST", "/v1/artifacts", upload_body(signed))[0] == 201
        status, body = api(s.url, "POST", "/v1/artifacts", upload_body(unsigned))
        assert status == 400 and "unsigned" in body["error"]
    finally:
        s.stop()


def test_watch_counts_bad_payloads_as_the_controller_does():
    from lepton_edge.fleet.watch import FleetView
    from lepton_edge.mqtt import STATUS, TELEMETRY, Status

    view = FleetView("default")
    view.router.handler(STATUS)("lepton/v1/default/w-1/status", b"not json")
    view.router.handler(TELEMETRY)("lepton/v1/default/w-1/telemetry", b'{"schema": 1}')  # no seq
    view.router.handler(STATUS)("lepton/v1/default/w-1/status", b"")  # a cleared retained status: not bad
    assert view.bad_payloads == 2 and view.snapshot() == []
    view.router.handler(STATUS)("lepton/v1/default/w-1/status", Status(True).to_bytes())
    assert [d["online"] for d in view.snapshot()] == [True] and view.router.messages[STATUS] == 3
