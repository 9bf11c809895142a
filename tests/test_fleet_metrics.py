"""Fleet metrics: GET /metrics from a real controller on a real Mosquitto, the shipped Prometheus
config and alert rules under promtool, and a real Prometheus scraping the controller."""

from __future__ import annotations

import http.client
import json
import secrets
import shutil
import subprocess
import time
import urllib.parse
from collections import Counter
from dataclasses import replace
from pathlib import Path

import paho.mqtt.client as paho
import pytest
from prometheus_client.parser import text_string_to_metric_families

from fleet_helpers import FLEET, make_artifact
from lepton_edge.fleet.http_api import HttpApi, HttpListen
from lepton_edge.fleet.metrics import CONTENT_TYPE, rollout_metrics
from lepton_edge.fleet.rollout import PHASES, RolloutParams, rollout_order
from lepton_edge.mqtt import DeviceTopics, ModelInfo, Status, Telemetry, parse_broker_url
from lepton_edge.tools.devsim import FACTORY_SHA256, FLEET_OPTIONS, SimFleet
from lepton_edge.tools.mosquitto import free_port

REPO = Path(__file__).resolve().parent.parent
EXAMPLES = REPO / "examples" / "prometheus"
PROMETHEUS, PROMTOOL = shutil.which("prometheus"), shutil.which("promtool")
needs_promtool = pytest.mark.skipif(PROMTOOL is None, reason="promtool is not installed (Debian: prometheus)")
needs_prometheus = pytest.mark.skipif(PROMETHEUS is None, reason="prometheus is not installed (Debian: prometheus)")
# A real Prometheus scrapes what /metrics serves, whatever the store (the first test checks /metrics on each).
PROMETHEUS_ONE_STORE = pytest.mark.fleet_stores("sqlite")

SHA_V1 = "ab" * 32
INT64_OVERFLOW = 2**70  # valid JSON; SQLite cannot store it: a record the database refuses


# --- publishing as devices ---------------------------------------------------------------------

class Devices:
    """Publishes status and telemetry for any device id of ``FLEET`` (one paho client, QoS 1)."""

    def __init__(self, broker) -> None:
        self.client = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id=f"metrics-test-{secrets.token_hex(4)}")
        self.client.connect("127.0.0.1", broker.port)
        self.client.loop_start()
        self.sent = {"status": 0, "telemetry": 0}

    def publish(self, topic: str, payload: bytes) -> None:
        self.client.publish(topic, payload, qos=1).wait_for_publish(5)

    def status(self, device: str, online: bool = True, *, profile: str | None = "linux-sbc",
               budget_ms: float | None = 50.0, version: int = 1) -> None:
        model = ModelInfo("kws", version, SHA_V1, "a")
        self.publish(DeviceTopics(FLEET, device).status,
                     Status(online, model, "test", time.time(), tags=("site:berlin",), profile=profile,
                            latency_budget_ms=budget_ms).to_bytes())
        self.sent["status"] += 1

    def telemetry(self, device: str, seq: int = 0, **values) -> None:
        self.publish(DeviceTopics(FLEET, device).telemetry, Telemetry(seq, time.time(), values).to_bytes())
        self.sent["telemetry"] += 1

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


@pytest.fixture
def devices(broker):
    d = Devices(broker)
    yield d
    d.close()


def wait_ingested(controller, messages: int, write_failures: int = 0, timeout: float = 20.0) -> None:
    """Until the controller received ``messages`` and wrote (or refused) every one of them."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if sum(controller.router.messages.values()) >= messages \
                and controller.counters.write_failures >= write_failures:
            break
        time.sleep(0.02)
    assert controller.wait_idle(10)
    assert sum(controller.router.messages.values()) == messages


def scrape(url: str, token: str | None = None) -> tuple[int, str, str]:
    """GET /metrics: (status, content type, body)."""
    conn = http.client.HTTPConnection(url.split("://", 1)[1], timeout=30)
    try:
        conn.request("GET", "/metrics", headers={"Authorization": f"Bearer {token}"} if token else {})
        resp = conn.getresponse()
        return resp.status, resp.getheader("Content-Type") or "", resp.read().decode()
    finally:
        conn.close()


def samples(text: str) -> dict[tuple[str, frozenset], float]:
    """Every sample of a /metrics body by (name, labels), through prometheus_client's own parser."""
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            key = (s.name, frozenset(s.labels.items()))
            assert key not in out, f"duplicate series {key}"
            out[key] = s.value
    return out


