"""The controller's store: artifacts by id on disk, fleet state in SQLite (WAL) or PostgreSQL (both run
every test that is not about one engine; the PostgreSQL server is tests/pg_fixtures.py's)."""

from __future__ import annotations

import sqlite3
import threading
import time

import pytest

from fleet_helpers import keypair, make_artifact
from lepton_edge.artifact import load_artifact, sha256_hex
from lepton_edge.errors import BadInput
from lepton_edge.fleet.store import MIGRATIONS, ArtifactStore, FleetDB, TelemetryRecord
from lepton_edge.mqtt import ModelInfo, Progress, Status, Telemetry


@pytest.fixture(params=["sqlite", "postgresql"])
def db_spec(request, tmp_path):
    """What ``fleet serve --db`` takes: a file path, or a fresh PostgreSQL database's URL."""
    if request.param == "sqlite":
        return tmp_path / "fleet.db"
    return request.getfixturevalue("pg_url")


@pytest.fixture
def artifact(tmp_path):
    priv, pub, _ = keypair(tmp_path / "keys")
    d = make_artifact(tmp_path / "art", size=5000, private_key=priv)
    return load_artifact(d, [pub]), pub


def test_artifacts_are_kept_whole_by_manifest_sha256(tmp_path, artifact):
    art, pub = artifact
    store = ArtifactStore(tmp_path / "store")
    stored, new = store.put(art.manifest_bytes, art.signature, art.model_bytes, trusted_keys=[pub],
                            require_signature=True)
    assert new and stored.id == sha256_hex(art.manifest_bytes) and stored.signed
    again, new = store.put(art.manifest_bytes, art.signature, art.model_bytes)
    assert not new and again.id == stored.id
    back = load_artifact(store.path(stored.id), [pub])  # a directory any artifact reader accepts
    assert back.manifest_bytes == art.manifest_bytes and back.model_bytes == art.model_bytes
    assert [p.name for p in store.dir.iterdir()] == [stored.id]  # no staging leftovers
    assert store.manifest(stored.id) == (art.manifest_bytes, art.signature)


def test_a_bad_upload_leaves_nothing_behind(tmp_path, artifact):
    art, _pub = artifact
    store = ArtifactStore(tmp_path / "store")
    with pytest.raises(BadInput, match=r"sha256|size"):
        store.put(art.manifest_bytes, art.signature, art.model_bytes[:-1] + b"!")
    _other_priv, other_pub, _ = keypair(tmp_path / "other")
    with pytest.raises(BadInput, match="signature"):
        store.put(art.manifest_bytes, art.signature, art.model_bytes, trusted_keys=[other_pub], require_signature=True)
    with pytest.raises(BadInput):
        store.put(b"{not json", None, b"")
    assert list(store.dir.iterdir()) == []
    with pytest.raises(BadInput):
        store.path("../../etc")


def test_database_uses_wal_and_records_the_fleet(db_spec, artifact):
    _art, _ = artifact
    db = FleetDB(db_spec)
    assert db.journal_mode().lower() == ("postgresql" if isinstance(db_spec, str) else "wal")
    assert db.schema_version() == len(MIGRATIONS)
    model = ModelInfo("m", 1, "ab" * 32, "a")
    db.record_status("d1", Status(True, model, "agent", 1.0), received=10.0)
    db.record_status("d1", Status(False, reason="connection lost"), received=11.0)
    records = [TelemetryRecord("d1", 12.0 + i, Telemetry(i, 12.0, {"rss_bytes": i}), f'{{"seq": {i}}}')
               for i in range(100)]
    db.record_telemetry(records)
    (dev,) = db.devices()
    assert dev["online"] is False and dev["offline_reason"] == "connection lost"
    assert dev["model"]["version"] == 1  # offline keeps the last known model
    assert dev["telemetry"] == {"seq": 99} and dev["last_seen"] == 111.0
    assert db.telemetry_count("d1") == 100
    assert db.prune_telemetry(before=50.0) == 38
    db.close()


