"""One simulated device agent that speaks the real MQTT protocol, without running a model.

A :class:`SimDevice` does what a board's agent does on the wire:

* a retained ``status`` (online, the model it serves, its tags, profile and the model's latency
  budget) on every connect; its Last Will says offline;
* ``telemetry`` every ``telemetry_interval_s`` with a ``seq`` that counts up (gaps are losses), a boot
  id per device start, and the counters and latency of :mod:`~lepton_edge.tools.devsim.workload`;
  resent until the controller acknowledges it, exactly as the agent does (the same
  :class:`lepton_edge.agent.telemetry_buffer.TelemetrySender`);
* OTA: the agent's own state machine and runner (:class:`lepton_edge.agent.ota.OtaRunner`), with the
  device as its :class:`~lepton_edge.agent.ota.UpdateTarget`: on ``ota/job`` it checks the manifest's
  signature against its trusted keys, refuses a version lower than its floor and a model over
  ``max_model_bytes`` (the profile check), all before asking for a byte; then asks for blocks on
  ``ota/get``, writes them in order (in a partial file under ``state_dir`` when given, so a restarted
  simulator resumes from the prefix it holds), verifies size and sha256 with
  :func:`lepton_edge.artifact.verify_model`, "activates" (a device with ``fail_health_check`` fails the
  health check and rolls back) and reports; revert and confirm commands follow the rules of
  :mod:`~lepton_edge.tools.devsim.slots` (where the factory model's part in a revert is explained).
"""

from __future__ import annotations

import json
import os
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lepton_edge.agent.health import latency_budget_ms
from lepton_edge.agent.ota import Checked, OtaRunner, route_ota
from lepton_edge.agent.telemetry_buffer import DEFAULT_CAPACITY, DEFAULT_RESEND_S, TelemetrySender
from lepton_edge.agent.update import OtaOptions
from lepton_edge.artifact import verify_manifest, verify_model
from lepton_edge.errors import BadInput, CheckFailed
from lepton_edge.fsio import atomic_write_text
from lepton_edge.mqtt import (
    BLOCK_OK,
    DEFAULT_FLEET,
    Block,
    BlockRequest,
    BrokerConfig,
    DeviceTopics,
    ModelInfo,
    MqttClient,
    NetworkLoop,
    OtaCommand,
    OtaJob,
    OtaState,
    Progress,
    SessionOptions,
    Status,
    TimerHandle,
    Will,
    offline_will_payload,
)
from lepton_edge.tools.devsim.eventlog import EventLog
from lepton_edge.tools.devsim.slots import FACTORY_MODEL, SlotModel, Slots
from lepton_edge.tools.devsim.workload import Workload

AGENT = "devsim"
PROFILE = "sim"
LATENCY_BUDGET_MS = 20.0  # the simulated agent's ``[health] latency_budget_ms``


@dataclass(frozen=True)
class SimOptions:
    fleet: str = DEFAULT_FLEET
    trusted_keys: tuple[Any, ...] = ()
    require_signature: bool = False
    max_model_bytes: int | None = None       # stands in for "fits the profile and runtime"
    telemetry_interval_s: float = 0.0        # 0: no periodic telemetry
    telemetry_resend_s: float = DEFAULT_RESEND_S  # resend an unacknowledged record after this long
    telemetry_buffer: int = DEFAULT_CAPACITY       # unacknowledged records kept (oldest dropped)
    window: int = 4                          # block requests in flight
    block_size: int | None = None            # None: the job's hint
    request_timeout_s: float = 5.0
    progress_interval_s: float = 0.25
    block_delay_s: float = 0.0               # pause before each request (a slow link, for fault tests)
    fail_health_check: bool = False          # activate, then roll back
    slow_factor: float = 1.0                 # latency times this on a model from an update
    error_fraction: float = 0.0              # inferences that fail on a model from an update
    factory_model: bool = False              # start serving the built-in sim-model v1 (slots.FACTORY_MODEL)
    tags: tuple[str, ...] = ()
    profile: str = PROFILE
    state_dir: Path | None = None            # None: keep everything in memory
    qos: int = 1
    session: SessionOptions = field(default_factory=lambda: SessionOptions(max_queued=1000, max_backoff_s=5.0))