def value(found: dict, metric: str, /, **labels) -> float | None:
    return found.get((metric, frozenset(labels.items())))


def dev(device: str, profile: str = "linux-sbc") -> dict[str, str]:
    return {"device": device, "fleet": FLEET, "profile": profile}


# --- /metrics ----------------------------------------------------------------------------------

def test_metrics_show_devices_microcontrollers_and_controller_counters(fleet, devices):
    ctl = fleet.controller
    # A Linux board, a microcontroller behind a gateway, a board that went offline, one that sends
    # garbage in a number field, and one that predates profiles and budgets.
    devices.status("pi-1")
    devices.telemetry("pi-1", 0, inferences=1200, errors=3, latency_p50_ms=4.5, latency_p99_ms=12.25,
                      rss_bytes=48_000_000)
    devices.status("mcu-1", profile="arduino-nano-33-ble", budget_ms=250.0)
    devices.telemetry("mcu-1", 0, inferences=77, errors=0, latency_p50_ms=180.0, latency_p99_ms=201.0,
                      arena_bytes=65536, arena_head_bytes=40000, arena_tail_bytes=9000)
    devices.status("gone-1")
    devices.telemetry("gone-1", 0, inferences=5, latency_p99_ms=3.0)
    devices.status("gone-1", online=False)
    devices.status("odd-1")
    devices.publish(DeviceTopics(FLEET, "odd-1").telemetry,
                    json.dumps({**json.loads(Telemetry(0, time.time(), {"inferences": 9}).to_bytes()),
                                "rss_bytes": "lots", "latency_p99_ms": None}).encode())
    devices.sent["telemetry"] += 1
    devices.status("old-1", profile=None, budget_ms=None)
    # Bad messages (counted, never stored) and a record the database refuses (counted, rest written).
    devices.publish(DeviceTopics(FLEET, "pi-1").telemetry, b"{not json")
    devices.publish(DeviceTopics(FLEET, "pi-1").status, b"")
    devices.telemetry("pi-2", INT64_OVERFLOW, inferences=1)
    wait_ingested(ctl, devices.sent["status"] + devices.sent["telemetry"] + 2, write_failures=1)

    status, ctype, body = scrape(fleet.http.url)
    assert status == 200
    assert ctype == CONTENT_TYPE
    found = samples(body)

    assert value(found, "lepton_device_up", **dev("pi-1")) == 1
    assert value(found, "lepton_device_up", **dev("gone-1")) == 0
    assert value(found, "lepton_device_up", **dev("mcu-1", "arduino-nano-33-ble")) == 1
    assert value(found, "lepton_device_model_info", **dev("pi-1"), name="kws", version="1", sha256=SHA_V1) == 1
    assert value(found, "lepton_device_inferences_total", **dev("pi-1")) == 1200
    assert value(found, "lepton_device_errors_total", **dev("pi-1")) == 3
    assert value(found, "lepton_device_latency_p50_seconds", **dev("pi-1")) == pytest.approx(0.0045)
    assert value(found, "lepton_device_latency_p99_seconds", **dev("pi-1")) == pytest.approx(0.01225)
    assert value(found, "lepton_device_memory_bytes", **dev("pi-1")) == 48_000_000
    assert value(found, "lepton_device_latency_budget_seconds", **dev("pi-1")) == pytest.approx(0.05)
    last_seen = value(found, "lepton_device_last_seen_seconds", **dev("pi-1"))
    assert last_seen is not None and abs(time.time() - last_seen) < 600

    mcu = dev("mcu-1", "arduino-nano-33-ble")
    assert value(found, "lepton_device_arena_bytes", **mcu) == 65536
    assert value(found, "lepton_device_arena_used_bytes", **mcu, part="head") == 40000
    assert value(found, "lepton_device_arena_used_bytes", **mcu, part="tail") == 9000
    assert value(found, "lepton_device_latency_budget_seconds", **mcu) == pytest.approx(0.25)
    assert value(found, "lepton_device_arena_used_bytes", **dev("pi-1"), part="head") is None

    # Offline: up, last seen and model stay; its last telemetry figures are not exported as current.
    assert value(found, "lepton_device_model_info", **dev("gone-1"), name="kws", version="1", sha256=SHA_V1) == 1
    assert value(found, "lepton_device_inferences_total", **dev("gone-1")) is None
    assert value(found, "lepton_device_latency_p99_seconds", **dev("gone-1")) is None
    # Garbage in a number field reads as absent; the good field of the same payload is there.
    assert value(found, "lepton_device_inferences_total", **dev("odd-1")) == 9
    assert value(found, "lepton_device_memory_bytes", **dev("odd-1")) is None
    assert value(found, "lepton_device_latency_p99_seconds", **dev("odd-1")) is None
    # No profile, no budget: an empty profile label (Prometheus: absent) and no budget series.
    assert value(found, "lepton_device_up", **dev("old-1", "")) == 1
    assert value(found, "lepton_device_latency_budget_seconds", **dev("old-1", "")) is None

    assert value(found, "lepton_messages_ingested_total", kind="status") == devices.sent["status"] + 1
    assert value(found, "lepton_messages_ingested_total", kind="telemetry") == devices.sent["telemetry"] + 1
    assert value(found, "lepton_messages_rejected_total", reason="payload") == 1
    assert value(found, "lepton_messages_rejected_total", reason="empty") == 1
    assert value(found, "lepton_messages_rejected_total", reason="topic") == 0
    assert value(found, "lepton_records_write_failed_total") == 1
    assert value(found, "lepton_telemetry_rows_written_total") == devices.sent["telemetry"] - 1
    assert value(found, "lepton_ota_bytes_served_total") == 0
    assert value(found, "lepton_broker_connected") == 1
    assert value(found, "lepton_scrape_duration_seconds") > 0
    # pi-2's only record was refused: the controller does not know it.
    assert not [k for k in found if ("device", "pi-2") in k[1]]