def test_jobs_states_supersede_and_expire(tmp_path, db_spec, artifact):
    art, _ = artifact
    store = ArtifactStore(tmp_path / "store")
    stored, _ = store.put(art.manifest_bytes, art.signature, art.model_bytes)
    db = FleetDB(db_spec)
    db.add_artifact(stored)
    now = time.time()
    _dep1, (job1,), sup = db.create_deployment(stored, ["d1"], now + 100, 4096, now)
    assert sup == [] and job1.state == "pending"
    assert db.mark_sent(job1.id, now) and not db.mark_sent(job1.id, now)
    assert db.record_progress(job1.id, "d1", Progress(job1.id, "downloading", 10, 5000), now) == "downloading"
    assert db.record_progress(job1.id, "other-device", Progress(job1.id, "healthy"), now) is None
    dep2, (job2,), sup = db.create_deployment(stored, ["d1", "d2"][:1], now + 0.5, 4096, now)
    assert sup == [job1.id]
    assert db.job(job1.id).state == "superseded"
    assert db.record_progress(job1.id, "d1", Progress(job1.id, "healthy"), now) is None  # stays superseded
    assert db.expire_jobs(now + 1) == [job2.id]
    assert db.job(job2.id).state == "expired"
    # the device's own final word beats "expired": it knows what it runs
    assert db.record_progress(job2.id, "d1", Progress(job2.id, "downloading"), now) is None
    assert db.record_progress(job2.id, "d1", Progress(job2.id, "healthy", 5000, 5000), now) == "healthy"
    dep = db.deployment(dep2)
    assert dep["done"] and dep["summary"] == {"healthy": 1}
    states = [e["state"] for e in db.job_events(job1.id)]
    assert states == ["pending", "sent", "downloading", "superseded"]


def test_readers_do_not_wait_for_a_writer(tmp_path):
    db = FleetDB(tmp_path / "fleet.db")
    db.record_telemetry([TelemetryRecord("d", 1.0, Telemetry(0, 1.0), "{}")])
    holding = threading.Event()
    release = threading.Event()

    def writer():
        with db.batch() as conn:
            conn.execute("INSERT INTO telemetry(device, received, seq, ts, payload) VALUES('d', 2, 1, 2, '{}')")
            holding.set()
            release.wait(5)
    t = threading.Thread(target=writer)
    t.start()
    assert holding.wait(5)
    other = sqlite3.connect(tmp_path / "fleet.db", timeout=0.1)
    started = time.monotonic()
    assert other.execute("SELECT COUNT(*) FROM telemetry").fetchone()[0] == 1  # the committed state, at once
    assert time.monotonic() - started < 0.1
    release.set()
    t.join()
    assert other.execute("SELECT COUNT(*) FROM telemetry").fetchone()[0] == 2
    other.close()
    db.close()


