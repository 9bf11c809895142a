"""The fleet controller: OTA jobs and the block server over MQTT; status, telemetry and progress into the database.

Threads and who owns what:

* the MQTT loop thread (:mod:`lepton_edge.mqtt.client`) runs the message handlers. They parse,
  answer block requests straight from the artifact file (``os.pread``; the device asks for
  offset and length and paces itself), send jobs, and queue everything that must be written;
* one ingest thread writes that queue to the database in batches (one transaction per batch), expires
  jobs, and adds up the blocks served;
* HTTP threads (:mod:`lepton_edge.fleet.http_api`) call :meth:`Controller.upload_artifact`,
  :meth:`Controller.create_deployment`, the rollout operations and the readers;
* the rollout thread (:mod:`lepton_edge.fleet.rollout_driver`) releases waves, checks abort criteria and
  sends revert and confirm commands, all from the database's state.

The in-memory job table (unfinished jobs, device online flags) is shared under one lock. A job is
sent when it is created if its device is online, and again every time the device's status says
online (a restart, a reconnect after a broker restart): the device ignores a job it is already
running, resumes one it has partly on disk, and reports ``healthy`` at once for a model it runs.

Replicas (docs/REPLICAS.md): several controllers on one database and broker act as one. Each handles
only the devices it owns (:mod:`lepton_edge.fleet.replicas`) and drops the others' messages after
reading the topic; its job table holds only its devices' jobs. When the live set changes it drops the
jobs of devices it lost and loads those of devices it gained; jobs another replica made or superseded
reach it by a poll each housekeeping round. Telemetry with a ``boot`` is acknowledged
(``telemetry/ack``) after its transaction commits, and written once per (device, boot, seq).
"""

from __future__ import annotations

import collections
import functools
import hashlib
import logging
import os
import queue
import socket
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from lepton_edge.errors import BadInput, one_line
from lepton_edge.fleet.replicas import HEARTBEAT_S, REPLICA_TTL_S, Membership, ReplicaInfo, default_client_id
from lepton_edge.fleet.rollout import MAX_EXPIRES_S, RolloutParams
from lepton_edge.fleet.rollout_driver import RolloutDriver
from lepton_edge.fleet.sql import lost_a_race
from lepton_edge.fleet.store import (
    EXPIRABLE_STATES,
    EXPIRED,
    INSTALL,
    PENDING,
    SENT,
    SUPERSEDED,
    TERMINAL_JOB_STATES,
    ArtifactStore,
    FleetDB,
    JobRow,
    NotFound,
    StoredArtifact,
    TelemetryRecord,
    unique_targets,
)
from lepton_edge.mqtt import (
    BLOCK_BAD_RANGE,
    BLOCK_EXPIRED,
    BLOCK_UNAVAILABLE,
    BLOCK_UNKNOWN_JOB,
    DEFAULT_BLOCK_SIZE,
    DEFAULT_FLEET,
    MAX_ACKED_SEQS,
    MAX_BLOCK_SIZE,
    OTA_GET,
    OTA_PROGRESS,
    STATUS,
    TELEMETRY,
    Block,
    BlockRequest,
    BrokerConfig,
    DeviceTopics,
    ModelInfo,
    MqttClient,
    OtaCommand,
    OtaJob,
    Progress,
    Router,
    SessionOptions,
    Status,
    Telemetry,
    TelemetryAck,
    check_name,
    fleet_filter,
    offline_will_payload,
)

log = logging.getLogger("lepton_edge.fleet")

WILL_REASON = Status.from_bytes(offline_will_payload()).reason  # "connection lost": the broker said it
PRESENCE_LINES = 20  # more online/offline changes than this in one housekeeping round: one summary line
JOB_POLL_OVERLAP_S = 5.0  # the poll of jobs changed by other replicas looks back this much more (clock skew)


@dataclass(frozen=True)
class ControllerOptions:
    fleet: str = DEFAULT_FLEET
    client_id: str | None = None          # None: lepton-edge-controller-<fleet>-<host>-<pid>, clean session;
                                          # given: a stable id keeps its persistent session (``session``)
    trusted_keys: tuple = ()              # if given, uploads must be signed by one of them
    default_expires_s: float = 3600.0
    block_size: int = DEFAULT_BLOCK_SIZE  # the hint sent with each job; the device may ask for other sizes
    retention_s: float = 7 * 24 * 3600.0  # telemetry rows older than this are pruned
    housekeeping_s: float = 0.5           # expiry check and served-bytes flush
    block_qos: int = 1                    # OTA blocks (answers to ota/get): 0 on a broker that stores every
                                          # QoS 1 message (NATS: JetStream); the device re-asks a lost block
    job_resend_s: float = 10.0            # a job its online device has said nothing of this long is sent again
    rollout_tick_s: float = 0.5           # how often rollouts advance and their abort criteria are checked
    heartbeat_s: float = HEARTBEAT_S      # replicas: how often this one says it is alive
    replica_ttl_s: float = REPLICA_TTL_S  # replicas: silent this long means gone
    session: SessionOptions = field(default_factory=lambda: SessionOptions(
        clean_start=False, session_expiry_s=3600, max_inflight=200, max_backoff_s=10.0))