@pytest.mark.fleet_stores("sqlite")  # the HTTP API's token check: no store in it
def test_metrics_need_the_token_when_the_api_has_one(token_api):
    api, token = token_api
    assert scrape(api.url)[0] == 401
    assert scrape(api.url, "wrong-" + token)[0] == 401
    status, _, body = scrape(api.url, token)
    assert status == 200 and "lepton_broker_connected 1.0" in body


ROLLOUT = {  # the rollout JSON of docs/ROLLOUTS.md, as controller.rollout(id) returns it
    "rollout": "0123456789abcdef", "artifact": "ff" * 32, "name": "kws", "version": 2, "model_sha256": "cd" * 32,
    "state": "aborting", "created": 1000.0, "updated": 1060.0, "params": {},
    "abort": {"criterion": "max-failures", "value": 50.0, "limit": 20.0, "text": "5 of 10 failed"},
    "waves": [{"wave": 0, "canary": True, "devices": 10, "released_at": 1001.0, "states": {"healthy": 5}}],
    "summary": {"selected": 12, "released": 10, "healthy": 0, "failed": 5, "rolled_back": 0, "in_progress": 0,
                "waiting": 2, "reverted": 3, "confirmed": 0},
    "devices": [{"device": f"d{i}", "wave": 0 if i < 10 else None, "job": None, "state": None, "reason": None,
                 "previous": None,
                 "phase": "failed" if i < 5 else "reverted" if i < 8 else "reverting" if i < 10 else "waiting"}
                for i in range(12)],
}