# The schema as it was before rollouts (fleet.db files in the field look like this).
OLD_SCHEMA = """
CREATE TABLE devices(
    device TEXT PRIMARY KEY, online INTEGER NOT NULL DEFAULT 0, agent TEXT, offline_reason TEXT,
    model_name TEXT, model_version INTEGER, model_sha256 TEXT, slot TEXT,
    first_seen REAL, last_seen REAL, status_at REAL, telemetry TEXT, telemetry_at REAL);
CREATE TABLE telemetry(
    id INTEGER PRIMARY KEY, device TEXT NOT NULL, received REAL NOT NULL, seq INTEGER, ts REAL,
    payload TEXT NOT NULL);
CREATE TABLE artifacts(
    id TEXT PRIMARY KEY, name TEXT NOT NULL, version INTEGER NOT NULL, model_sha256 TEXT NOT NULL,
    size INTEGER NOT NULL, signed INTEGER NOT NULL, created REAL NOT NULL);
CREATE TABLE deployments(
    id TEXT PRIMARY KEY, artifact TEXT NOT NULL REFERENCES artifacts(id), created REAL NOT NULL,
    expires_at REAL NOT NULL, block_size INTEGER NOT NULL);
CREATE TABLE jobs(
    id TEXT PRIMARY KEY, deployment TEXT NOT NULL REFERENCES deployments(id), device TEXT NOT NULL,
    artifact TEXT NOT NULL, state TEXT NOT NULL, received INTEGER NOT NULL DEFAULT 0, total INTEGER NOT NULL,
    reason TEXT, blocks_served INTEGER NOT NULL DEFAULT 0, bytes_served INTEGER NOT NULL DEFAULT 0,
    created REAL NOT NULL, updated REAL NOT NULL, sent_at REAL, expires_at REAL NOT NULL);
CREATE TABLE job_events(
    id INTEGER PRIMARY KEY, job TEXT NOT NULL, state TEXT NOT NULL, received INTEGER, reason TEXT, ts REAL NOT NULL);
INSERT INTO devices(device, online, model_name, model_version, model_sha256, slot)
    VALUES('old-dev', 1, 'm', 3, 'cd', 'a');
INSERT INTO artifacts VALUES('art', 'm', 3, 'cd', 10, 0, 1.0);
INSERT INTO deployments VALUES('dep', 'art', 1.0, 9e9, 4096);
INSERT INTO jobs(id, deployment, device, artifact, state, total, created, updated, expires_at)
    VALUES('0123456789abcdef0123456789abcdef', 'dep', 'old-dev', 'art', 'sent', 10, 1.0, 1.0, 9e9);
"""


def test_a_database_from_before_rollouts_opens_and_gains_the_new_columns(tmp_path):
    path = tmp_path / "fleet.db"
    old = sqlite3.connect(path)
    old.executescript(OLD_SCHEMA)
    old.close()
    db = FleetDB(path)
    (dev,) = db.devices()
    assert dev["device"] == "old-dev" and dev["tags"] == [] and dev["profile"] is None
    assert dev["ota"]["kind"] == "install" and dev["ota"]["state"] == "sent"
    (job,) = db.active_jobs()
    assert job.kind == "install" and job.target_sha256 is None and not job.staged
    db.record_status("old-dev", Status(True, ModelInfo("m", 3, "cd", "a"), tags=("site:x",), profile="p",
                                       latency_budget_ms=12.5), received=2.0)
    (dev,) = db.devices()
    assert dev["tags"] == ["site:x"] and dev["profile"] == "p" and dev["latency_budget_ms"] == 12.5
    assert db.schema_version() == len(MIGRATIONS)
    db.close()
    FleetDB(path).close()  # a second open finds every column in place
    with sqlite3.connect(path) as conn:
        assert [r[0] for r in conn.execute("SELECT version FROM schema_migrations ORDER BY version")] == [
            v for v, _name, _steps in MIGRATIONS]
        assert {"boot"} <= {r[1] for r in conn.execute("PRAGMA table_info(telemetry)")}
        assert {"owner", "lease_until"} <= {r[1] for r in conn.execute("PRAGMA table_info(rollouts)")}


def test_tags_profile_and_budget_follow_the_online_status(db_spec):
    db = FleetDB(db_spec)
    model = ModelInfo("m", 1, "ab" * 32, "a")
    db.record_status("d1", Status(True, model, tags=("site:berlin", "hw:pi4"), profile="linux-sbc",
                                  latency_budget_ms=20.0), received=1.0)
    db.record_status("d1", Status(False, reason="connection lost"), received=2.0)  # the Will carries none
    (dev,) = db.devices()
    assert dev["tags"] == ["site:berlin", "hw:pi4"] and dev["profile"] == "linux-sbc"
    assert dev["latency_budget_ms"] == 20.0
    db.record_status("d1", Status(True, model, tags=("site:paris",)), received=3.0)
    (dev,) = db.devices()
    assert dev["tags"] == ["site:paris"] and dev["profile"] is None and dev["latency_budget_ms"] is None
    db.close()