@dataclass
class LiveJob:
    """An unfinished job, as the handlers need it (the manifest's exact bytes included)."""

    id: str
    deployment: str
    device: str
    artifact: str
    size: int
    block_size: int
    expires_at: float
    state: str
    model_sha256: str
    manifest: bytes
    signature: bytes | None
    kind: str = INSTALL                 # install (an OtaJob) or a command (revert, confirm: an OtaCommand)
    target_sha256: str | None = None    # a command's model
    staged: bool = False                # a staged rollout's install: the device keeps its floor
    last_word_mono: float = 0.0         # monotonic: last sent, or last heard of from its device (progress, a
                                        # block request); 0: never sent by this replica

    def message(self, now: float) -> bytes:
        if self.kind != INSTALL:
            return OtaCommand(self.id, self.deployment, self.kind, self.target_sha256, now).to_bytes()
        return OtaJob(self.id, self.deployment, self.manifest, self.signature, self.model_sha256, self.size,
                      self.block_size, self.expires_at, now, staged=self.staged).to_bytes()


@dataclass(frozen=True)
class Selection:
    """Devices picked by id, tags or all: ``devices`` in the order given (ids first), ``unknown`` the ids
    the controller has never seen (their jobs wait for them)."""

    devices: tuple[str, ...]
    unknown: tuple[str, ...] = ()


@dataclass
class Counters:
    blocks_served: int = 0
    bytes_served: int = 0
    telemetry_rows: int = 0
    telemetry_duplicates: int = 0  # records already written (a resend, a takeover): not written again
    messages_for_peers: int = 0    # messages of devices another replica owns, dropped after the topic
    write_failures: int = 0      # records that could not be written (each logged with its device)


def _telemetry_and_text(payload: bytes) -> tuple[Telemetry, str]:
    return Telemetry.from_bytes(payload), payload.decode("utf-8")


