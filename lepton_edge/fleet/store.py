"""What the controller keeps: artifacts on disk by id, and the fleet's state in SQLite or PostgreSQL.

On disk (``--store DIR``)::

    artifacts/<id>/manifest.json, manifest.sig, model.tflite   (an artifact directory, written atomically)
    fleet.db                                                   (default ``--db``; WAL mode)
    api.token                                                  (0600, when the HTTP API needs a token)

An artifact's id is the sha256 of its manifest's exact bytes: the manifest names the model's sha256,
so the id pins model, version and signature target at once (one model re-signed as a new version is
a new artifact).

SQLite: one connection per thread, WAL (readers never wait for the writer), writes serialised by a
lock, ``synchronous=NORMAL``. PostgreSQL (``--db postgresql://...``): a small pool of autocommit
connections, writes serialised by the same lock within a process; several controller replicas may share
one database (``replicas``: membership by heartbeat; ``rollouts.owner``/``lease_until``: who drives a
rollout; docs/REPLICAS.md).
The queries are the same for both (lepton_edge/fleet/sql.py rewrites what differs; docs/STORE.md).
Telemetry arrives in batches from one ingest thread.

Tables: ``devices`` (last status and telemetry, tags), ``telemetry``, ``artifacts``, ``deployments`` and
``jobs`` (an install, or a rollout's revert/confirm command; ``job_events`` their history), ``rollouts``
and ``rollout_devices`` (each selected device's wave, install job, commands and revert target;
docs/ROLLOUTS.md), ``replicas`` (the controller processes alive on this database). A telemetry record
with a ``boot`` is written once per (device, boot, seq): resends and a takeover between replicas never
duplicate it. The schema comes from numbered migrations (``MIGRATIONS``) recorded in
``schema_migrations`` and run at open, so an older database is brought up to date.
"""

from __future__ import annotations

import json
import math
import os
import sqlite3
import threading
import time
import uuid
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from lepton_edge.artifact import MANIFEST_FILE, MODEL_FILE, SIGNATURE_FILE, sha256_hex, verify_manifest, verify_model
from lepton_edge.errors import BadInput
from lepton_edge.fleet.sql import Conn, Row, SqliteDialect, Transaction, open_dialect
from lepton_edge.fsio import atomic_directory
from lepton_edge.mqtt import TERMINAL_OTA_STATES, Progress, Status, Telemetry, check_name

# Controller-side job states around the device's own (lepton_edge.mqtt.OTA_STATES).
PENDING, SENT, EXPIRED, SUPERSEDED = "pending", "sent", "expired", "superseded"
TERMINAL_JOB_STATES = frozenset(TERMINAL_OTA_STATES | {EXPIRED, SUPERSEDED})
# What a job asks of a device: install a model (OtaJob), or a command after a staged rollout (OtaCommand).
INSTALL, REVERT, CONFIRM = "install", "revert", "confirm"
JOB_KINDS = (INSTALL, REVERT, CONFIRM)
# A job expires only while the bytes are still on their way; once verifying, the device finishes.
EXPIRABLE_STATES = ("pending", "sent", "accepted", "downloading")


class NotFound(BadInput):
    """Asked for an artifact, deployment, job or rollout the controller does not have (HTTP 404)."""


MAX_TARGETS = 10000  # devices in one deployment or rollout


def unique_targets(devices: Iterable[str], what: str) -> list[str]:
    """The devices a deployment or rollout names, each once, in order; BadInput for none, too many or a
    bad id (``what``: "deployment" or "rollout")."""
    targets = list(dict.fromkeys(devices))
    if not targets:
        raise BadInput(f"a {what} needs at least one device")
    if len(targets) > MAX_TARGETS:
        raise BadInput(f"at most {MAX_TARGETS} devices per {what}")
    for device in targets:
        check_name(device, "device id")
    return targets


@dataclass(frozen=True)
class StoredArtifact:
    id: str
    name: str
    version: int
    model_sha256: str
    size: int
    signed: bool
    created: float

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class ArtifactStore:
    """Artifact directories under ``<root>/artifacts/<id>``; each appears whole or not at all.

    With ``db`` (PostgreSQL, where replicas share the database) the files are also kept in the database
    (``artifact_files``) and the directory is this replica's cache: an artifact missing from it is
    fetched on first use, checked (the id is the manifest's sha256, the manifest names the model's) and
    written atomically (temp directory, fsync, rename)."""

    def __init__(self, root: str | os.PathLike[str], db: FleetDB | None = None) -> None:
        self.root = Path(root)
        self.dir = self.root / "artifacts"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.db = db

    def put(self, manifest_bytes: bytes, signature: bytes | None, model_bytes: bytes, *,
            trusted_keys: Iterable = (), require_signature: bool = False) -> tuple[StoredArtifact, bool]:
        """Check (signature if keys are given, then the model's size and sha256) and keep it.
        Returns the artifact and whether it is new."""
        manifest = verify_manifest(manifest_bytes, signature, list(trusted_keys),
                                   require_signature=require_signature, source="uploaded manifest")
        verify_model(model_bytes, manifest, "uploaded model")
        art = StoredArtifact(sha256_hex(manifest_bytes), manifest["name"], manifest["version"],
                             manifest["model"]["sha256"], len(model_bytes), signature is not None, time.time())
        files = {MANIFEST_FILE: manifest_bytes, MODEL_FILE: model_bytes}
        if signature is not None:
            files[SIGNATURE_FILE] = signature
        in_db = self.db.put_artifact_files(art.id, files) if self.db is not None else None
        on_disk = self._write(art.id, files)
        return art, on_disk if in_db is None else in_db

    def _write(self, artifact_id: str, files: dict[str, bytes]) -> bool:
        """The artifact's directory, whole; False when it was there already."""
        target = self.dir / artifact_id
        if target.exists():
            return False
        try:
            with atomic_directory(target) as staging:
                for name, data in files.items():
                    (staging / name).write_bytes(data)
        except FileExistsError:  # the same upload (or fetch) raced us: same bytes, same id
            return False
        return True

    def _cached(self, artifact_id: str) -> Path:
        """The artifact's directory, fetched from the database first when it is not here yet."""
        d = self.path(artifact_id)
        if self.db is None or (d / MANIFEST_FILE).exists():
            return d
        files = self.db.artifact_files(artifact_id)
        if MANIFEST_FILE not in files or MODEL_FILE not in files:
            return d  # not stored anywhere: the caller says so
        source = f"artifact {artifact_id[:12]} from the database"
        if sha256_hex(files[MANIFEST_FILE]) != artifact_id:
            raise BadInput(f"{source}: its manifest does not match its id")
        manifest = verify_manifest(files[MANIFEST_FILE], files.get(SIGNATURE_FILE), [], require_signature=False,
                                   source=source)
        verify_model(files[MODEL_FILE], manifest, source)
        self._write(artifact_id, files)
        return d

    def share(self, artifact_ids: Iterable[str]) -> int:
        """Put into the database the artifacts of ``artifact_ids`` this directory holds (uploaded before
        the database kept files); returns how many."""
        if self.db is None:
            return 0
        shared = 0
        for artifact_id in artifact_ids:
            d = self.path(artifact_id)
            if (d / MANIFEST_FILE).exists() and (d / MODEL_FILE).exists():
                files = {name: (d / name).read_bytes() for name in (MANIFEST_FILE, MODEL_FILE, SIGNATURE_FILE)
                         if (d / name).exists()}
                shared += self.db.put_artifact_files(artifact_id, files)
        return shared

    def path(self, artifact_id: str) -> Path:
        if len(artifact_id) != 64 or any(c not in "0123456789abcdef" for c in artifact_id):
            raise BadInput(f"artifact id {artifact_id[:80]!r} is not a sha256 in hex")
        return self.dir / artifact_id

    def model_path(self, artifact_id: str) -> Path:
        return self._cached(artifact_id) / MODEL_FILE

    def manifest(self, artifact_id: str) -> tuple[bytes, bytes | None]:
        """The manifest's exact bytes and the signature (None when unsigned)."""
        d = self._cached(artifact_id)
        try:
            manifest = (d / MANIFEST_FILE).read_bytes()
        except FileNotFoundError:
            raise BadInput(f"artifact {artifact_id}: not in the store") from None
        sig = d / SIGNATURE_FILE
        return manifest, sig.read_bytes() if sig.exists() else None