def test_a_rollout_gives_each_device_one_job_and_one_command_of_each_kind(tmp_path, db_spec, artifact):
    art, _ = artifact
    store = ArtifactStore(tmp_path / "store")
    stored, _ = store.put(art.manifest_bytes, art.signature, art.model_bytes)
    db = FleetDB(db_spec)
    db.add_artifact(stored)
    old_model = ModelInfo("m", 0, "ef" * 32, "a")
    db.record_status("d1", Status(True, old_model), received=1.0)
    now = time.time()
    db.insert_rollout("r1", stored.id, ["d1", "d2", "d3"], {"canary": 1}, "canary", now)
    _dep, jobs, _ = db.release_wave("r1", 0, ["d1", "d2"], stored, now + 100, 4096, now)
    assert [j.device for j in jobs] == ["d1", "d2"] and all(j.staged and j.kind == "install" for j in jobs)
    _dep, again, _ = db.release_wave("r1", 1, ["d1", "d2", "d3"], stored, now + 100, 4096, now)
    assert [j.device for j in again] == ["d3"]           # d1 and d2 have theirs
    assert db.release_wave("r1", 2, ["d1", "d2", "d3"], stored, now + 100, 4096, now) == (None, [], [])
    members = {m["device"]: m for m in db.rollout_members("r1")}
    assert members["d1"]["prev_sha256"] == old_model.sha256 and members["d1"]["prev_known"] == 1
    assert members["d2"]["prev_known"] == 0               # never seen: learnt when its job goes out
    db.note_previous(members["d2"]["job"], None)
    assert {m["device"]: (m["prev_known"], m["prev_sha256"]) for m in db.rollout_members("r1")}["d2"] == (1, None)
    _dep, (revert,), superseded = db.add_commands("r1", "revert", {"d1": old_model.sha256}, stored, now + 100,
                                                  4096, now)
    assert revert.kind == "revert" and revert.target_sha256 == old_model.sha256 and revert.total == 0
    assert superseded == [members["d1"]["job"]]           # the unfinished install gives way
    assert db.add_commands("r1", "revert", {"d1": old_model.sha256}, stored, now + 100, 4096, now)[1] == []
    assert db.job(revert.id).kind == "revert" and not db.job(revert.id).staged
    assert db.rollouts_of(["d1", "d9"], ["canary"]) == {"d1": "r1"}
    db.update_rollout("r1", now, state="aborting", abort={"criterion": "max-failures"}, active=False)
    (row,) = db.rollout_rows("r1")
    assert row["state"] == "aborting" and row["abort"] == {"criterion": "max-failures"} and not row["active"]
    assert db.rollout_rows(active=True) == []
    db.close()


def test_telemetry_with_a_boot_is_written_once_and_the_latest_never_moves_back(db_spec):
    db = FleetDB(db_spec)

    def rec(seq: int, boot: str | None = "b0", received: float = 1.0) -> TelemetryRecord:
        return TelemetryRecord("d", received, Telemetry(seq, 1.0, {"inferences": seq}, boot),
                               f'{{"seq": {seq}, "inferences": {seq}}}')
    assert db.record_telemetry([rec(0), rec(1), rec(2)]) == 0
    assert db.record_telemetry([rec(1, received=5.0), rec(3)]) == 1      # a resend of 1: not written again
    assert db.record_telemetry([rec(3), rec(3)]) == 2                    # twice in one batch, already there
    assert db.telemetry_count("d") == 4
    (dev,) = db.devices()
    assert dev["telemetry"]["seq"] == 3
    assert db.record_telemetry([rec(2, received=9.0)]) == 1              # an old record resent late
    assert db.record_telemetry([rec(0, boot=None), rec(0, boot=None)]) == 0  # no boot: written as before
    assert db.record_telemetry([rec(1, boot="b1")]) == 0                 # a new boot is new records
    assert db.telemetry_count("d") == 7
    assert db.devices()[0]["telemetry"]["seq"] == 1
    db.close()