class SimDevice:
    """One simulated agent. All methods but :meth:`start`, :meth:`stop` and the properties run on the loop."""

    def __init__(self, device_id: str, broker: BrokerConfig, options: SimOptions = SimOptions(),
                 loop: NetworkLoop | None = None, model: ModelInfo | None = None, *,
                 log: EventLog | None = None) -> None:
        self.id = device_id
        self.options = options
        self.topics = DeviceTopics(options.fleet, device_id)
        self.dir = options.state_dir / device_id if options.state_dir else None
        self.log = log
        if model is not None:
            self.slots = Slots(SlotModel(model.name, model.version, model.sha256), model.slot or "a")
        else:
            self.slots = Slots(FACTORY_MODEL if options.factory_model else None)
        self._load_state()
        self.telemetry_sent = 0                   # records made (distinct seqs of this start)
        self.telemetry_acked = 0                  # of those, first publishes the broker acknowledged (PUBACK)
        self.ota_blocks = 0                       # ota/data blocks received with data
        self.ota_duplicate_blocks = 0             # of those, a (job, offset) it had received already
        self._blocks_seen: dict[str, set[int]] = {}
        self.progress_log: list[Progress] = []
        self.workload = Workload(device_id, slow_factor=options.slow_factor, error_fraction=options.error_fraction)
        self._job: OtaJob | None = None           # the job being downloaded
        self._manifest: dict[str, Any] = {}       # its verified manifest
        self._slot: str | None = None             # where install() put it
        self._buffer: bytearray | None = None     # memory mode
        self._part: Path | None = None            # disk mode: the partial file
        self._telemetry_timer: TimerHandle | None = None
        self._tick: TimerHandle | None = None
        self._started = time.monotonic()
        self._rng = random.Random(device_id)
        self.client = MqttClient(broker, device_id,
                                 will=Will(self.topics.status, offline_will_payload(), qos=1, retain=True),
                                 session=options.session, loop=loop, on_connect=self._on_connect)
        self.telemetry = TelemetrySender(self.client, self.topics, capacity=options.telemetry_buffer,
                                         resend_s=options.telemetry_resend_s, qos=options.qos,
                                         on_broker_ack=self._count_puback)
        ota = OtaOptions(window=options.window, block_size=options.block_size,
                         request_timeout_s=options.request_timeout_s, progress_interval_s=options.progress_interval_s,
                         block_delay_s=options.block_delay_s)
        self.ota = OtaRunner(self, self.topics, self._publish, options=ota,
                             call_later=self.client.loop.call_later, on_progress=self._progress)
        self.router = route_ota(self.client, self.topics, self._on_ota_message,
                                self._on_block, label=device_id)

    # -- any thread --
    def start(self) -> None:
        self.client.start()
        self.client.loop.call_soon(self._start_timers)

    def stop(self, timeout: float = 3.0) -> None:
        """Say offline (clean shutdown: the Last Will stays unsent) and disconnect."""
        self.client.loop.call_soon(self._cancel_timers)
        self.client.stop(final=((self.topics.status, self._status(False, "shutdown"), 1, True),), timeout=timeout)

    def wait_state(self, states: set[str], timeout: float) -> Progress | None:
        """Wait for a progress report in ``states`` (tests)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for p in list(self.progress_log):
                if p.state in states:
                    return p
            time.sleep(0.02)
        return None

    @property
    def model(self) -> ModelInfo | None:
        return self.slots.info()

    @property
    def confirmed_version(self) -> int:
        return self.slots.floor

    @property
    def state(self) -> str | None:
        return self.progress_log[-1].state if self.progress_log else None

    @property
    def seq(self) -> int:
        """The next record's seq."""
        return self.telemetry.seq

    def counts(self) -> dict[str, int]:
        """What a fault test checks, under the names of ``fleet simulate``'s summary: records made, confirmed
        by the controller's acks, unconfirmed (made - confirmed), resent, dropped from the full buffer
        unconfirmed; first publishes the broker acknowledged; OTA blocks received, and duplicates."""
        c = self.telemetry.counts
        return {"telemetry_sent": self.telemetry_sent, "telemetry_acked": self.telemetry_acked,
                "telemetry_confirmed": c.confirmed, "telemetry_unconfirmed": c.unconfirmed,
                "telemetry_resent": c.resent, "telemetry_dropped": c.dropped,
                "ota_blocks": self.ota_blocks, "ota_duplicate_blocks": self.ota_duplicate_blocks}

    def stop_telemetry(self) -> None:
        """No more new records (the fleet lets what is in flight be acknowledged before disconnecting);
        unacknowledged ones are still resent until :meth:`stop`."""
        def cancel() -> None:
            if self._telemetry_timer is not None:
                self._telemetry_timer.cancel()
        self.client.loop.call_soon(cancel)

    @property
    def requests_sent(self) -> int:
        return self.ota.requests_sent

    # -- loop thread --
    def _start_timers(self) -> None:
        interval = self.options.telemetry_interval_s
        self.workload.sample(time.monotonic(), serving=False, updated=False)  # counting starts now
        if interval > 0:
            self._telemetry_timer = self.client.loop.call_later(self._rng.uniform(0, interval), self._telemetry_tick)
        self._tick = self.client.loop.call_later(0.5, self._timeout_tick)

    def _cancel_timers(self) -> None:
        for t in (self._telemetry_timer, self._tick):
            if t is not None:
                t.cancel()
        self.telemetry.stop()

    def _on_connect(self) -> None:
        self._publish_status()
        self.ota.on_reconnect()
        self.telemetry.on_reconnect()

    def _count_puback(self) -> None:
        self.telemetry_acked += 1

    def _on_block(self, _device: str, block: Block) -> None:
        if block.status == BLOCK_OK and block.data:
            self.ota_blocks += 1
            seen = self._blocks_seen.setdefault(block.job, set())
            if block.offset in seen:
                self.ota_duplicate_blocks += 1
            seen.add(block.offset)
        self.ota.on_data(block)

    def _status(self, online: bool, reason: str | None = None) -> bytes:
        current = self.slots.current
        budget = None if current is None else current.latency_budget_ms or LATENCY_BUDGET_MS
        return Status(online, self.slots.info(), AGENT, time.time(), reason, self.options.tags,
                      self.options.profile, budget).to_bytes()

    def _publish_status(self) -> None:
        self.client.publish(self.topics.status, self._status(True), qos=1, retain=True)

    def _publish(self, topic: str, payload: bytes, qos: int, retain: bool) -> None:
        """The runner's way out: block requests go to the device log too."""
        if self.log is not None and topic == self.topics.ota_get:
            r = BlockRequest.from_bytes(payload)
            self.log.write(self.id, "block", job=r.job, offset=r.offset, length=r.length)
        self.client.publish(topic, payload, qos, retain)

    def _progress(self, p: Progress) -> None:
        self.progress_log.append(p)
        if self.log is not None:
            self.log.write(self.id, "state", job=p.job, state=p.state, received=p.received, reason=p.reason,
                           sha256=p.model.sha256 if p.model else None)

    def _on_ota_message(self, _device: str, message: OtaJob | OtaCommand) -> None:
        machine = self.ota.machine
        repeat = message.job in machine.finished or (machine.download is not None
                                                     and machine.download.job.job == message.job)
        if isinstance(message, OtaCommand):
            if self.log is not None:
                self.log.write(self.id, "command", job=message.job, deployment=message.deployment,
                               action=message.action, sha256=message.sha256, repeat=repeat)
        elif self.log is not None:
            self.log.write(self.id, "job", job=message.job, deployment=message.deployment, sha256=message.sha256,
                           staged=message.staged, repeat=repeat)
        self.ota.on_job(message)  # the runner tells updates and commands apart

    def send_telemetry(self) -> None:
        stats = self.client.stats()
        current = self.slots.current
        s = self.workload.sample(time.monotonic(), serving=current is not None,
                                 updated=current is not None and not current.built_in)
        values: dict[str, Any] = {"uptime_s": round(time.monotonic() - self._started, 3),
                                  "inferences": s.inferences, "inferences_per_s": s.rate_per_s, "errors": s.errors,
                                  "arena_bytes": 65536, "rss_bytes": 48 * 1024 * 1024, "cpu_percent": 3.5,
                                  "mqtt_inflight": int(stats["inflight"]), "mqtt_queued": int(stats["queued"]),
                                  "mqtt_dropped": int(stats["dropped"]),
                                  "telemetry_dropped": self.telemetry.counts.dropped}
        if current is not None:
            values.update(model_name=current.name, model_version=current.version, latency_p50_ms=s.p50_ms,
                          latency_p99_ms=s.p99_ms, latency_max_ms=s.max_ms)
        self.telemetry.send(values)
        self.telemetry_sent += 1

    def _telemetry_tick(self) -> None:
        self.send_telemetry()
        self._telemetry_timer = self.client.loop.call_later(self.options.telemetry_interval_s, self._telemetry_tick)

    def _timeout_tick(self) -> None:
        self.ota.on_timer(self.client.connected)
        self._tick = self.client.loop.call_later(0.5, self._timeout_tick)

    # -- OTA: the UpdateTarget the runner drives (loop thread) --
    def _verify(self, manifest_bytes: bytes, signature: bytes | None, source: str) -> dict[str, Any]:
        opts = self.options
        return verify_manifest(manifest_bytes, signature, opts.trusted_keys,
                               require_signature=opts.require_signature, source=source)

    def check(self, job: OtaJob) -> Checked:
        manifest = self._verify(job.manifest_bytes, job.signature, "job manifest")
        model = self.slots.current
        if model is not None and model.sha256 == manifest["model"]["sha256"] and model.version == manifest["version"]:
            if self.slots.staged and not job.staged:  # a plain job for the held model: healthy means confirmed
                self.slots.confirm(model.sha256)
                self._save_state()
            return Checked(manifest, running=True)
        if manifest["version"] < self.slots.floor:
            raise CheckFailed(f"version {manifest['version']} is lower than the confirmed version {self.slots.floor}")
        size = manifest["model"]["size"]
        if self.options.max_model_bytes is not None and size > self.options.max_model_bytes:
            raise CheckFailed(f"model of {size} bytes does not fit the profile's {self.options.max_model_bytes} bytes")
        return Checked(manifest, running=False)

    def open(self, job: OtaJob, checked: Checked, block_size: int, replacing: OtaJob | None) -> int:
        """Where the model goes; returns how much of it is held already (a whole number of blocks)."""
        self._job, self._manifest, size = job, checked.manifest, checked.size
        self._buffer = self._part = None
        if self.dir is None:
            self._buffer = bytearray(size)
            return 0
        part_dir = self.dir / "partial" / self._manifest["model"]["sha256"]
        part_dir.mkdir(parents=True, exist_ok=True)
        self._part, mark = part_dir / "model.part", part_dir / "received"
        prefix = 0
        if self._part.exists() and mark.exists():
            prefix = min(int(mark.read_text() or 0), size)
            prefix -= prefix % block_size if prefix < size else 0
        with open(self._part, "ab") as f:
            f.truncate(prefix)
        return prefix

    def write(self, offset: int, data: bytes) -> None:
        if self._buffer is not None:
            self._buffer[offset:offset + len(data)] = data
            return
        assert self._part is not None
        fd = os.open(self._part, os.O_WRONLY)
        try:
            os.pwrite(fd, data, offset)
            os.fdatasync(fd)
        finally:
            os.close(fd)
        atomic_write_text(self._part.parent / "received", str(offset + len(data)))

    def drop(self) -> None:
        if self._part is not None:
            for p in (self._part, self._part.parent / "received"):
                try:
                    p.unlink()
                except FileNotFoundError:
                    pass

    def install(self) -> bool:
        data = bytes(self._buffer) if self._buffer is not None else self._part.read_bytes()  # type: ignore[union-attr]
        try:
            verify_model(data, self._manifest, "downloaded model")
        except BadInput:
            self.drop()
            raise
        m, job = self._manifest, self._job
        assert job is not None
        self._slot = self.slots.install(SlotModel(m["name"], m["version"], m["model"]["sha256"], job.manifest_bytes,
                                                  job.signature, latency_budget_ms(m, LATENCY_BUDGET_MS)))
        self._save_state()
        self.drop()
        return True

    def activate(self) -> str | None:
        assert self._slot is not None and self._job is not None
        if self.options.fail_health_check:
            return "health check failed (simulated)"
        self.slots.activate(self._slot, staged=self._job.staged)
        self._save_state()
        return None

    def revert(self, sha256: str | None) -> str | None:
        def reverify(model: SlotModel) -> None:
            assert model.manifest_bytes is not None
            manifest = self._verify(model.manifest_bytes, model.signature, "the previous model's manifest")
            if manifest["model"]["sha256"] != model.sha256:
                raise CheckFailed("the previous slot's manifest names another model")
        reason = self.slots.revert(sha256, reverify)
        self._save_state()
        return reason

    def confirm(self, sha256: str) -> str | None:
        reason = self.slots.confirm(sha256)
        self._save_state()
        return reason

    def reported_model(self, state: OtaState) -> ModelInfo | None:
        """The model a progress report names: the one that runs once a job is over, none before."""
        return self.slots.info() if state in (OtaState.HEALTHY, OtaState.ROLLED_BACK) else None

    def model_changed(self) -> None:
        # after the final progress report: the controller then has nothing to resend when it sees the status
        self._publish_status()

    # -- persisted state --
    def _load_state(self) -> None:
        if self.dir is None:
            return
        path = self.dir / "state.json"
        if path.exists():
            self.slots = Slots.from_dict(json.loads(path.read_text()))

    def _save_state(self) -> None:
        if self.dir is None:
            return
        self.dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(self.dir / "state.json", json.dumps(self.slots.as_dict()))