# Numbered migrations, recorded in schema_migrations and run at open by both stores (one transaction;
# PostgreSQL's DDL is transactional, SQLite's too). Steps are SQL in SQLite's spelling (Dialect.ddl
# gives PostgreSQL's types) or ("add", table, column, declaration): a column added only where missing,
# so a fleet.db from before schema_migrations, which may hold some of them already, still upgrades.
# Never edit a released migration: add the next one.
Step = str | tuple[str, str, str, str]
MIGRATIONS: tuple[tuple[int, str, tuple[Step, ...]], ...] = (
    (1, "devices, telemetry, artifacts, deployments, jobs", (
        """CREATE TABLE IF NOT EXISTS devices(
            device TEXT PRIMARY KEY, online INTEGER NOT NULL DEFAULT 0, agent TEXT, offline_reason TEXT,
            model_name TEXT, model_version INTEGER, model_sha256 TEXT, slot TEXT,
            first_seen REAL, last_seen REAL, status_at REAL, telemetry TEXT, telemetry_at REAL)""",
        """CREATE TABLE IF NOT EXISTS telemetry(
            id {id}, device TEXT NOT NULL, received REAL NOT NULL, seq INTEGER, ts REAL, payload TEXT NOT NULL)""",
        "CREATE INDEX IF NOT EXISTS telemetry_by_device ON telemetry(device, received)",
        "CREATE INDEX IF NOT EXISTS telemetry_by_time ON telemetry(received)",
        """CREATE TABLE IF NOT EXISTS artifacts(
            id TEXT PRIMARY KEY, name TEXT NOT NULL, version INTEGER NOT NULL, model_sha256 TEXT NOT NULL,
            size INTEGER NOT NULL, signed INTEGER NOT NULL, created REAL NOT NULL)""",
        """CREATE TABLE IF NOT EXISTS deployments(
            id TEXT PRIMARY KEY, artifact TEXT NOT NULL REFERENCES artifacts(id), created REAL NOT NULL,
            expires_at REAL NOT NULL, block_size INTEGER NOT NULL)""",
        """CREATE TABLE IF NOT EXISTS jobs(
            id TEXT PRIMARY KEY, deployment TEXT NOT NULL REFERENCES deployments(id), device TEXT NOT NULL,
            artifact TEXT NOT NULL, state TEXT NOT NULL, received INTEGER NOT NULL DEFAULT 0,
            total INTEGER NOT NULL, reason TEXT, blocks_served INTEGER NOT NULL DEFAULT 0,
            bytes_served INTEGER NOT NULL DEFAULT 0, created REAL NOT NULL, updated REAL NOT NULL, sent_at REAL,
            expires_at REAL NOT NULL)""",
        "CREATE INDEX IF NOT EXISTS jobs_by_device ON jobs(device, created)",
        "CREATE INDEX IF NOT EXISTS jobs_by_deployment ON jobs(deployment)",
        """CREATE TABLE IF NOT EXISTS job_events(
            id {id}, job TEXT NOT NULL, state TEXT NOT NULL, received INTEGER, reason TEXT, ts REAL NOT NULL)""",
        "CREATE INDEX IF NOT EXISTS job_events_by_job ON job_events(job)",
    )),
    (2, "devices: tags, profile, latency budget", (
        ("add", "devices", "tags", "TEXT"), ("add", "devices", "profile", "TEXT"),
        ("add", "devices", "latency_budget_ms", "REAL"),
    )),
    (3, "staged rollouts: rollouts, rollout_devices, job kinds", (
        ("add", "deployments", "rollout", "TEXT"),
        ("add", "jobs", "kind", "TEXT NOT NULL DEFAULT 'install'"), ("add", "jobs", "target_sha256", "TEXT"),
        """CREATE TABLE IF NOT EXISTS rollouts(
            id TEXT PRIMARY KEY, artifact TEXT NOT NULL REFERENCES artifacts(id), state TEXT NOT NULL,
            paused_from TEXT, params TEXT NOT NULL, abort TEXT, active INTEGER NOT NULL DEFAULT 1,
            created REAL NOT NULL, updated REAL NOT NULL)""",
        """CREATE TABLE IF NOT EXISTS rollout_devices(
            rollout TEXT NOT NULL REFERENCES rollouts(id), device TEXT NOT NULL, ord INTEGER NOT NULL,
            wave INTEGER, released_at REAL, job TEXT, revert_job TEXT, confirm_job TEXT,
            prev_known INTEGER NOT NULL DEFAULT 0, prev_name TEXT, prev_version INTEGER, prev_sha256 TEXT,
            PRIMARY KEY(rollout, device))""",
        "CREATE INDEX IF NOT EXISTS rollout_devices_by_job ON rollout_devices(job)",
    )),
    (4, "controller replicas: replicas, rollout leases, telemetry once per (device, boot, seq), jobs by update", (
        """CREATE TABLE IF NOT EXISTS replicas(
            id TEXT PRIMARY KEY, host TEXT NOT NULL, pid INTEGER NOT NULL, started REAL NOT NULL,
            heartbeat REAL NOT NULL, http_url TEXT)""",
        ("add", "rollouts", "owner", "TEXT"), ("add", "rollouts", "lease_until", "REAL"),
        ("add", "telemetry", "boot", "TEXT"),
        "CREATE UNIQUE INDEX IF NOT EXISTS telemetry_once ON telemetry(device, boot, seq) WHERE boot IS NOT NULL",
        ("add", "devices", "telemetry_boot", "TEXT"), ("add", "devices", "telemetry_seq", "INTEGER"),
        "CREATE INDEX IF NOT EXISTS jobs_by_update ON jobs(updated)",
    )),
    (5, "artifact files in the database (PostgreSQL: every replica reads them there)", (
        """CREATE TABLE IF NOT EXISTS artifact_files(
            artifact TEXT NOT NULL, name TEXT NOT NULL, data BLOB NOT NULL, PRIMARY KEY(artifact, name))""",
    )),
)
_TELEMETRY_CHUNK = 150     # records per INSERT statement (6 values each: under SQLite's old 999-variable limit)
_REPLICA_FORGET_S = 86400  # a replica row this long without a heartbeat is deleted
# A device's latest telemetry in ``devices`` moves only forward: a record of another boot, or a later seq.
_NEWER = ("(devices.telemetry_boot IS NULL OR excluded.telemetry_boot IS NULL"
          " OR devices.telemetry_boot <> excluded.telemetry_boot OR excluded.telemetry_seq > devices.telemetry_seq)")