def test_replicas_see_each_other_until_one_stops_beating(db_spec):
    a, b = FleetDB(db_spec), FleetDB(db_spec)
    assert a.heartbeat("r-a", "h", 1, "http://a", ttl_s=5) == ["r-a"]
    assert b.heartbeat("r-b", "h", 2, None, ttl_s=5) == ["r-a", "r-b"]
    time.sleep(0.3)
    assert b.heartbeat("r-b", "h", 2, None, ttl_s=0.2) == ["r-b"]       # r-a's beat is older than the ttl
    assert {r["id"]: r["http_url"] for r in a.replica_rows()} == {"r-a": "http://a", "r-b": None}
    a.leave("r-a")
    assert [r["id"] for r in b.replica_rows()] == ["r-b"]
    a.close()
    b.close()


def test_one_replica_holds_a_rollouts_lease_until_it_expires(tmp_path, db_spec, artifact):
    art, _ = artifact
    stored, _ = ArtifactStore(tmp_path / "store").put(art.manifest_bytes, art.signature, art.model_bytes)
    a, b = FleetDB(db_spec), FleetDB(db_spec)
    a.add_artifact(stored)
    now = time.time()
    a.insert_rollout("r1", stored.id, ["d1"], {}, "canary", now, owner="r-a", lease_s=0.5)
    a.insert_rollout("r2", stored.id, ["d2"], {}, "canary", now)            # nobody's yet
    assert b.claim_rollouts("r-b", 0.5) == {"r2"}
    assert a.claim_rollouts("r-a", 0.5) == {"r1"}                         # renewed; r2 is r-b's
    time.sleep(0.7)                                                        # neither renewed: both expire
    assert b.claim_rollouts("r-b", 5) == {"r1", "r2"}
    assert a.claim_rollouts("r-a", 5) == set()
    assert a.claim_rollouts("r-a", 5, "r1") == set()
    # a state change made on a state read earlier is refused once another one came first
    assert a.update_rollout("r1", now, expect="canary", state="paused", paused_from="canary")
    assert not b.update_rollout("r1", now, expect="canary", state="rolling")
    assert a.rollout_rows("r1")[0]["state"] == "paused"
    b.leave("r-b")                                                         # a clean stop frees its leases
    assert a.claim_rollouts("r-a", 5) == {"r1", "r2"}
    a.close()
    b.close()


def test_on_postgresql_artifact_files_live_in_the_database_and_each_store_is_a_cache(tmp_path, pg_url, artifact):
    art, _ = artifact
    db = FleetDB(pg_url)
    first, second = ArtifactStore(tmp_path / "one", db), ArtifactStore(tmp_path / "two", db)
    stored, new = first.put(art.manifest_bytes, art.signature, art.model_bytes)
    assert new and not first.put(art.manifest_bytes, art.signature, art.model_bytes)[1]
    assert not (tmp_path / "two" / "artifacts" / stored.id).exists()
    assert second.manifest(stored.id) == (art.manifest_bytes, art.signature)       # fetched on first use
    assert second.model_path(stored.id).read_bytes() == art.model_bytes
    assert not second.put(art.manifest_bytes, art.signature, art.model_bytes)[1]    # the database had it
    # bytes altered in the database are refused, not cached
    with db.batch() as c:
        c.execute("UPDATE artifact_files SET data=? WHERE name='model.tflite'", (b"x" * len(art.model_bytes),))
    third = ArtifactStore(tmp_path / "three", db)
    with pytest.raises(BadInput, match="sha256"):
        third.model_path(stored.id)
    assert not (tmp_path / "three" / "artifacts" / stored.id).exists()
    # an artifact uploaded before the database kept files goes there from a store that has it
    with db.batch() as c:
        c.execute("DELETE FROM artifact_files")
    db.add_artifact(stored)
    assert db.artifacts_without_files() == [stored.id]
    assert first.share(db.artifacts_without_files()) == 1 and db.artifacts_without_files() == []
    db.close()