class Controller:
    """Start with :meth:`start`, stop with :meth:`stop`; the HTTP API calls the public methods."""

    def __init__(self, broker: BrokerConfig, store_dir: str | os.PathLike[str],
                 db_path: str | os.PathLike[str] | None = None,
                 options: ControllerOptions = ControllerOptions()) -> None:
        check_name(options.fleet, "fleet")
        self.options = options
        self.broker = broker
        self.store_dir = Path(store_dir)
        self.db = FleetDB(db_path or self.store_dir / "fleet.db")
        # PostgreSQL: replicas share it, and the artifact files with it (the store directory is a cache)
        self.artifacts = ArtifactStore(self.store_dir, self.db if self.db.dialect.name == "postgresql" else None)
        self.counters = Counters()
        self._lock = threading.Lock()
        self._jobs: dict[str, LiveJob] = {}
        self._current: dict[str, str] = {}                  # device -> its unfinished job
        self._finished: collections.OrderedDict[str, int] = collections.OrderedDict()  # job -> block status
        self._online: dict[str, bool] = {}
        self._said_offline: set[str] = set()  # devices whose last status was an offline sent by a live sender
        self._presence: list[tuple[str, bool, str | None]] = []  # online/offline changes since the last log
        self._models: dict[str, ModelInfo | None] = {}     # device -> the model its last online status named
        self._peer_status: dict[str, tuple[Status, float]] = {}  # another replica's device -> its last status
        self._served: dict[str, list[int]] = {}             # job -> [blocks, bytes] since the last flush
        self._fds: dict[str, int] = {}                      # artifact -> open model file (loop thread only)
        self._ingest: queue.Queue = queue.Queue()
        self._writer: threading.Thread | None = None
        self._stopping = threading.Event()
        # the default id is this process's own (no session to keep: a restart is a new replica); a given
        # id keeps the persistent session it had before replicas existed
        client_id = options.client_id or default_client_id(options.fleet)
        session = options.session if options.client_id else replace(options.session, clean_start=True,
                                                                     session_expiry_s=None)
        self.replica_id = client_id
        self.membership = Membership(self.db, ReplicaInfo(client_id, socket.gethostname(), os.getpid()),
                                     self._on_membership, heartbeat_s=options.heartbeat_s,
                                     ttl_s=options.replica_ttl_s)
        self._jobs_polled = 0.0  # the last poll of jobs changed by other replicas (time.time())
        self._resend_checked = 0.0  # the last look for jobs not heard of (time.monotonic())
        self.mqtt = MqttClient(broker, client_id, session=session, on_connect=self._on_connect,
                               on_disconnect=self._on_disconnect)
        self.router = Router(log)  # counts messages per kind and bad ones per reason (health())
        self.router.on(STATUS, Status.from_bytes, self._on_status)
        self.router.on(TELEMETRY, _telemetry_and_text, self._on_telemetry)  # the database keeps the payload as sent
        self.router.on(OTA_GET, BlockRequest.from_bytes, self._on_get)
        self.router.on(OTA_PROGRESS, Progress.from_bytes, self._on_progress)
        for route in self.router.routes.values():
            # every status is read (they are few, and retained): a replica taking a device over must know
            # whether it is online now; the other kinds of another replica's device are dropped unread
            handler = self.router.handler(route.kind)
            self.mqtt.subscribe(fleet_filter(options.fleet, route.kind),
                                handler if route.kind == STATUS else self._owned(handler), qos=route.qos)
        self.rollout_driver = RolloutDriver(self, options.rollout_tick_s)

    # -- lifecycle --
    def start(self, http_url: str | None = None) -> None:
        """Join the replicas (``http_url``: this replica's API, listed in the ``replicas`` table), load the
        unfinished jobs of the devices this replica owns, then connect."""
        self.membership.join(http_url)
        self._jobs_polled = time.time()
        if self.artifacts.db is not None and self.artifacts.share(self.db.artifacts_without_files()):
            log.info("artifacts uploaded before the database kept their files: now stored there too")
        for row in self.db.active_jobs():
            if self.membership.owns(row.device):
                self._remember(row)
        self._writer = threading.Thread(target=self._write_loop, name="fleet-ingest", daemon=True)
        self._writer.start()
        self.mqtt.start()
        self.rollout_driver.start()

    def stop(self) -> None:
        self.rollout_driver.stop()
        self.mqtt.stop()
        self._stopping.set()
        self._ingest.put(None)
        if self._writer is not None:
            self._writer.join(10)
        for fd in self._fds.values():
            os.close(fd)
        self._fds.clear()
        self.membership.leave()
        self.db.close()

    def wait_connected(self, timeout: float) -> bool:
        return self.mqtt.wait_connected(timeout)

    def wait_idle(self, timeout: float = 5.0) -> bool:
        """Wait until everything received so far is in the database (tests, benchmarks)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._ingest.unfinished_tasks == 0:
                return True
            time.sleep(0.01)
        return False

    # -- the HTTP API's operations (any thread) --
    def upload_artifact(self, manifest_bytes: bytes, signature: bytes | None, model_bytes: bytes) -> dict[str, Any]:
        keys = self.options.trusted_keys
        art, created = self.artifacts.put(manifest_bytes, signature, model_bytes, trusted_keys=keys,
                                          require_signature=bool(keys))
        self.db.add_artifact(art)
        log.info("artifact %s: %s version %d, %d bytes%s", art.id[:12], art.name, art.version, art.size,
                 "" if created else " (already stored)")
        return {**art.as_dict(), "artifact": art.id, "new": created}

    def create_deployment(self, artifact_id: str, devices: Iterable[str], expires_s: float | None = None,
                          block_size: int | None = None) -> dict[str, Any]:
        art = self.db.uploaded_artifact(artifact_id)
        targets = unique_targets(devices, "deployment")
        expires_s = self.options.default_expires_s if expires_s is None else expires_s
        if not 1 <= expires_s <= MAX_EXPIRES_S:
            raise BadInput(f"expires_s must be 1 to {MAX_EXPIRES_S} seconds")
        block_size = block_size or self.options.block_size
        if not 256 <= block_size <= MAX_BLOCK_SIZE:
            raise BadInput(f"block_size must be 256 to {MAX_BLOCK_SIZE} bytes")
        self.check_artifact_files(art)
        now = time.time()
        dep_id, jobs, superseded = self.db.create_deployment(art, targets, now + expires_s, block_size, now)
        sent = self.activate_jobs(art, jobs, superseded)
        log.info("deployment %s: %s version %d to %d device(s), %d online now", dep_id, art.name, art.version,
                 len(targets), sent)
        return self.deployment(dep_id)

    def select_devices(self, devices: Iterable[str] = (), tags: Iterable[str] = (),
                       all_: bool = False) -> Selection:
        """The devices named, plus every known device that has all ``tags`` (when given), or every known
        device (``all_``). A named device the controller has never seen is selected and listed as unknown."""
        named = list(dict.fromkeys(devices))
        for device in named:
            check_name(device, "device id")
        wanted = set(tags)
        known = self.db.devices()
        with self._lock:
            seen = {d["device"] for d in known} | set(self._online)
        picked = list(named)
        if all_ or wanted:
            picked += [d["device"] for d in known
                       if all_ or wanted.issubset(d.get("tags") or ())]
        return Selection(tuple(dict.fromkeys(picked)), tuple(d for d in named if d not in seen))

    def create_rollout(self, artifact_id: str, selection: Selection | Iterable[str],
                       params: RolloutParams | None = None) -> dict[str, Any]:
        """A staged rollout of the artifact to the selected devices (the canary, or the first wave, goes
        out at once); returns the rollout JSON (docs/ROLLOUTS.md)."""
        devices = list(selection.devices if isinstance(selection, Selection) else selection)
        return self.rollout_driver.create(artifact_id, devices, params or RolloutParams())

    def rollouts(self) -> list[dict[str, Any]]:
        """Every rollout, oldest first, without its devices."""
        return self.rollout_driver.views()

    def rollout(self, rollout_id: str) -> dict[str, Any]:
        return self.rollout_driver.view(rollout_id)

    def rollout_action(self, rollout_id: str, action: str) -> dict[str, Any]:
        """``pause``, ``resume`` or ``cancel``; returns the rollout JSON."""
        return self.rollout_driver.action(rollout_id, action)

    # -- jobs made by deployments and rollouts (any thread) --
    def check_artifact_files(self, art: StoredArtifact) -> tuple[bytes, bytes | None]:
        """The artifact's manifest and signature, after checking its model file still matches."""
        manifest, signature = self.artifacts.manifest(art.id)
        self._check_model_file(art.id, art.model_sha256, art.size)
        return manifest, signature

    def activate_jobs(self, art: StoredArtifact, jobs: list[JobRow], superseded: Iterable[str]) -> int:
        """Put new jobs (just written to the database) in the live table, forget the ones they superseded,
        and send those whose device is online; returns how many went out. Jobs of devices another
        replica owns are left to it (its poll of changed jobs finds them)."""
        manifest, signature = self.artifacts.manifest(art.id)
        to_send = []
        with self._lock:
            for job_id in superseded:
                self._forget(job_id, BLOCK_UNKNOWN_JOB)
            for row in jobs:
                if not self.membership.owns(row.device):
                    continue
                live = self._remember(row, manifest, signature, art.model_sha256)
                if self._online.get(row.device):
                    to_send.append(live)
        for live in to_send:
            self._send(live, record_now=True)
        return len(to_send)

    def drop_jobs(self, job_ids: Iterable[str]) -> None:
        """Forget jobs superseded in the database (later block requests get 'unknown job')."""
        with self._lock:
            for job_id in job_ids:
                self._forget(job_id, BLOCK_UNKNOWN_JOB)

    def withdraw_unsent(self, job_ids: Iterable[str]) -> list[str]:
        """Of ``job_ids``, take out of the live table the jobs not sent yet (pending here, or not live here:
        another replica's, or none) and return them, for the caller to supersede in the database. Done under
        the lock that :meth:`_send` takes, so a job is either sent or withdrawn, never both."""
        withdrawn = []
        with self._lock:
            for job_id in job_ids:
                job = self._jobs.get(job_id)
                if job is None or job.state == PENDING:
                    if job is not None:
                        self._forget(job_id, BLOCK_UNKNOWN_JOB)
                    withdrawn.append(job_id)
        return withdrawn

    def deployment(self, dep_id: str) -> dict[str, Any]:
        found = self.db.deployment(dep_id)
        if found is None:
            raise NotFound(f"deployment {dep_id[:80]!r}: no such deployment")
        return found

    def job(self, job_id: str) -> dict[str, Any]:
        row = self.db.job(job_id)
        if row is None:
            raise NotFound(f"job {job_id[:80]!r}: no such job")
        return {**row.as_dict(), "events": self.db.job_events(job_id)}

    def devices(self) -> list[dict[str, Any]]:
        return self.db.devices()

    def is_online(self, device: str) -> bool:
        """What the last status said (before it reaches the database)."""
        with self._lock:
            return bool(self._online.get(device))

    def list_artifacts(self) -> list[dict[str, Any]]:
        return [a.as_dict() for a in self.db.artifacts()]

    def health(self) -> dict[str, Any]:
        with self._lock:
            active = len(self._jobs)
        return {"ok": True, "fleet": self.options.fleet, "broker": self.broker.display_url,
                "broker_connected": self.mqtt.connected, "active_jobs": active,
                "ingest_backlog": self._ingest.qsize(), "bad_payloads": self.router.bad_payloads,
                "messages": dict(self.router.messages), "replica": self.replica_id,
                "replicas": list(self.membership.live), "messages_for_peers": self.counters.messages_for_peers,
                "telemetry_rows": self.counters.telemetry_rows,
                "telemetry_duplicates": self.counters.telemetry_duplicates}

    # -- replicas --
    def _owned(self, handler: Callable[[str, bytes], None]) -> Callable[[str, bytes], None]:
        """``handler`` for the devices this replica owns; another replica's device's message is counted
        and dropped after reading only its topic (``lepton/v1/<fleet>/<device>/...``)."""
        membership = self.membership

        def handle(topic: str, payload: bytes) -> None:
            if membership.alone:
                handler(topic, payload)
                return
            parts = topic.split("/", 4)
            if len(parts) > 3 and not membership.owns(parts[3]):
                self.counters.messages_for_peers += 1
                return
            handler(topic, payload)
        return handle

    def _on_membership(self, live: tuple[str, ...]) -> None:
        """The live set changed (the heartbeat thread): drop the jobs of devices this replica no longer owns,
        record the last status seen of the devices it gained (their old owner may have died before writing
        it), load the unfinished jobs of the devices it owns now and send those whose device is online."""
        owns = self.membership.owns
        active = [row for row in self.db.active_jobs() if owns(row.device)]
        presence = {r["device"]: r for r in self.db.device_presence() if owns(r["device"])}
        parts = self._artifact_parts(row.artifact for row in active)
        to_send = []
        with self._lock:
            for job in [j for j in self._jobs.values() if not owns(j.device)]:
                self._jobs.pop(job.id, None)
                if self._current.get(job.device) == job.id:
                    del self._current[job.device]
            for device in [d for d in self._peer_status if owns(d)]:
                status, received = self._peer_status.pop(device)
                self._ingest.put(("status", device, status, received))
            for device, r in presence.items():  # devices whose status this replica never saw
                if device not in self._online:
                    self._online[device] = bool(r["online"])
                    if r["online"]:
                        self._models[device] = None if r["model_sha256"] is None else ModelInfo(
                            r["model_name"], r["model_version"], r["model_sha256"], r["slot"])
            wanted = {row.id for row in active}
            for job_id in [j for j in self._jobs if j not in wanted]:  # finished or superseded meanwhile
                self._forget(job_id, BLOCK_UNKNOWN_JOB)
            for row in active:
                if row.id not in self._jobs and row.artifact in parts:
                    job = self._remember(row, *parts[row.artifact])
                    if self._online.get(row.device):
                        to_send.append(job)
        for job in to_send:
            self._send(job, record_now=True)
        log.info("replicas: %d live; this one owns %d unfinished job(s) and sent %d", len(live), len(active),
                 len(to_send))

    def _artifact_parts(self, artifact_ids: Iterable[str]) -> dict[str, tuple[bytes, bytes | None, str]]:
        """Each artifact's manifest, signature and model sha256, read once and outside the lock (on
        PostgreSQL the first read may fetch the files from the database). One that cannot be read is
        left out (logged): its jobs wait in the database."""
        parts: dict[str, tuple[bytes, bytes | None, str]] = {}
        for artifact_id in set(artifact_ids):
            art = self.db.artifact(artifact_id)
            try:
                if art is None:
                    raise NotFound(f"artifact {artifact_id}: not in the database")
                parts[artifact_id] = (*self.artifacts.manifest(artifact_id), art.model_sha256)
            except BadInput as exc:
                log.error("cannot take over the jobs of artifact %s: %s", artifact_id[:12], exc)
        return parts

    def _poll_jobs(self) -> None:
        """Jobs another replica made for (or superseded on) this replica's devices: pick them up."""
        if self.membership.alone and self._jobs_polled:
            self._jobs_polled = time.time()
            return
        now = time.time()
        rows = self.db.jobs_changed(self._jobs_polled - JOB_POLL_OVERLAP_S, (PENDING, SUPERSEDED, EXPIRED))
        self._jobs_polled = now
        rows = [row for row in rows if self.membership.owns(row.device)]
        parts = self._artifact_parts(row.artifact for row in rows if row.state == PENDING)
        to_send = []
        with self._lock:
            for row in rows:
                if row.state != PENDING:
                    if row.id in self._jobs:
                        self._forget(row.id, BLOCK_EXPIRED if row.state == EXPIRED else BLOCK_UNKNOWN_JOB)
                elif row.id not in self._jobs and row.id not in self._finished and row.artifact in parts:
                    live = self._remember(row, *parts[row.artifact])
                    if self._online.get(row.device):
                        to_send.append(live)
        for live in to_send:
            self._send(live, record_now=True)

    # -- MQTT handlers (loop thread) --
    def _on_connect(self) -> None:
        log.info("connected to %s", self.mqtt.broker.display_url)

    def _on_disconnect(self, reason: str) -> None:
        log.warning("lost the broker (%s); reconnecting", reason)

    def _on_status(self, device: str, status: Status) -> None:
        received = time.time()
        mine = self.membership.owns(device)
        if mine:
            self._ingest.put(("status", device, status, received))
        else:  # its owner records it; kept here for the day this replica takes the device over
            self.counters.messages_for_peers += 1
        with self._lock:
            if mine:
                self._peer_status.pop(device, None)
            else:
                self._peer_status[device] = (status, received)
            was = self._online.get(device)
            self._online[device] = status.online
            if status.online or status.reason == WILL_REASON:
                self._said_offline.discard(device)
            else:  # e.g. a gateway whose microcontroller does not answer: its telemetry goes on
                self._said_offline.add(device)
            if status.online:
                self._models[device] = status.model
            job = self._jobs.get(self._current.get(device, ""))
            if was != status.online and mine:
                self._presence.append((device, status.online, status.reason))
        if status.online and job is not None:
            self._send(job)

    @staticmethod
    def _log_presence(changes: list[tuple[str, bool, str | None]], online: int) -> None:
        """A few devices coming or going: a line each. A crowd (a broker restart, a fleet starting):
        one line, so that 10,000 reconnects do not bury the log (each still at debug level)."""
        if not changes:
            return
        crowd = len(changes) > PRESENCE_LINES
        for device, up, reason in changes:
            (log.debug if crowd else log.info)("%s is %s", device, "online" if up else f"offline ({reason or 'clean'})")
        if crowd:
            came = sum(1 for _, up, _ in changes if up)
            log.info("%d device(s) came online and %d went offline; %d online now", came, len(changes) - came,
                     online)

    def _ack(self, records: list[TelemetryRecord]) -> None:
        """After the batch's commit: one ``telemetry/ack`` per (device, boot) naming its seqs."""
        seqs: dict[tuple[str, str], list[int]] = {}
        for r in records:
            if r.telemetry.boot is not None:
                seqs.setdefault((r.device, r.telemetry.boot), []).append(r.telemetry.seq)
        for (device, boot), numbers in seqs.items():
            topic = DeviceTopics(self.options.fleet, device).telemetry_ack
            for start in range(0, len(numbers), MAX_ACKED_SEQS):
                self.mqtt.publish(topic, TelemetryAck(boot, tuple(numbers[start:start + MAX_ACKED_SEQS])).to_bytes(),
                                  qos=0)

    def _on_telemetry(self, device: str, parsed: tuple[Telemetry, str]) -> None:
        telemetry, text = parsed
        self._ingest.put(("telemetry", TelemetryRecord(device, time.time(), telemetry, text)))
        self._heard_from(device)

    def _heard_from(self, device: str) -> None:
        """A device that sends telemetry or progress is online unless its last status said otherwise
        itself: the last status seen can be a stale Last Will (retained by a NATS node that died, after the
        device had reconnected elsewhere), or none (missed while this replica changed nodes). A gateway
        whose microcontroller does not answer says offline itself and still sends telemetry: it stays
        offline. Its unfinished job goes out now."""
        if self._online.get(device) or device in self._said_offline:  # without the lock: dict and set reads
            return
        with self._lock:
            self._online[device] = True
            self._presence.append((device, True, None))
            job = self._jobs.get(self._current.get(device, ""))
        if job is not None:
            self._send(job)

    def _on_progress(self, device: str, progress: Progress) -> None:
        self._ingest.put(("progress", device, progress, time.time()))
        self._heard_from(device)
        with self._lock:
            job = self._jobs.get(progress.job)
            if job is None or job.device != device:
                return
            job.last_word_mono = time.monotonic()
            if job.state != progress.state:
                log.info("%s: job %s %s%s", device, job.id[:8], progress.state,
                         f" ({progress.reason})" if progress.reason else "")
            job.state = progress.state
            if progress.state in TERMINAL_JOB_STATES:
                self._forget(job.id, BLOCK_UNKNOWN_JOB)

    def _on_get(self, device: str, req: BlockRequest) -> None:
        out, qos = DeviceTopics(self.options.fleet, device).ota_data, self.options.block_qos
        with self._lock:
            job = self._jobs.get(req.job)
            if job is not None and (job.device != device or job.kind != INSTALL):
                job = None  # another device's job, or a command: the same answer as for one that does not exist
            status = self._finished.get(req.job, BLOCK_UNKNOWN_JOB) if job is None else 0
            if job is not None:
                job.last_word_mono = time.monotonic()
            if job is not None and job.expires_at <= time.time() and job.state in EXPIRABLE_STATES:
                status = BLOCK_EXPIRED
        if status:
            self.mqtt.publish(out, Block(req.job, b"", req.offset, b"", status).to_bytes(), qos=qos)
            return
        assert job is not None
        prefix = bytes.fromhex(job.model_sha256[:16])
        if req.offset >= job.size:
            self.mqtt.publish(out, Block(job.id, prefix, req.offset, b"", BLOCK_BAD_RANGE).to_bytes(), qos=qos)
            return
        length = min(req.length, job.size - req.offset)
        try:
            data = os.pread(self._fd(job.artifact), length, req.offset)
        except OSError as exc:
            log.error("artifact %s: %s", job.artifact[:12], exc)
            data = b""
        if len(data) != length:  # the stored file shrank under us
            self.mqtt.publish(out, Block(job.id, prefix, req.offset, b"", BLOCK_UNAVAILABLE).to_bytes(), qos=qos)
            return
        self.mqtt.publish(out, Block(job.id, prefix, req.offset, data).to_bytes(), qos=qos)
        self.counters.blocks_served += 1
        self.counters.bytes_served += length
        with self._lock:
            served = self._served.setdefault(job.id, [0, 0])
            served[0] += 1
            served[1] += length

    # -- helpers --
    def _fd(self, artifact_id: str) -> int:
        fd = self._fds.get(artifact_id)
        if fd is None:
            fd = self._fds[artifact_id] = os.open(self.artifacts.model_path(artifact_id), os.O_RDONLY)
        return fd

    def _send(self, job: LiveJob, *, record_now: bool = False) -> None:
        """Publish the job; the first time, record it as sent (at once from an HTTP thread, else via ingest).
        A job no longer in the live table (finished, or withdrawn by a rollout's cancel) is not sent."""
        with self._lock:
            if self._jobs.get(job.id) is not job:
                return
            first = job.state == PENDING
            if first:
                job.state = SENT
            job.last_word_mono = time.monotonic()
            model = self._models.get(job.device)
        self.mqtt.publish(DeviceTopics(self.options.fleet, job.device).ota_job, job.message(time.time()), qos=1)
        if first:
            # a staged install notes what the device ran when it went out: what a revert goes back to
            previous: Any = ()
            if job.staged and job.device in self._models and (model is None or model.sha256 != job.model_sha256):
                previous = None if model is None else (model.name, model.version, model.sha256)
            if record_now:
                self.db.mark_sent(job.id, time.time())
                if previous != ():
                    self.db.note_previous(job.id, previous)
            else:
                self._ingest.put(("sent", job.id, time.time(), previous))
            log.info("%s: %s %s sent", job.device, "job" if job.kind == INSTALL else job.kind, job.id[:8])

    def _remember(self, row: JobRow, manifest: bytes | None = None, signature: bytes | None = None,
                  model_sha256: str | None = None) -> LiveJob:
        """Put a job into the in-memory table (caller holds the lock, or nothing runs yet)."""
        if manifest is None and row.kind == INSTALL:
            manifest, signature = self.artifacts.manifest(row.artifact)
        if model_sha256 is None:
            art = self.db.artifact(row.artifact)
            model_sha256 = art.model_sha256 if art else ""
        live = LiveJob(row.id, row.deployment, row.device, row.artifact, row.total, row.block_size, row.expires_at,
                       row.state, model_sha256 or "", manifest or b"", signature, row.kind, row.target_sha256,
                       row.staged)
        self._jobs[row.id] = live
        self._current[row.device] = row.id
        return live

    def _forget(self, job_id: str, block_status: int) -> None:
        """Drop a finished job from memory (caller holds the lock); later block requests get ``block_status``."""
        job = self._jobs.pop(job_id, None)
        if job is not None and self._current.get(job.device) == job_id:
            del self._current[job.device]
        self._finished[job_id] = block_status
        while len(self._finished) > 100000:
            self._finished.popitem(last=False)

    def _check_model_file(self, artifact_id: str, sha256: str, size: int) -> None:
        path = self.artifacts.model_path(artifact_id)
        digest = hashlib.sha256()
        try:
            with open(path, "rb") as f:
                for chunk in iter(lambda: f.read(1 << 20), b""):
                    digest.update(chunk)
        except FileNotFoundError:
            raise NotFound(f"artifact {artifact_id}: its model file is missing from the store") from None
        if digest.hexdigest() != sha256 or path.stat().st_size != size:
            raise BadInput(f"artifact {artifact_id}: the stored model no longer matches its manifest")

    # -- ingest thread --
    def _write_loop(self) -> None:
        next_housekeeping = 0.0
        next_prune = time.monotonic() + 60
        while True:
            try:
                first = self._ingest.get(timeout=self.options.housekeeping_s)
            except queue.Empty:
                first = ()
            if first is None:
                self._ingest.task_done()
                self._safely("housekeeping", self._housekeeping)
                return
            items = [first] if first else []
            while len(items) < 5000:
                try:
                    item = self._ingest.get_nowait()
                except queue.Empty:
                    break
                if item is None:
                    self._ingest.put(None)  # finish this batch first
                    self._ingest.task_done()
                    break
                items.append(item)
            if items:
                try:
                    self._apply(items)
                except Exception:  # a bad batch must not stop ingest
                    log.exception("could not write %d records", len(items))
                for _ in items:
                    self._ingest.task_done()
            now = time.monotonic()
            if now >= next_housekeeping:
                next_housekeeping = now + self.options.housekeeping_s
                self._safely("housekeeping", self._housekeeping)
            if now >= next_prune:
                next_prune = now + 3600
                self._safely("pruning old telemetry",
                             lambda: self.db.prune_telemetry(time.time() - self.options.retention_s))

    @staticmethod
    def _safely(what: str, step: Callable[[], object]) -> None:
        """A housekeeping step that fails (the database restarting) is logged; ingest goes on."""
        try:
            step()
        except Exception as exc:
            log.error("%s failed (%s: %s); trying again on the next round", what, type(exc).__name__, exc)

    def _apply(self, items: list[tuple]) -> None:
        """Write a batch in one transaction. Each record runs under its own SAVEPOINT: one that cannot
        be written (a value the database refuses, a constraint) costs only itself; it is counted in
        ``counters.write_failures`` and logged with its device, and the rest of the batch is written."""
        telemetry = [item[1] for item in items if item[0] == "telemetry"]
        with self._lock:  # blocks served so far go in with the reports that follow them
            served, self._served = self._served, {}
        with self.db.batch() as conn:
            if served:
                self.db.add_served({job: (b, n) for job, (b, n) in served.items()}, conn=conn)
            for item in items:
                if item[0] != "telemetry":
                    self._guarded(conn, item[1], item[0], functools.partial(self._write_record, conn, item))
            written, duplicates, acked = 0, [0], telemetry

            def record(batch: list[TelemetryRecord]) -> None:
                duplicates[0] += self.db.record_telemetry(batch, conn=conn)
            if telemetry and self._guarded(conn, None, "telemetry", functools.partial(record, telemetry),
                                           quiet=True) is None:
                written = len(telemetry)
            elif telemetry:  # one of them is bad, or lost a race with another replica: keep the others
                duplicates[0], acked = 0, []
                for one in telemetry:
                    failure = self._guarded(conn, one.device, "telemetry", functools.partial(record, [one]))
                    if failure is None:
                        written += 1
                    if failure is None or not lost_a_race(failure):
                        acked.append(one)
        # committed: acknowledge the records of the batch, those refused for a bad value too (a resend
        # cannot fix them), but not one that lost a race (a deadlock with another replica's batch): its
        # device sends it again; a failed transaction raised above and acknowledges nothing
        self.counters.telemetry_rows += written - duplicates[0]
        self.counters.telemetry_duplicates += duplicates[0]
        if acked:
            self._ack(acked)

    def _write_record(self, conn: Any, item: tuple) -> None:
        kind = item[0]
        if kind == "status":
            self.db.record_status(item[1], item[2], item[3], conn=conn)
        elif kind == "progress":
            self.db.record_progress(item[2].job, item[1], item[2], item[3], conn=conn)
        elif kind == "sent":
            self.db.mark_sent(item[1], item[2], conn=conn)
            if item[3] != ():
                self.db.note_previous(item[1], item[3], conn=conn)

    def _guarded(self, conn: Any, device: str | None, kind: str, write: Callable[[], object], *,
                 quiet: bool = False) -> Exception | None:
        """Run ``write`` under a SAVEPOINT; on failure undo only it and return the error. ``quiet``: a
        batch attempt whose records are retried one by one (neither counted nor logged)."""
        try:
            with conn.savepoint():
                write()
        except Exception as exc:
            if not quiet:
                self.counters.write_failures += 1
                log.error("%s: could not write its %s record (%s: %s); the rest of the batch is written%s",
                          device or "?", kind, type(exc).__name__, one_line(exc),
                          " (not acknowledged: the device sends it again)" if kind == "telemetry"
                          and lost_a_race(exc) else "")
            return exc
        return None

    def _resend_unanswered(self) -> None:
        """Send again a job its online device has said nothing of for ``job_resend_s``, whatever state it
        was last reported in: the job message, or the device's last progress, was lost (a subscription at
        QoS 0, a broker node that died with it in its queue, a subscription refused for a moment while a
        NATS node elected JetStream leaders). The device answers a job it runs with where it is, and one it
        finished with its last word again."""
        now = time.monotonic()
        if now - self._resend_checked < self.options.job_resend_s / 4:  # a scan of every live job: not each round
            return
        self._resend_checked = now
        with self._lock:
            due = [job for job in self._jobs.values()
                   if 0 < job.last_word_mono <= now - self.options.job_resend_s and self._online.get(job.device)]
        for job in due:
            self._send(job)
        if due:
            log.info("%d job(s) not heard of for %g s sent again", len(due), self.options.job_resend_s)

    def _housekeeping(self) -> None:
        with self._lock:
            served, self._served = self._served, {}
            presence, self._presence = self._presence, []
            online = sum(self._online.values()) if presence else 0
        self._log_presence(presence, online)
        if served:
            self.db.add_served({job: (b, n) for job, (b, n) in served.items()})
        self._poll_jobs()
        self._resend_unanswered()
        expired = self.db.expire_jobs(time.time())
        if expired:
            with self._lock:
                for job_id in expired:
                    job = self._jobs.get(job_id)
                    if job is not None:
                        log.info("%s: job %s expired", job.device, job_id[:8])
                    self._forget(job_id, BLOCK_EXPIRED)
