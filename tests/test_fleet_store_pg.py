"""The fleet on PostgreSQL: ``fleet serve --db postgresql://...`` and its errors, the password from the URL or
PGPASSWORD, migrations run once however many processes open the database at the same time, and the
behaviours the SQLite tests show, end to end (a real Mosquitto, simulated devices): a deployment, a staged
rollout that aborts in its canary and reverts, and poison records that cost only themselves.
"""

from __future__ import annotations

import re
import signal
import sqlite3
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import urlsplit

import paho.mqtt.client as paho
import psycopg
import pytest

from conftest import REPO, assert_one_line_error, run_cli
from fleet_helpers import FLEET, api, make_artifact, wait_for
from lepton_edge.errors import BadInput
from lepton_edge.fleet.controller import Controller, ControllerOptions
from lepton_edge.fleet.rollout import RolloutParams, canary_size, rollout_order
from lepton_edge.fleet.sql import lost_a_race
from lepton_edge.fleet.store import MIGRATIONS, FleetDB, TelemetryRecord
from lepton_edge.mqtt import DeviceTopics, ModelInfo, SessionOptions, Status, Telemetry, parse_broker_url
from lepton_edge.tools.devsim import FACTORY_SHA256, SimFleet, device_id, plan_fleet

FAST = SessionOptions(clean_start=False, session_expiry_s=600, max_inflight=200, min_backoff_s=0.1,
                      max_backoff_s=1.0)


def test_serve_refuses_a_database_it_cannot_use_in_one_line(tmp_path, pg_server):
    closed_port = pg_server.port + 1 if pg_server.port < 65535 else pg_server.port - 1
    password = pg_server.password
    cases = [
        (f"postgresql://postgres:{password}@127.0.0.1:{closed_port}/x", "cannot connect to PostgreSQL"),
        (pg_server.url("postgres", password="not-the-password"), "password authentication failed"),
        (pg_server.url("postgres") + "?no_such_option=1", "not a usable PostgreSQL URL"),
        ("mysql://db.example/fleet", "a file path, sqlite:///path or postgresql://"),
    ]
    for db, expected in cases:
        proc = run_cli("fleet", "serve", "--broker", "mqtt://127.0.0.1:1", "--store", tmp_path / "store",
                       "--db", db, "--http", "127.0.0.1:0", timeout=60)
        line = assert_one_line_error(proc, 2)
        assert expected in line, line
        assert password not in line and "not-the-password" not in line  # the URL is shown without it