def test_rollout_metrics_count_devices_per_phase_and_make_an_abort_visible():
    completed = {**ROLLOUT, "rollout": "fedcba9876543210", "version": 3, "state": "completed", "abort": None,
                 "devices": [{"device": "d0", "phase": "confirmed"}, {"device": "d1", "phase": "newphase"}]}
    found = {}
    for family in rollout_metrics([ROLLOUT, completed]):
        for s in family.samples:
            found[(s.name, frozenset(s.labels.items()))] = s.value
    r1 = {"rollout": "0123456789abcdef", "name": "kws", "version": "2"}
    r2 = {"rollout": "fedcba9876543210", "name": "kws", "version": "3"}
    assert value(found, "lepton_rollout_devices", **r1, phase="failed") == 5
    assert value(found, "lepton_rollout_devices", **r1, phase="reverted") == 3
    assert value(found, "lepton_rollout_devices", **r1, phase="reverting") == 2
    assert value(found, "lepton_rollout_devices", **r1, phase="waiting") == 2
    assert value(found, "lepton_rollout_devices", **r1, phase="healthy") == 0   # every phase, 0 when none
    assert value(found, "lepton_rollout_devices", **r2, phase="newphase") == 1  # one this code does not know
    assert value(found, "lepton_rollout_state", **r1, state="aborting") == 1
    assert value(found, "lepton_rollout_state", **r1, state="rolling") == 0
    assert value(found, "lepton_rollout_state", **r2, state="completed") == 1
    assert value(found, "lepton_rollout_state", **r2, state="aborting") == 0
    assert value(found, "lepton_rollout_updated_seconds", **r1) == 1060.0
    assert value(found, "lepton_rollout_abort_info", **r1, criterion="max-failures") == 1
    assert not [k for k in found if k[0] == "lepton_rollout_abort_info" and ("rollout", r2["rollout"]) in k[1]]


# --- promtool ----------------------------------------------------------------------------------