_LATEST = ", ".join(f"{col}=CASE WHEN {_NEWER} THEN excluded.{col} ELSE devices.{col} END"
                    for col in ("telemetry", "telemetry_at", "telemetry_boot", "telemetry_seq"))
_MAX_IDLE = 8  # PostgreSQL connections kept open between uses


def migrate(c: Conn) -> list[int]:
    """Inside a write transaction: run the migrations this database has not had; returns their numbers."""
    c.dialect.migration_lock(c)
    c.raw.execute(c.dialect.ddl("CREATE TABLE IF NOT EXISTS schema_migrations("
                                "version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied REAL NOT NULL)"))
    done = {r[0] for r in c.execute("SELECT version FROM schema_migrations")}
    ran = []
    for version, name, steps in MIGRATIONS:
        if version in done:
            continue
        for step in steps:
            if isinstance(step, str):
                c.raw.execute(c.dialect.ddl(step))
            elif step[2] not in c.dialect.columns(c, step[1]):
                c.raw.execute(c.dialect.ddl(f"ALTER TABLE {step[1]} ADD COLUMN {step[2]} {step[3]}"))
        c.execute("INSERT INTO schema_migrations(version, name, applied) VALUES(?,?,?)", (version, name, time.time()))
        ran.append(version)
    return ran


class _Result:
    """A statement's rows, fetched before its connection went back."""

    def __init__(self, rows: list[Row], rowcount: int) -> None:
        self.rows, self.rowcount = rows, rowcount

    def fetchone(self) -> Any:  # Row | None, as sqlite3 gives it
        return self.rows[0] if self.rows else None

    def fetchall(self) -> list[Row]:
        return self.rows

    def __iter__(self) -> Iterator[Row]:
        return iter(self.rows)


class _StoreReader:
    """Reads outside a transaction: each statement on a connection of the database's (autocommit)."""

    def __init__(self, db: FleetDB) -> None:
        self.db = db

    def execute(self, sql: str, args: Sequence[Any] = ()) -> _Result:
        for attempt in (1, 2):
            conn = self.db._take() if attempt == 1 else self.db._fresh()
            try:
                cur = conn.execute(sql, args)
                return _Result(cur.fetchall() if cur.description else [], cur.rowcount)
            except self.db.dialect.errors:
                if attempt == 2 or not conn.broken():
                    raise
                # a pooled connection the server dropped (a restart): once more on a new one
            finally:
                self.db._give(conn)
        raise AssertionError("unreachable")


@dataclass(frozen=True)
class JobRow:
    id: str
    deployment: str
    device: str
    artifact: str
    state: str
    received: int
    total: int
    reason: str | None
    blocks_served: int
    bytes_served: int
    created: float
    updated: float
    sent_at: float | None
    expires_at: float
    block_size: int = 0
    kind: str = INSTALL              # install, or a command: revert, confirm
    target_sha256: str | None = None  # a command's model (None: a revert to no model)
    staged: bool = False             # an install of a staged rollout (keeps the device's floor)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class TelemetryRecord:
    device: str
    received: float
    telemetry: Telemetry
    raw: str


