"""The controller's store: artifacts by id on disk, fleet state in SQLite (WAL)."""

from __future__ import annotations

import sqlite3
import threading
import time

import pytest

from fleet_helpers import keypair, make_artifact
from lepton_edge.artifact import load_artifact, sha256_hex
from lepton_edge.errors import BadInput
from lepton_edge.fleet.store import ArtifactStore, FleetDB, TelemetryRecord
from lepton_edge.mqtt import ModelInfo, Progress, Status, Telemetry


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


def test_database_uses_wal_and_records_the_fleet(tmp_path, artifact):
    _art, _ = artifact
    db = FleetDB(tmp_path / "fleet.db")
    assert db.journal_mode().lower() == "wal"
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


def test_jobs_states_supersede_and_expire(tmp_path, artifact):
    art, _ = artifact
    store = ArtifactStore(tmp_path / "store")
    stored, _ = store.put(art.manifest_bytes, art.signature, art.model_bytes)
    db = FleetDB(tmp_path / "fleet.db")
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