def promtool(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([PROMTOOL, *args], cwd=cwd, capture_output=True, text=True, timeout=60)


@needs_promtool
def test_shipped_config_and_rules_pass_promtool(tmp_path):
    work = tmp_path / "prometheus"
    shutil.copytree(EXAMPLES, work)
    missing = promtool("check", "config", "prometheus.yml", cwd=work)
    assert missing.returncode != 0 and "lepton-fleet.token" in missing.stdout + missing.stderr
    (work / "lepton-fleet.token").write_text(secrets.token_urlsafe(24) + "\n")  # what the README says to do
    for args in (("check", "config", "prometheus.yml"), ("check", "rules", "alerts.yml"),
                 ("test", "rules", "alerts_test.yml")):
        proc = promtool(*args, cwd=work)
        assert proc.returncode == 0, (args, proc.stdout, proc.stderr)
    assert "SUCCESS: 5 rules found" in promtool("check", "rules", "alerts.yml", cwd=work).stdout


@needs_promtool
def test_alert_tests_fail_when_an_alert_is_wrong(tmp_path):
    """The unit tests can fail: with the error-rate threshold at 20 % the 10 % device no longer fires."""
    work = tmp_path / "prometheus"
    shutil.copytree(EXAMPLES, work)
    rules = (work / "alerts.yml").read_text()
    assert rules.count("> 0.05") == 1
    (work / "alerts.yml").write_text(rules.replace("> 0.05", "> 0.2"))
    proc = promtool("test", "rules", "alerts_test.yml", cwd=work)
    assert proc.returncode != 0 and "LeptonDeviceErrorRate" in proc.stdout + proc.stderr


# --- a real Prometheus -------------------------------------------------------------------------

class Prometheus:
    """``prometheus`` on a free loopback port with its own storage, stopped by :meth:`stop`."""

    def __init__(self, config: Path, data: Path) -> None:
        self.port = free_port()
        self.log = open(data.parent / "prometheus.log", "w")  # closed in stop()
        self.proc = subprocess.Popen([PROMETHEUS, f"--config.file={config}", f"--storage.tsdb.path={data}",
                                      f"--web.listen-address=127.0.0.1:{self.port}"],
                                     stdout=self.log, stderr=subprocess.STDOUT)

    def api(self, path: str, **query: str) -> dict:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        try:
            conn.request("GET", f"/api/v1/{path}?{urllib.parse.urlencode(query)}")
            body = json.loads(conn.getresponse().read())
        finally:
            conn.close()
        assert body["status"] == "success", body
        return body["data"]

    def query(self, promql: str) -> dict[str, float]:
        """Instant query: {device or job label: value}."""
        data = self.api("query", query=promql)
        return {r["metric"].get("device") or r["metric"].get("job", ""): float(r["value"][1])
                for r in data["result"]}

    def wait_for(self, what, timeout: float = 60.0):
        """Poll ``what()`` until it returns something true (Prometheus starts, scrapes every second)."""
        deadline = time.monotonic() + timeout
        last: object = None
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, Path(self.log.name).read_text()[-2000:]
            try:
                last = what()
            except (OSError, http.client.HTTPException, json.JSONDecodeError) as exc:
                last = exc
            else:
                if last:
                    return last
            time.sleep(0.25)
        raise AssertionError(f"still {last!r} after {timeout} s")

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
        self.log.close()


def shipped_config(work: Path, target: str, token: str) -> Path:
    """examples/prometheus copied to ``work`` with the token file the README asks for, scraping and
    evaluating every second, pointed at ``target``; plus a job for the same target without the token."""
    shutil.copytree(EXAMPLES, work)
    (work / "lepton-fleet.token").write_text(token + "\n")
    config = (work / "prometheus.yml").read_text()
    for old, new in (("scrape_interval: 15s", "scrape_interval: 1s"),
                     ("evaluation_interval: 15s", "evaluation_interval: 1s"), ("127.0.0.1:8788", target)):
        assert config.count(old) == 1, old
        config = config.replace(old, new)
    config += f"  - job_name: lepton-fleet-no-token\n    static_configs:\n      - targets: [\"{target}\"]\n"
    (work / "prometheus.yml").write_text(config)
    return work / "prometheus.yml"


@pytest.fixture
def token_api(fleet):
    """The fleet's controller behind a second HTTP API that wants a bearer token: (api, token)."""
    token = secrets.token_urlsafe(24)
    api = HttpApi(fleet.controller, HttpListen("127.0.0.1", 0), token)
    api.start()
    yield api, token
    api.stop()


@needs_prometheus
@PROMETHEUS_ONE_STORE
def test_prometheus_scrapes_the_controller_and_answers_about_a_device(fleet, token_api, devices, tmp_path):
    """The shipped prometheus.yml and alerts.yml, pointed at a controller whose API wants a token."""
    api, token = token_api
    config = shipped_config(tmp_path / "prometheus", api.url.split("://", 1)[1], token)

    devices.status("sim-00001", budget_ms=20.0)
    devices.telemetry("sim-00001", 0, inferences=4321, errors=7, latency_p50_ms=5.0, latency_p99_ms=37.5)
    devices.status("sim-00002", budget_ms=20.0)
    devices.telemetry("sim-00002", 0, inferences=100, errors=0, latency_p50_ms=5.0, latency_p99_ms=9.0)
    wait_ingested(fleet.controller, 4)

    prom = Prometheus(config, tmp_path / "tsdb")
    try:
        def both_scraped() -> dict[str, float] | None:
            found = prom.query("up")
            return found if len(found) == 2 else None
        assert prom.wait_for(both_scraped) == {"lepton-fleet": 1.0, "lepton-fleet-no-token": 0.0}
        assert prom.query('up{job="lepton-fleet"} == 1') == {"lepton-fleet": 1.0}

        p99 = prom.query('lepton_device_latency_p99_seconds{job="lepton-fleet"}')
        assert p99 == {"sim-00001": pytest.approx(0.0375), "sim-00002": pytest.approx(0.009)}
        assert prom.query('lepton_device_inferences_total{device="sim-00001"}') == {"sim-00001": 4321.0}
        assert prom.query('lepton_device_model_info{device="sim-00001", version="1"}') == {"sim-00001": 1.0}
        over = prom.query("lepton_device_latency_p99_seconds > lepton_device_latency_budget_seconds")
        assert over == {"sim-00001": pytest.approx(0.0375)}

        # The shipped rules are loaded and evaluated: sim-00001's p99 is over its budget, so its alert
        # is pending (for: 5m); sim-00002's is not.
        groups = prom.api("rules")["groups"]
        assert {r["name"] for g in groups for r in g["rules"]} >= {
            "LeptonDeviceOffline", "LeptonDeviceErrorRate", "LeptonDeviceLatencyOverBudget", "LeptonRolloutAborted"}
        assert all(r["health"] != "err" for g in groups for r in g["rules"]), groups

        def pending() -> list[dict]:
            return [a for a in prom.api("alerts")["alerts"] if a["labels"]["alertname"] ==
                    "LeptonDeviceLatencyOverBudget"]
        alerts = prom.wait_for(pending)
        assert [(a["labels"]["device"], a["state"]) for a in alerts] == [("sim-00001", "pending")]
    finally:
        prom.stop()


# --- a real rollout ----------------------------------------------------------------------------

@pytest.fixture
def sim_fleet(fleet, broker):
    """Six simulated devices of the fleet (devices 0 to 2 fail their updates' health check)."""
    sims = SimFleet(parse_broker_url(broker.url()), 6, fail={0, 1, 2},
                    options=replace(FLEET_OPTIONS, fleet=FLEET, telemetry_interval_s=0.2))
    sims.start()
    try:
        assert sims.wait_connected(10)
        deadline = time.monotonic() + 10
        while {d["device"] for d in fleet.controller.devices()} < set(sims.ids) and time.monotonic() < deadline:
            time.sleep(0.05)
        yield sims
    finally:
        sims.stop()


@needs_prometheus
@PROMETHEUS_ONE_STORE
def test_an_aborted_rollout_shows_in_metrics_and_fires_its_alert(fleet, token_api, sim_fleet, tmp_path):
    ctl = fleet.controller
    failing = {sim_fleet.devices[i].id for i in range(3)}
    assert 0 < len(failing & set(rollout_order(sim_fleet.ids)[:4])) < 4, "the canary needs failing and good devices"
    art = make_artifact(tmp_path / "v2", version=2, size=20_000, seed=2)
    artifact = ctl.upload_artifact((art / "manifest.json").read_bytes(), None,
                                   (art / "model.tflite").read_bytes())["artifact"]
    rollout = ctl.create_rollout(artifact, sim_fleet.ids, RolloutParams(canary=4, soak_s=60, max_failures_pct=20))
    rid = rollout["rollout"]
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        done = ctl.rollout(rid)
        if done["state"] == "aborted" and not done["active"]:
            break
        time.sleep(0.1)
    assert done["state"] == "aborted", done
    assert ctl.wait_idle(10)

    found = samples(scrape(fleet.http.url)[2])
    labels = {"rollout": rid, "name": "sim-model", "version": "2"}
    phases = Counter(d["phase"] for d in done["devices"])
    assert phases["skipped"] == 2 and sum(phases.values()) == 6
    for phase in (*PHASES, *phases):
        assert value(found, "lepton_rollout_devices", **labels, phase=phase) == phases.get(phase, 0), phase
    assert value(found, "lepton_rollout_state", **labels, state="aborted") == 1
    assert value(found, "lepton_rollout_state", **labels, state="canary") == 0
    assert value(found, "lepton_rollout_abort_info", **labels, criterion="max-failures") == 1
    # Every canary device downloaded the whole model (the failing ones fail after it, at their health check).
    assert value(found, "lepton_ota_bytes_served_total") >= 4 * 20_000
    assert value(found, "lepton_ota_bytes_served_total") == ctl.counters.bytes_served
    for device in sim_fleet.devices:  # all back on the factory model, as their status says
        assert value(found, "lepton_device_model_info", **dev(device.id, device.options.profile), name="sim-model",
                     version="1", sha256=FACTORY_SHA256) == 1
        assert value(found, "lepton_device_up", **dev(device.id, device.options.profile)) == 1

    api, token = token_api
    prom = Prometheus(shipped_config(tmp_path / "prometheus", api.url.split("://", 1)[1], token), tmp_path / "tsdb")
    try:
        def aborted() -> list[dict]:
            return [a for a in prom.api("alerts")["alerts"]
                    if a["labels"]["alertname"] == "LeptonRolloutAborted" and a["state"] == "firing"]
        alerts = prom.wait_for(aborted)
        assert [(a["labels"]["rollout"], a["labels"]["state"]) for a in alerts] == [(rid, "aborted")]
        assert prom.query(f'lepton_rollout_devices{{rollout="{rid}", phase="skipped"}}') == {"lepton-fleet": 2.0}
    finally:
        prom.stop()