class FleetDB:
    """The controller's database: SQLite (a file path or ``sqlite:///path``) or PostgreSQL
    (``postgresql://user@host:port/db``). Safe to use from any thread. Migrations run at open."""

    def __init__(self, spec: str | os.PathLike[str]) -> None:
        self.dialect = open_dialect(spec)
        self.path = self.dialect.path if isinstance(self.dialect, SqliteDialect) else None
        self._local = threading.local()
        self._write_lock = threading.Lock()
        self._all: list[Conn] = []      # every connection made (closed by close())
        self._idle: list[Conn] = []     # PostgreSQL: connections free for the next reader or writer
        self._all_lock = threading.Lock()
        self._reader = _StoreReader(self)
        if isinstance(self.dialect, SqliteDialect):
            try:
                conn = self._take()
                mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            except sqlite3.DatabaseError as exc:
                raise BadInput(f"{self.path}: not a usable SQLite database ({exc})") from None
            if mode.lower() != "wal":
                raise BadInput(f"{self.path}: cannot use write-ahead logging (journal mode {mode})")
        try:
            with self._write() as c:
                migrate(c)
        except self.dialect.errors as exc:
            raise BadInput(f"{self.dialect.describe()}: cannot bring the schema up to date"
                           f" ({' '.join(str(exc).split())})") from None

    def _take(self) -> Conn:
        """SQLite: this thread's connection. PostgreSQL: an idle pooled connection or a new one."""
        if self.dialect.per_thread:
            conn = getattr(self._local, "conn", None)
            if conn is None:
                conn = self._local.conn = self.dialect.connect()
                with self._all_lock:
                    self._all.append(conn)
            return conn
        with self._all_lock:
            if self._idle:
                return self._idle.pop()
        conn = self.dialect.connect()
        with self._all_lock:
            self._all.append(conn)
        return conn

    def _give(self, conn: Conn) -> None:
        if self.dialect.per_thread:
            return
        broken = conn.broken() or conn.raw.info.transaction_status != 0  # 0: IDLE
        with self._all_lock:
            if not broken and len(self._idle) < _MAX_IDLE:
                self._idle.append(conn)
                return
            if conn in self._all:
                self._all.remove(conn)
        conn.close()

    def _fresh(self) -> Conn:
        """A new connection, after closing the idle ones: one broken connection means the server went
        away (a restart), and the others it had are broken too."""
        with self._all_lock:
            stale, self._idle = self._idle, []
            for conn in stale:
                self._all.remove(conn)
        for conn in stale:
            conn.close()
        conn = self.dialect.connect()
        with self._all_lock:
            self._all.append(conn)
        return conn

    def _conn(self) -> _StoreReader:
        """For reads: each statement runs on a free connection and returns its rows, all fetched."""
        return self._reader

    def _write(self) -> Transaction:
        return Transaction(self._take(), self._write_lock, self._give,
                           None if self.dialect.per_thread else self._fresh)

    def journal_mode(self) -> str:
        """SQLite's journal mode (``wal``); ``postgresql`` for PostgreSQL."""
        if isinstance(self.dialect, SqliteDialect):
            return self._conn().execute("PRAGMA journal_mode").fetchone()[0]
        return self.dialect.name

    def schema_version(self) -> int:
        return int(self._conn().execute("SELECT MAX(version) FROM schema_migrations").fetchone()[0] or 0)

    def close(self) -> None:
        with self._all_lock:
            for conn in self._all:
                conn.close()
            self._all.clear()
            self._idle.clear()
        self._local = threading.local()

    # -- devices, status, telemetry --
    def record_status(self, device: str, status: Status, received: float,
                      conn: Conn | None = None) -> None:
        sql = ("INSERT INTO devices(device, online, agent, offline_reason, model_name, model_version, model_sha256,"
               " slot, first_seen, last_seen, status_at, tags, profile, latency_budget_ms)"
               " VALUES(?,?,?,?,?,?,?,?,?,?,?,?,?,?)"
               " ON CONFLICT(device) DO UPDATE SET online=excluded.online,"
               " agent=COALESCE(excluded.agent, devices.agent),"
               " offline_reason=excluded.offline_reason, status_at=excluded.status_at,"
               " last_seen=GREATEST(COALESCE(devices.last_seen, 0), excluded.last_seen),"
               " model_name=CASE WHEN excluded.online=1 THEN excluded.model_name ELSE devices.model_name END,"
               " model_version=CASE WHEN excluded.online=1 THEN excluded.model_version"
               " ELSE devices.model_version END,"
               " model_sha256=CASE WHEN excluded.online=1 THEN excluded.model_sha256"
               " ELSE devices.model_sha256 END,"
               " slot=CASE WHEN excluded.online=1 THEN excluded.slot ELSE devices.slot END,"
               " tags=CASE WHEN excluded.online=1 THEN excluded.tags ELSE devices.tags END,"
               " profile=CASE WHEN excluded.online=1 THEN excluded.profile ELSE devices.profile END,"
               " latency_budget_ms=CASE WHEN excluded.online=1 THEN excluded.latency_budget_ms"
               " ELSE devices.latency_budget_ms END")
        args = (device, int(status.online), status.agent, None if status.online else status.reason,
                status.model.name if status.model else None, status.model.version if status.model else None,
                status.model.sha256 if status.model else None, status.model.slot if status.model else None,
                received, received, received, json.dumps(list(status.tags)), status.profile,
                status.latency_budget_ms)
        if conn is not None:
            conn.execute(sql, args)
        else:
            with self._write() as c:
                c.execute(sql, args)

    def record_telemetry(self, records: list[TelemetryRecord], conn: Conn | None = None) -> int:
        """Insert a batch (one transaction when called alone) and keep each device's latest. A record with
        a ``boot`` already written (same device, boot and seq: a resend, or one two replicas both took)
        is not written again; returns how many were such duplicates."""
        def run(c: Conn) -> int:
            latest: dict[str, TelemetryRecord] = {}
            duplicates = 0
            for start in range(0, len(records), _TELEMETRY_CHUNK):
                chunk = records[start:start + _TELEMETRY_CHUNK]
                rows = c.execute(
                    "INSERT INTO telemetry(device, received, seq, ts, payload, boot) VALUES"
                    + ",".join(["(?,?,?,?,?,?)"] * len(chunk)) + " ON CONFLICT DO NOTHING RETURNING device, boot, seq",
                    [v for r in chunk for v in (r.device, r.received, r.telemetry.seq, r.telemetry.ts, r.raw,
                                                r.telemetry.boot)]).fetchall()
                duplicates += len(chunk) - len(rows)
                written = {(row[0], row[1], row[2]) for row in rows}
                for r in chunk:
                    if (r.device, r.telemetry.boot, r.telemetry.seq) in written:
                        latest[r.device] = r
            c.executemany("INSERT INTO devices(device, first_seen, last_seen, telemetry, telemetry_at, telemetry_boot,"
                          " telemetry_seq) VALUES(?,?,?,?,?,?,?)"
                          f" ON CONFLICT(device) DO UPDATE SET {_LATEST},"
                          " last_seen=GREATEST(COALESCE(devices.last_seen, 0), excluded.last_seen)",
                          [(d, r.received, r.received, r.raw, r.received, r.telemetry.boot, r.telemetry.seq)
                           for d, r in sorted(latest.items())])  # one lock order: replicas' batches meet here
            return duplicates
        if conn is not None:
            return run(conn)
        with self._write() as c:
            return run(c)

    # -- replicas (docs/REPLICAS.md) --
    def heartbeat(self, replica_id: str, host: str, pid: int, http_url: str | None, ttl_s: float) -> list[str]:
        """Upsert this replica's row with the database's time; returns the live replicas' ids (a heartbeat
        newer than ``ttl_s``), sorted."""
        with self._write() as c:
            now = c.dialect.clock(c)
            c.execute("INSERT INTO replicas(id, host, pid, started, heartbeat, http_url) VALUES(?,?,?,?,?,?)"
                      " ON CONFLICT(id) DO UPDATE SET host=excluded.host, heartbeat=excluded.heartbeat,"
                      " http_url=excluded.http_url, started=CASE WHEN replicas.pid = excluded.pid"
                      " THEN replicas.started ELSE excluded.started END, pid=excluded.pid",
                      (replica_id, host, pid, now, now, http_url))
            c.execute("DELETE FROM replicas WHERE heartbeat < ?", (now - _REPLICA_FORGET_S,))
            return [r[0] for r in c.execute("SELECT id FROM replicas WHERE heartbeat > ? ORDER BY id",
                                            (now - ttl_s,))]

    def leave(self, replica_id: str) -> None:
        """A replica stopping cleanly: its row goes, its rollout leases are free at once."""
        with self._write() as c:
            c.execute("DELETE FROM replicas WHERE id=?", (replica_id,))
            c.execute("UPDATE rollouts SET owner=NULL, lease_until=NULL WHERE owner=?", (replica_id,))

    def replica_rows(self) -> list[dict[str, Any]]:
        """Every replica row with ``age_s``: seconds since its last heartbeat, by the database's clock."""
        conn = self._take()
        try:
            now = self.dialect.clock(conn)
        finally:
            self._give(conn)
        return [{**dict(r), "age_s": round(now - r["heartbeat"], 3)}
                for r in self._conn().execute("SELECT * FROM replicas ORDER BY id")]

    def device_presence(self) -> list[Row]:
        """Every device's online flag and model, as the database has them (a replica taking devices over)."""
        return self._conn().execute(
            "SELECT device, online, model_name, model_version, model_sha256, slot FROM devices").fetchall()

    def batch(self) -> Transaction:
        """One write transaction for several record_* calls (pass ``conn=`` the yielded connection)."""
        return self._write()

    def devices(self) -> list[dict[str, Any]]:
        rows = self._conn().execute("SELECT * FROM devices ORDER BY device").fetchall()
        jobs = {r["device"]: r for r in self._conn().execute(
            "SELECT j.* FROM jobs j JOIN (SELECT device, MAX(created) AS c FROM jobs GROUP BY device) m"
            " ON j.device = m.device AND j.created = m.c")}
        out = []
        for r in rows:
            job = jobs.get(r["device"])
            out.append({
                "device": r["device"], "online": bool(r["online"]), "agent": r["agent"],
                "offline_reason": r["offline_reason"],
                "model": None if r["model_sha256"] is None else {
                    "name": r["model_name"], "version": r["model_version"], "sha256": r["model_sha256"],
                    "slot": r["slot"]},
                "first_seen": r["first_seen"], "last_seen": r["last_seen"],
                "telemetry": json.loads(r["telemetry"]) if r["telemetry"] else None,
                "telemetry_at": r["telemetry_at"],
                "tags": json.loads(r["tags"]) if r["tags"] else [], "profile": r["profile"],
                "latency_budget_ms": r["latency_budget_ms"],
                "ota": None if job is None else {"job": job["id"], "deployment": job["deployment"],
                                                 "kind": job["kind"], "state": job["state"],
                                                 "received": job["received"], "total": job["total"],
                                                 "reason": job["reason"]},
            })
        return out

    def telemetry_rows(self, device: str, since: float, limit: int) -> list[Row]:
        """The device's telemetry received at or after ``since``: the newest ``limit`` rows, oldest first."""
        return self._conn().execute(
            "SELECT received, seq, ts, payload FROM (SELECT id, received, seq, ts, payload FROM telemetry"
            " WHERE device=? AND received >= ? ORDER BY received DESC, id DESC LIMIT ?) AS newest"
            " ORDER BY received, id",
            (device, since, limit)).fetchall()

    def telemetry_count(self, device: str | None = None) -> int:
        if device is None:
            return self._conn().execute("SELECT COUNT(*) FROM telemetry").fetchone()[0]
        return self._conn().execute("SELECT COUNT(*) FROM telemetry WHERE device=?", (device,)).fetchone()[0]

    def prune_telemetry(self, before: float) -> int:
        with self._write() as c:
            return c.execute("DELETE FROM telemetry WHERE received < ?", (before,)).rowcount

    # -- artifacts, deployments, jobs --
    def add_artifact(self, art: StoredArtifact) -> None:
        with self._write() as c:
            c.execute("INSERT INTO artifacts(id, name, version, model_sha256, size, signed, created)"
                      " VALUES(?,?,?,?,?,?,?) ON CONFLICT DO NOTHING",
                      (art.id, art.name, art.version, art.model_sha256, art.size, int(art.signed), art.created))

    def artifact(self, artifact_id: str) -> StoredArtifact | None:
        r = self._conn().execute("SELECT * FROM artifacts WHERE id=?", (artifact_id,)).fetchone()
        return None if r is None else StoredArtifact(r["id"], r["name"], r["version"], r["model_sha256"], r["size"],
                                                     bool(r["signed"]), r["created"])

    def uploaded_artifact(self, artifact_id: object) -> StoredArtifact:
        """The artifact a deployment or rollout names; NotFound (HTTP 404) when it was never uploaded."""
        art = self.artifact(artifact_id) if isinstance(artifact_id, str) else None
        if art is None:
            raise NotFound(f"artifact {str(artifact_id)[:80]!r}: not uploaded")
        return art

    def put_artifact_files(self, artifact_id: str, files: dict[str, bytes]) -> bool:
        """Keep an artifact's files (name -> bytes) in the database, once; True when they are new."""
        with self._write() as c:
            return any([bool(c.execute("INSERT INTO artifact_files(artifact, name, data) VALUES(?,?,?)"
                                       " ON CONFLICT DO NOTHING", (artifact_id, name, data)).rowcount)
                        for name, data in files.items()])

    def artifact_files(self, artifact_id: str) -> dict[str, bytes]:
        return {r["name"]: bytes(r["data"]) for r in self._conn().execute(
            "SELECT name, data FROM artifact_files WHERE artifact=?", (artifact_id,))}

    def artifacts_without_files(self) -> list[str]:
        """Artifacts whose files are not in the database (uploaded before it kept them)."""
        return [r[0] for r in self._conn().execute(
            "SELECT id FROM artifacts a WHERE NOT EXISTS (SELECT 1 FROM artifact_files f WHERE f.artifact = a.id)")]

    def artifacts(self) -> list[StoredArtifact]:
        return [StoredArtifact(r["id"], r["name"], r["version"], r["model_sha256"], r["size"], bool(r["signed"]),
                               r["created"])
                for r in self._conn().execute("SELECT * FROM artifacts ORDER BY created")]

    def create_deployment(self, artifact: StoredArtifact, devices: list[str], expires_at: float,
                          block_size: int, now: float) -> tuple[str, list[JobRow], list[str]]:
        """A deployment and one job per device; each device's unfinished older job is superseded.
        Returns (deployment id, new jobs, superseded job ids)."""
        with self._write() as c:
            return self._insert_deployment(c, artifact, {d: None for d in devices}, expires_at, block_size, now)

    def _insert_deployment(self, c: Conn, artifact: StoredArtifact, targets: dict[str, str | None],
                           expires_at: float, block_size: int, now: float, *, kind: str = INSTALL,
                           rollout: str | None = None) -> tuple[str, list[JobRow], list[str]]:
        """Inside a write transaction: the deployment row and one job per device of ``targets``
        (device -> a command's target sha256); each device's unfinished older job is superseded."""
        dep_id = uuid.uuid4().hex[:16]
        jobs: list[JobRow] = []
        superseded: list[str] = []
        total = artifact.size if kind == INSTALL else 0
        c.execute("INSERT INTO deployments(id, artifact, created, expires_at, block_size, rollout) VALUES(?,?,?,?,?,?)",
                  (dep_id, artifact.id, now, expires_at, block_size, rollout))
        placeholders = ",".join("?" * len(TERMINAL_JOB_STATES))
        for device, target in targets.items():
            old = [r[0] for r in c.execute(
                f"SELECT id FROM jobs WHERE device=? AND state NOT IN ({placeholders})",
                (device, *sorted(TERMINAL_JOB_STATES)))]
            for job_id in old:
                self._set_state(c, job_id, SUPERSEDED, None, f"superseded by deployment {dep_id}", now)
            superseded += old
            job = JobRow(uuid.uuid4().hex, dep_id, device, artifact.id, PENDING, 0, total, None, 0, 0,
                         now, now, None, expires_at, block_size, kind, target,
                         kind == INSTALL and rollout is not None)
            c.execute("INSERT INTO jobs(id, deployment, device, artifact, state, received, total, created, updated,"
                      " expires_at, kind, target_sha256) VALUES(?,?,?,?,?,?,?,?,?,?,?,?)",
                      (job.id, dep_id, device, artifact.id, PENDING, 0, total, now, now, expires_at, kind, target))
            c.execute("INSERT INTO job_events(job, state, received, reason, ts) VALUES(?,?,?,?,?)",
                      (job.id, PENDING, 0, None, now))
            jobs.append(job)
        return dep_id, jobs, superseded

    def deployment(self, dep_id: str) -> dict[str, Any] | None:
        c = self._conn()
        d = c.execute("SELECT d.*, a.name, a.version, a.model_sha256, a.size FROM deployments d"
                      " JOIN artifacts a ON a.id = d.artifact WHERE d.id=?", (dep_id,)).fetchone()
        if d is None:
            return None
        rows = c.execute("SELECT j.*, COALESCE(v.online, 0) AS online FROM jobs j LEFT JOIN devices v"
                         " ON v.device = j.device WHERE j.deployment=? ORDER BY j.device", (dep_id,)).fetchall()
        devices = [{"device": r["device"], "job": r["id"], "state": r["state"], "received": r["received"],
                    "total": r["total"], "reason": r["reason"], "online": bool(r["online"]),
                    "blocks_served": r["blocks_served"], "bytes_served": r["bytes_served"],
                    "sent_at": r["sent_at"], "updated": r["updated"]} for r in rows]
        summary: dict[str, int] = {}
        for dev in devices:
            summary[dev["state"]] = summary.get(dev["state"], 0) + 1
        return {"deployment": d["id"], "artifact": d["artifact"], "name": d["name"], "version": d["version"],
                "model_sha256": d["model_sha256"], "size": d["size"], "created": d["created"],
                "expires_at": d["expires_at"], "block_size": d["block_size"], "devices": devices,
                "summary": summary, "done": all(dev["state"] in TERMINAL_JOB_STATES for dev in devices)}

    def job(self, job_id: str) -> JobRow | None:
        r = self._conn().execute(f"SELECT {_JOB_COLUMNS} FROM jobs j JOIN deployments d ON d.id = j.deployment"
                                 " WHERE j.id=?", (job_id,)).fetchone()
        return None if r is None else _job_row(r)

    def active_jobs(self) -> list[JobRow]:
        placeholders = ",".join("?" * len(TERMINAL_JOB_STATES))
        return [_job_row(r) for r in self._conn().execute(
            f"SELECT {_JOB_COLUMNS} FROM jobs j JOIN deployments d ON d.id = j.deployment"
            f" WHERE j.state NOT IN ({placeholders}) ORDER BY j.created", sorted(TERMINAL_JOB_STATES))]

    def jobs_changed(self, since: float, states: Iterable[str]) -> list[JobRow]:
        """Jobs in one of ``states`` whose ``updated`` is at or after ``since`` (made or superseded by
        another replica)."""
        states = sorted(states)
        placeholders = ",".join("?" * len(states))
        return [_job_row(r) for r in self._conn().execute(
            f"SELECT {_JOB_COLUMNS} FROM jobs j JOIN deployments d ON d.id = j.deployment"
            f" WHERE j.updated >= ? AND j.state IN ({placeholders}) ORDER BY j.created", (since, *states))]

    def job_events(self, job_id: str) -> list[dict[str, Any]]:
        return [dict(r) for r in self._conn().execute(
            "SELECT state, received, reason, ts FROM job_events WHERE job=? ORDER BY id", (job_id,))]

    def record_progress(self, job_id: str, device: str, progress: Progress, now: float,
                        conn: Conn | None = None) -> str | None:
        """Apply a device's report to its job; returns the job's new state, or None when ignored.

        A finished job stays finished (a late report of a superseded job changes nothing), except that
        a device's own final word beats ``expired``: the device knows whether it runs the model."""
        def run(c: Conn) -> str | None:
            row = c.execute("SELECT device, state, received, reason FROM jobs WHERE id=?", (job_id,)).fetchone()
            if row is None or row["device"] != device:
                return None
            state = row["state"]
            if state in TERMINAL_OTA_STATES or state == SUPERSEDED:
                return None
            if state == EXPIRED and progress.state not in TERMINAL_OTA_STATES:
                return None
            if progress.state == state and progress.reason == row["reason"]:
                c.execute("UPDATE jobs SET received=?, updated=? WHERE id=?", (progress.received, now, job_id))
            else:
                self._set_state(c, job_id, progress.state, progress.received, progress.reason, now)
            return progress.state
        if conn is not None:
            return run(conn)
        with self._write() as c:
            return run(c)

    def mark_sent(self, job_id: str, now: float, conn: Conn | None = None) -> bool:
        """pending -> sent (only from pending: the device's own reports may already have moved it on)."""
        def run(c: Conn) -> bool:
            row = c.execute("SELECT state FROM jobs WHERE id=?", (job_id,)).fetchone()
            if row is None or row["state"] != PENDING:
                return False
            self._set_state(c, job_id, SENT, None, None, now, sent=True)
            return True
        if conn is not None:
            return run(conn)
        with self._write() as c:
            return run(c)

    def add_served(self, counts: dict[str, tuple[int, int]], conn: Conn | None = None) -> None:
        """Add blocks and bytes served per job."""
        rows = [(blocks, nbytes, job) for job, (blocks, nbytes) in counts.items()]

        def run(c: Conn) -> None:
            c.executemany("UPDATE jobs SET blocks_served = blocks_served + ?, bytes_served = bytes_served + ?"
                          " WHERE id=?", rows)
        if conn is not None:
            run(conn)
        else:
            with self._write() as c:
                run(c)

    def expire_jobs(self, now: float) -> list[str]:
        placeholders = ",".join("?" * len(EXPIRABLE_STATES))
        with self._write() as c:
            ids = [r[0] for r in c.execute(f"SELECT id FROM jobs WHERE expires_at <= ? AND state IN ({placeholders})",
                                           (now, *EXPIRABLE_STATES))]
            for job_id in ids:
                self._set_state(c, job_id, EXPIRED, None, "the job expired before the device had the model", now)
        return ids

    def supersede(self, job_ids: Iterable[str], reason: str, now: float) -> list[str]:
        """Supersede the jobs of ``job_ids`` that are still unfinished; returns those."""
        placeholders = ",".join("?" * len(TERMINAL_JOB_STATES))
        done: list[str] = []
        with self._write() as c:
            for job_id in job_ids:
                row = c.execute(f"SELECT id FROM jobs WHERE id=? AND state NOT IN ({placeholders})",
                                (job_id, *sorted(TERMINAL_JOB_STATES))).fetchone()
                if row is not None:
                    self._set_state(c, job_id, SUPERSEDED, None, reason, now)
                    done.append(job_id)
        return done

    # -- rollouts --
    def insert_rollout(self, rollout_id: str, artifact_id: str, devices: list[str], params: dict[str, Any],
                       state: str, now: float, owner: str | None = None, lease_s: float = 0.0) -> None:
        """A rollout and its devices (in rollout order), none released yet; ``owner`` holds its lease."""
        with self._write() as c:
            lease = c.dialect.clock(c) + lease_s if owner is not None else None
            c.execute("INSERT INTO rollouts(id, artifact, state, params, created, updated, owner, lease_until)"
                      " VALUES(?,?,?,?,?,?,?,?)",
                      (rollout_id, artifact_id, state, json.dumps(params), now, now, owner, lease))
            c.executemany("INSERT INTO rollout_devices(rollout, device, ord) VALUES(?,?,?)",
                          [(rollout_id, d, i) for i, d in enumerate(devices)])

    def rollout_rows(self, rollout_id: str | None = None, *, active: bool = False) -> list[dict[str, Any]]:
        """Rollouts (oldest first) with their artifact's name, version and model sha256."""
        where, args = [], []
        if rollout_id is not None:
            where.append("r.id=?")
            args.append(rollout_id)
        if active:
            where.append("r.active=1")
        sql = ("SELECT r.*, a.name, a.version, a.model_sha256 FROM rollouts r JOIN artifacts a ON a.id = r.artifact"
               + (" WHERE " + " AND ".join(where) if where else "") + " ORDER BY r.created")
        out = []
        for r in self._conn().execute(sql, args):
            row = dict(r)
            row["params"] = json.loads(row["params"])
            row["abort"] = json.loads(row["abort"]) if row["abort"] else None
            out.append(row)
        return out

    def rollout_members(self, rollout_id: str) -> list[dict[str, Any]]:
        """A rollout's devices in rollout order, each with its install, revert and confirm job's state, and
        the model the device says it runs now."""
        return [dict(r) for r in self._conn().execute(
            "SELECT r.*, j.state AS job_state, j.reason AS job_reason, j.updated AS job_updated,"
            " j.sent_at AS job_sent_at, rv.state AS revert_state, rv.reason AS revert_reason,"
            " cf.state AS confirm_state, cf.reason AS confirm_reason, v.model_sha256 AS running_sha256"
            " FROM rollout_devices r LEFT JOIN jobs j ON j.id = r.job LEFT JOIN jobs rv ON rv.id = r.revert_job"
            " LEFT JOIN jobs cf ON cf.id = r.confirm_job LEFT JOIN devices v ON v.device = r.device"
            " WHERE r.rollout=? ORDER BY r.ord", (rollout_id,))]

    def rollouts_of(self, devices: Iterable[str], states: Iterable[str]) -> dict[str, str]:
        """device -> the rollout in one of ``states`` it belongs to."""
        states = sorted(states)
        placeholders = ",".join("?" * len(states))
        found: dict[str, str] = {}
        c = self._conn()
        for device in devices:
            r = c.execute("SELECT d.rollout FROM rollout_devices d JOIN rollouts r ON r.id = d.rollout"
                          f" WHERE d.device=? AND r.state IN ({placeholders}) LIMIT 1", (device, *states)).fetchone()
            if r is not None:
                found[device] = r[0]
        return found

    def update_rollout(self, rollout_id: str, now: float, *, expect: str | None = None, **fields: Any) -> bool:
        """Set ``state``, ``paused_from``, ``abort`` (a dict) or ``active`` (bool). ``expect``: only while
        the rollout is in that state (another replica's pause or cancel may have come first); returns
        whether the row changed."""
        allowed = {"state", "paused_from", "abort", "active"}
        if set(fields) - allowed:
            raise ValueError(f"unknown rollout fields {sorted(set(fields) - allowed)}")
        values = {k: (json.dumps(v) if k == "abort" and v is not None else int(v) if k == "active" else v)
                  for k, v in fields.items()}
        sets = "".join(f"{k}=?, " for k in values)
        where, args = ("id=? AND state=?", (rollout_id, expect)) if expect is not None else ("id=?", (rollout_id,))
        with self._write() as c:
            return bool(c.execute(f"UPDATE rollouts SET {sets}updated=? WHERE {where}",
                                  (*values.values(), now, *args)).rowcount)

    def claim_rollouts(self, replica_id: str, lease_s: float, rollout_id: str | None = None) -> set[str]:
        """Take or renew the lease of every active rollout (or just ``rollout_id``) whose lease is free,
        expired or already ours, in one UPDATE (atomic on both engines: on PostgreSQL a concurrent claim
        waits for the row and then sees it taken); returns the active rollouts this replica holds."""
        only, extra = (" AND id=?", (rollout_id,)) if rollout_id is not None else ("", ())
        with self._write() as c:
            now = c.dialect.clock(c)
            c.execute("UPDATE rollouts SET owner=?, lease_until=? WHERE active=1 AND (owner IS NULL OR owner=?"
                      f" OR lease_until IS NULL OR lease_until < ?){only}",
                      (replica_id, now + lease_s, replica_id, now, *extra))
            return {r[0] for r in c.execute(f"SELECT id FROM rollouts WHERE active=1 AND owner=?{only}",
                                            (replica_id, *extra))}

    def release_wave(self, rollout_id: str, wave: int, devices: list[str], artifact: StoredArtifact,
                     expires_at: float, block_size: int, now: float) -> tuple[str | None, list[JobRow], list[str]]:
        """One wave: a deployment of staged install jobs for the devices of ``devices`` that have none in
        this rollout yet, recorded in rollout_devices in the same transaction (so a restarted controller
        never makes a device a second one). Each job notes the model its device runs now (the revert target)."""
        with self._write() as c:
            free = [d for d in devices if c.execute(
                "SELECT job FROM rollout_devices WHERE rollout=? AND device=? AND job IS NULL",
                (rollout_id, d)).fetchone() is not None]
            if not free:
                return None, [], []
            dep_id, jobs, superseded = self._insert_deployment(c, artifact, {d: None for d in free}, expires_at,
                                                               block_size, now, rollout=rollout_id)
            for job in jobs:
                prev = c.execute("SELECT model_name, model_version, model_sha256 FROM devices WHERE device=?",
                                 (job.device,)).fetchone()
                known = prev is not None and prev["model_sha256"] != artifact.model_sha256
                c.execute("UPDATE rollout_devices SET wave=?, released_at=?, job=?, prev_known=?, prev_name=?,"
                          " prev_version=?, prev_sha256=? WHERE rollout=? AND device=?",
                          (wave, now, job.id, int(known), prev["model_name"] if known else None,
                           prev["model_version"] if known else None, prev["model_sha256"] if known else None,
                           rollout_id, job.device))
            c.execute("UPDATE rollouts SET updated=? WHERE id=?", (now, rollout_id))
        return dep_id, jobs, superseded

    def add_commands(self, rollout_id: str, kind: str, targets: dict[str, str | None], artifact: StoredArtifact,
                     expires_at: float, block_size: int, now: float) -> tuple[str | None, list[JobRow], list[str]]:
        """Revert or confirm commands (device -> target sha256) for devices of the rollout that have none of
        that kind yet, recorded in rollout_devices in the same transaction."""
        column = {REVERT: "revert_job", CONFIRM: "confirm_job"}[kind]
        with self._write() as c:
            free = {d: t for d, t in targets.items() if c.execute(
                f"SELECT 1 FROM rollout_devices WHERE rollout=? AND device=? AND {column} IS NULL",
                (rollout_id, d)).fetchone() is not None}
            if not free:
                return None, [], []
            dep_id, jobs, superseded = self._insert_deployment(c, artifact, free, expires_at, block_size, now,
                                                               kind=kind, rollout=rollout_id)
            c.executemany(f"UPDATE rollout_devices SET {column}=? WHERE rollout=? AND device=?",
                          [(job.id, rollout_id, job.device) for job in jobs])
            c.execute("UPDATE rollouts SET updated=? WHERE id=?", (now, rollout_id))
        return dep_id, jobs, superseded

    def note_previous(self, job_id: str, model: tuple[str, int, str] | None,
                      conn: Conn | None = None) -> None:
        """The model (name, version, sha256; None: no model) a staged install's device ran when the job went
        out: what a revert goes back to."""
        args = (model[0] if model else None, model[1] if model else None, model[2] if model else None, job_id)

        def run(c: Conn) -> None:
            c.execute("UPDATE rollout_devices SET prev_known=1, prev_name=?, prev_version=?, prev_sha256=?"
                      " WHERE job=?", args)
        if conn is not None:
            run(conn)
        else:
            with self._write() as c:
                run(c)

    def telemetry_since(self, rollout_id: str, after_id: int, limit: int = 20000) -> list[Row]:
        """Telemetry rows of a rollout's devices with an id above ``after_id`` (oldest first)."""
        return self._conn().execute(
            "SELECT t.id, t.device, t.received, t.payload FROM telemetry t JOIN rollout_devices r"
            " ON r.device = t.device AND r.rollout=? WHERE t.id > ? ORDER BY t.id LIMIT ?",
            (rollout_id, after_id, limit)).fetchall()

    def telemetry_window(self, device: str, start: float, end: float = math.inf,
                         max_id: int | None = None) -> list[Row]:
        """A device's telemetry received in [start, end) (with an id up to ``max_id``), oldest first."""
        return self._conn().execute(
            "SELECT id, received, payload FROM telemetry WHERE device=? AND received >= ? AND received < ?"
            " AND id <= ? ORDER BY id", (device, start, min(end, 1e300),
                                         (1 << 62) if max_id is None else max_id)).fetchall()

    def first_telemetry_id(self, since: float) -> int:
        """The id just below the first telemetry row received at or after ``since``."""
        r = self._conn().execute("SELECT MIN(id) FROM telemetry WHERE received >= ?", (since,)).fetchone()
        if r[0] is not None:
            return int(r[0]) - 1
        r = self._conn().execute("SELECT MAX(id) FROM telemetry").fetchone()
        return int(r[0] or 0)

    @staticmethod
    def _set_state(c: Conn, job_id: str, state: str, received: int | None, reason: str | None,
                   now: float, *, sent: bool = False) -> None:
        c.execute("UPDATE jobs SET state=?, received=COALESCE(?, received), reason=?, updated=?,"
                  " sent_at=CASE WHEN ? THEN ? ELSE sent_at END WHERE id=?",
                  (state, received, reason, now, sent, now, job_id))
        c.execute("INSERT INTO job_events(job, state, received, reason, ts) VALUES(?,?,?,?,?)",
                  (job_id, state, received, reason, now))


_JOB_COLUMNS = "j.*, d.block_size, d.rollout AS rollout"


def _job_row(r: Row) -> JobRow:
    return JobRow(r["id"], r["deployment"], r["device"], r["artifact"], r["state"], r["received"], r["total"],
                  r["reason"], r["blocks_served"], r["bytes_served"], r["created"], r["updated"], r["sent_at"],
                  r["expires_at"], r["block_size"], r["kind"], r["target_sha256"],
                  r["kind"] == INSTALL and r["rollout"] is not None)