def test_serve_runs_on_postgresql_and_shows_the_url_without_its_password(tmp_path, broker, pg_url):
    proc = subprocess.Popen(
        [sys.executable, "-m", "lepton_edge", "fleet", "serve", "--broker", broker.url(), "--store",
         str(tmp_path / "store"), "--db", pg_url, "--http", "127.0.0.1:0"],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        m = re.search(r"(http://127\.0\.0\.1:\d+)", line)
        assert m, (line, proc.stderr.read() if proc.poll() is not None else "")
        parts = urlsplit(pg_url)
        assert f"db postgresql://postgres@127.0.0.1:{parts.port}{parts.path}" in line
        assert parts.password not in line
        status, health = api(m.group(1), "GET", "/v1/health")
        assert status == 200 and health["ok"]
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(10)
    assert proc.returncode == 0
    with psycopg.connect(pg_url) as conn:  # the controller made its tables there, not in a fleet.db
        assert conn.execute("SELECT COUNT(*) FROM schema_migrations").fetchone()[0] == len(MIGRATIONS)
    assert not (tmp_path / "store" / "fleet.db").exists()


def test_the_password_comes_from_the_url_or_pgpassword(pg_url, monkeypatch):
    parts = urlsplit(pg_url)
    bare = pg_url.replace(f":{parts.password}@", "@")
    monkeypatch.delenv("PGPASSWORD", raising=False)
    monkeypatch.setenv("PGPASSFILE", "/nonexistent")
    with pytest.raises(BadInput, match=r"cannot connect to PostgreSQL.*password"):
        FleetDB(bare)
    monkeypatch.setenv("PGPASSWORD", parts.password)
    db = FleetDB(bare)
    assert db.schema_version() == len(MIGRATIONS)
    db.close()


def test_processes_opening_at_once_migrate_once(pg_url):
    opened: list[FleetDB] = []
    errors: list[BaseException] = []

    def open_one():
        try:
            opened.append(FleetDB(pg_url))
        except BaseException as exc:  # reported below
            errors.append(exc)
    threads = [threading.Thread(target=open_one) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert errors == [] and len(opened) == 4
    for db in opened:
        db.close()
    with psycopg.connect(pg_url) as conn:
        rows = conn.execute("SELECT version, name FROM schema_migrations ORDER BY version").fetchall()
        assert rows == [(v, name) for v, name, _steps in MIGRATIONS]
        types = dict(conn.execute("SELECT column_name, data_type FROM information_schema.columns"
                                  " WHERE table_name = 'telemetry'").fetchall())
    # SQLite's REAL and INTEGER are 8 bytes: PostgreSQL's columns must be too
    assert types["received"] == "double precision" and types["seq"] == "bigint" and types["id"] == "bigint"


def test_a_restarted_server_costs_no_write(pg_server, pg_url):
    """Every pooled connection breaks when PostgreSQL restarts; the next read and write use new ones."""
    db = FleetDB(pg_url)
    try:
        with ThreadPoolExecutor(3) as pool:  # three connections in the pool
            list(pool.map(lambda _: db.telemetry_count(), range(6)))
        db.record_telemetry([TelemetryRecord("d", 1.0, Telemetry(0, 1.0), "{}")])
        pg_server.restart()
        db.record_telemetry([TelemetryRecord("d", 2.0, Telemetry(1, 2.0), "{}")])   # a write first
        with ThreadPoolExecutor(3) as pool:
            list(pool.map(lambda _: db.telemetry_count(), range(6)))
        pg_server.restart()
        assert db.telemetry_count() == 2                                               # a read first
        with db.batch() as conn:
            db.record_telemetry([TelemetryRecord("d", 3.0, Telemetry(2, 3.0), "{}")], conn=conn)
        assert db.telemetry_count("d") == 3
    finally:
        db.close()


@pytest.mark.fleet_stores("postgresql")
def test_a_nul_character_costs_only_its_record_on_postgresql(fleet, broker):
    """PostgreSQL refuses a NUL character in text, which SQLite stores: it costs only its own record
    (the poison records both stores refuse are test_fleet_ingest's, which runs on both)."""
    ctl = fleet.controller
    failures = ctl.counters.write_failures
    client = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id="nul-test")
    client.connect("127.0.0.1", broker.port)
    client.loop_start()
    try:
        model = ModelInfo("m", 1, "ab" * 32, "a")
        for name, agent in (("nul-dev", "agent\x00x"), ("ok-dev", "agent")):
            client.publish(DeviceTopics(FLEET, name).status, Status(True, model, agent).to_bytes(),
                           qos=1).wait_for_publish(5)
        wait_for(lambda: ctl.counters.write_failures > failures and "ok-dev" in {d["device"] for d in ctl.devices()},
                 20, lambda: f"write failures {ctl.counters.write_failures}, devices {len(ctl.devices())}")
    finally:
        client.loop_stop()
        client.disconnect()
    devices = {d["device"]: d for d in ctl.devices()}
    assert ctl.counters.write_failures == failures + 1
    assert "nul-dev" not in devices and devices["ok-dev"]["agent"] == "agent"


def test_a_deployment_and_a_rollout_that_aborts_on_postgresql(tmp_path, broker, pg_url):
    """20 simulated devices: a deployment of v2 to those that take updates, then a staged rollout of v3 to all
    whose canary fails too often: it aborts, and every device runs what it ran before (v2 or the factory
    model), with the state in PostgreSQL."""
    n = 20
    ids = [device_id("sim-", i) for i in range(n)]
    fail = plan_fleet(n, 1, fail_rate=0.5, seed=0).fail
    failing = {ids[i] for i in fail}
    params = RolloutParams(canary=4, soak_s=1.0, rate=600, wave_interval_s=1.0, max_failures_pct=20)
    canary = rollout_order(ids)[:canary_size(params, n)]
    assert sum(d in failing for d in canary) / len(canary) > 0.2  # what the seed gives: the canary aborts
    c = Controller(parse_broker_url(broker.url()), tmp_path / "store", pg_url,
                   ControllerOptions(session=FAST, housekeeping_s=0.2))
    c.start()
    fleet = SimFleet(parse_broker_url(broker.url()), n, fail=fail, telemetry_interval_s=1.0)
    try:
        assert c.wait_connected(5), c.mqtt.last_error
        fleet.start()
        assert fleet.wait_connected(30)
        wait_for(lambda: len(c.devices()) >= n, 30, "not every device recorded")

        def upload(version: int) -> str:
            d = make_artifact(tmp_path / f"v{version}", version=version, size=20_000, seed=version)
            return c.upload_artifact((d / "manifest.json").read_bytes(), None,
                                     (d / "model.tflite").read_bytes())["artifact"]
        v2, v3 = upload(2), upload(3)
        healthy = [d for d in ids if d not in failing]
        dep = c.create_deployment(v2, healthy)
        done = wait_for(lambda: (got := c.deployment(dep["deployment"]))["done"] and got, 30,
                        lambda: str(c.deployment(dep["deployment"])["summary"]))
        assert done["summary"] == {"healthy": len(healthy)}
        v2_sha = {d.id: d.model.sha256 for d in fleet.devices if d.id in healthy}
        assert len(set(v2_sha.values())) == 1 and FACTORY_SHA256 not in v2_sha.values()

        r = c.create_rollout(v3, c.select_devices([], [], True), params)
        end = wait_for(lambda: (got := c.rollout(r["rollout"]))["state"] in ("completed", "aborted", "cancelled")
                       and not got["active"] and got, 60, lambda: str(c.rollout(r["rollout"])["summary"]))
        assert end["state"] == "aborted" and end["abort"]["criterion"] == "max-failures"
        assert [w["wave"] for w in end["waves"]] == [0]              # it never left the canary
        phases = {d["device"]: d["phase"] for d in end["devices"]}
        assert {phases[d] for d in canary} <= {"rolled_back", "reverted"}
        assert all(phases[d] == "skipped" for d in ids if d not in canary)
        wait_for(lambda: all(d.model.sha256 == (v2_sha.get(d.id) or FACTORY_SHA256) for d in fleet.devices), 30,
                 lambda: {d.id: d.model.version for d in fleet.devices})
        assert c.db.telemetry_count() > 0
        assert c.db.dialect.name == "postgresql"
    finally:
        fleet.stop()
        c.stop()


def test_a_write_that_lost_a_race_is_told_from_a_value_refused_for_good(pg_url, tmp_path):
    """The controller leaves unacknowledged (the device resends it) a telemetry record whose write lost a
    race with another replica's batch, and acknowledges one refused for its value: real errors of both."""
    with psycopg.connect(pg_url, autocommit=True) as setup:
        setup.execute("CREATE TABLE race(k int PRIMARY KEY, v text)")
        setup.execute("INSERT INTO race VALUES (1, ''), (2, '')")
    a, b = psycopg.connect(pg_url), psycopg.connect(pg_url)
    errors: list[Exception] = []

    def cross(conn, first: int, second: int, started: threading.Event | None) -> None:
        try:
            conn.execute("UPDATE race SET v='x' WHERE k=%s", (first,))
            if started is not None:
                started.set()
            conn.execute("UPDATE race SET v='x' WHERE k=%s", (second,))
        except psycopg.Error as exc:
            errors.append(exc)
        finally:
            conn.rollback()
    try:
        a_has_1, b_has_2 = threading.Event(), threading.Event()
        t = threading.Thread(target=lambda: (b.execute("UPDATE race SET v='y' WHERE k=2"), b_has_2.set(),
                                             a_has_1.wait(5), cross(b, 2, 1, None)))
        t.start()
        assert b_has_2.wait(5)
        cross(a, 1, 2, a_has_1)
        t.join(10)
    finally:
        a.close()
        b.close()
    assert len(errors) == 1 and isinstance(errors[0], psycopg.errors.DeadlockDetected), errors
    assert lost_a_race(errors[0])
    with psycopg.connect(pg_url) as c, pytest.raises(psycopg.Error) as refused:
        c.execute("INSERT INTO race VALUES (3, %s)", ("nul\x00byte",))
    assert not lost_a_race(refused.value)

    db = tmp_path / "race.db"
    one, two = sqlite3.connect(db, timeout=0), sqlite3.connect(db, timeout=0)
    try:
        one.execute("CREATE TABLE race(k INTEGER PRIMARY KEY)")
        one.execute("BEGIN IMMEDIATE")
        with pytest.raises(sqlite3.OperationalError) as locked:
            two.execute("BEGIN IMMEDIATE")
        assert lost_a_race(locked.value)
        one.execute("INSERT INTO race VALUES (1)")
        with pytest.raises(sqlite3.IntegrityError) as duplicate:
            one.execute("INSERT INTO race VALUES (1)")
        assert not lost_a_race(duplicate.value)
    finally:
        one.close()
        two.close()
