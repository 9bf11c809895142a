"""Simulated device agents that speak the real MQTT protocol (tests, benchmarks, demos).

A :class:`SimDevice` does what a board's agent does on the wire, without running a model:

* a retained ``status`` (online, the model it runs) on every connect; its Last Will says offline;
* ``telemetry`` every ``telemetry_interval_s`` with a ``seq`` that counts up (gaps are losses);
* OTA: the agent's own state machine and runner (:class:`lepton_edge.agent.ota.OtaRunner`), with the
  device as its :class:`~lepton_edge.agent.ota.UpdateTarget`: on ``ota/job`` it checks the manifest's
  signature against its trusted keys, refuses a version lower than its confirmed one and a model over
  ``max_model_bytes`` (the profile check), all before asking for a byte; then asks for blocks on
  ``ota/get`` (``window`` in flight, re-asked after ``request_timeout_s`` and after every reconnect),
  writes them in order (in a partial file under ``state_dir`` when given, so a restarted simulator
  resumes from the prefix it holds), verifies size and sha256 with
  :func:`lepton_edge.artifact.verify_model`, "activates" and reports ``healthy``; every step goes to
  ``ota/progress``, a failure with its reason.

Hundreds of devices share one :class:`~lepton_edge.mqtt.NetworkLoop` thread; for thousands
use several processes: ``python -m lepton_edge.tools.devsim --broker URL --count N ...``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import random
import signal
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lepton_edge.agent.ota import Checked, OtaRunner, route_ota
from lepton_edge.agent.update import OtaOptions
from lepton_edge.artifact import verify_manifest, verify_model
from lepton_edge.errors import BadInput, CheckFailed, LeptonError
from lepton_edge.fsio import atomic_write_text
from lepton_edge.mqtt import (
    DEFAULT_FLEET,
    BrokerConfig,
    DeviceTopics,
    ModelInfo,
    MqttClient,
    NetworkLoop,
    OtaJob,
    OtaState,
    Progress,
    SessionOptions,
    Status,
    Telemetry,
    TimerHandle,
    Will,
    offline_will_payload,
    parse_broker_url,
)

log = logging.getLogger("lepton_edge.tools.devsim")


@dataclass(frozen=True)
class SimOptions:
    fleet: str = DEFAULT_FLEET
    trusted_keys: tuple = ()
    require_signature: bool = False
    max_model_bytes: int | None = None       # stands in for "fits the profile and runtime"
    telemetry_interval_s: float = 0.0        # 0: no periodic telemetry
    window: int = 4                          # block requests in flight
    block_size: int | None = None            # None: the job's hint
    request_timeout_s: float = 5.0
    progress_interval_s: float = 0.25
    block_delay_s: float = 0.0               # pause before each request (a slow link, for fault tests)
    fail_health_check: bool = False          # activate, then roll back
    state_dir: Path | None = None            # None: keep everything in memory
    qos: int = 1
    session: SessionOptions = field(default_factory=lambda: SessionOptions(max_queued=1000, max_backoff_s=5.0))


class SimDevice:
    """One simulated agent. All methods but :meth:`start`, :meth:`stop` and the properties run on the loop."""

    def __init__(self, device_id: str, broker: BrokerConfig, options: SimOptions = SimOptions(),
                 loop: NetworkLoop | None = None, model: ModelInfo | None = None) -> None:
        self.id = device_id
        self.options = options
        self.topics = DeviceTopics(options.fleet, device_id)
        self.dir = options.state_dir / device_id if options.state_dir else None
        self.model, self.confirmed_version = model, (model.version if model else -1)
        self._load_state()
        self.seq = 0
        self.telemetry_sent = 0
        self.progress_log: list[Progress] = []
        self._manifest: dict[str, Any] = {}       # of the job being downloaded
        self._buffer: bytearray | None = None     # memory mode
        self._part: Path | None = None            # disk mode: the partial file
        self._telemetry_timer: TimerHandle | None = None
        self._tick: TimerHandle | None = None
        self._started = time.monotonic()
        self._rng = random.Random(device_id)
        self._done = threading.Event()
        self.client = MqttClient(broker, device_id,
                                 will=Will(self.topics.status, offline_will_payload(), qos=1, retain=True),
                                 session=options.session, loop=loop, on_connect=self._on_connect)
        ota = OtaOptions(window=options.window, block_size=options.block_size,
                         request_timeout_s=options.request_timeout_s, progress_interval_s=options.progress_interval_s,
                         block_delay_s=options.block_delay_s)
        self.ota = OtaRunner(self, self.topics, self.client.publish, options=ota,
                             call_later=self.client.loop.call_later, on_progress=self.progress_log.append)
        self.router = route_ota(self.client, self.topics, lambda _device, job: self.ota.on_job(job),
                                lambda _device, block: self.ota.on_data(block), label=device_id)

    # -- any thread --
    def start(self) -> None:
        self.client.start()
        self.client.loop.call_soon(self._start_timers)

    def stop(self, timeout: float = 3.0) -> None:
        """Say offline (clean shutdown: the Last Will stays unsent) and disconnect."""
        self.client.loop.call_soon(self._cancel_timers)
        self.client.stop(final=((self.topics.status, Status(False, self.model, "devsim", time.time(),
                                                              "shutdown").to_bytes(), 1, True),), timeout=timeout)

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
    def state(self) -> str | None:
        return self.progress_log[-1].state if self.progress_log else None

    @property
    def requests_sent(self) -> int:
        return self.ota.requests_sent

    # -- loop thread --
    def _start_timers(self) -> None:
        interval = self.options.telemetry_interval_s
        if interval > 0:
            self._telemetry_timer = self.client.loop.call_later(self._rng.uniform(0, interval), self._telemetry_tick)
        self._tick = self.client.loop.call_later(0.5, self._timeout_tick)

    def _cancel_timers(self) -> None:
        for t in (self._telemetry_timer, self._tick):
            if t is not None:
                t.cancel()

    def _on_connect(self) -> None:
        self._publish_status()
        self.ota.on_reconnect()

    def _publish_status(self) -> None:
        self.client.publish(self.topics.status, Status(True, self.model, "devsim", time.time()).to_bytes(),
                            qos=1, retain=True)

    def send_telemetry(self) -> None:
        stats = self.client.stats()
        latency = 2.0 + self._rng.random()
        values: dict[str, Any] = {"uptime_s": round(time.monotonic() - self._started, 3), "inferences": self.seq * 10,
                  "inferences_per_s": 10.0, "errors": 0, "latency_p50_ms": round(latency, 3),
                  "latency_p99_ms": round(latency * 1.8, 3), "latency_max_ms": round(latency * 2.5, 3),
                  "arena_bytes": 65536, "rss_bytes": 48 * 1024 * 1024, "cpu_percent": 3.5,
                  "mqtt_inflight": int(stats["inflight"]), "mqtt_queued": int(stats["queued"]),
                  "mqtt_dropped": int(stats["dropped"])}
        if self.model is not None:
            values["model_name"], values["model_version"] = self.model.name, self.model.version
        self.client.publish(self.topics.telemetry, Telemetry(self.seq, time.time(), values).to_bytes(),
                            qos=self.options.qos)
        self.seq += 1
        self.telemetry_sent += 1

    def _telemetry_tick(self) -> None:
        self.send_telemetry()
        self._telemetry_timer = self.client.loop.call_later(self.options.telemetry_interval_s, self._telemetry_tick)

    def _timeout_tick(self) -> None:
        self.ota.on_timer(self.client.connected)
        self._tick = self.client.loop.call_later(0.5, self._timeout_tick)

    # -- OTA: the UpdateTarget the runner drives (loop thread) --
    def check(self, job: OtaJob) -> Checked:
        opts = self.options
        manifest = verify_manifest(job.manifest_bytes, job.signature, opts.trusted_keys,
                                   require_signature=opts.require_signature, source="job manifest")
        if (self.model is not None and self.model.sha256 == manifest["model"]["sha256"]
                and self.model.version == manifest["version"]):
            return Checked(manifest, running=True)
        if manifest["version"] < self.confirmed_version:
            raise CheckFailed(f"version {manifest['version']} is lower than the confirmed version "
                              f"{self.confirmed_version}")
        size = manifest["model"]["size"]
        if opts.max_model_bytes is not None and size > opts.max_model_bytes:
            raise CheckFailed(f"model of {size} bytes does not fit the profile's {opts.max_model_bytes} bytes")
        return Checked(manifest, running=False)

    def open(self, job: OtaJob, checked: Checked, block_size: int, replacing: OtaJob | None) -> int:
        """Where the model goes; returns how much of it is held already (a whole number of blocks)."""
        self._manifest, size = checked.manifest, checked.size
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
        return True

    def activate(self) -> str | None:
        if self.options.fail_health_check:
            self.drop()
            return "health check failed (simulated)"
        m = self._manifest
        slot = "b" if self.model is not None and self.model.slot == "a" else "a"
        self.model = ModelInfo(m["name"], m["version"], m["model"]["sha256"], slot)
        self.confirmed_version = max(self.confirmed_version, m["version"])
        self._save_state()
        self.drop()
        return None

    def reported_model(self, state: OtaState) -> ModelInfo | None:
        """The model a progress report names: the one that runs once a job is over, none before."""
        return self.model if state in (OtaState.HEALTHY, OtaState.ROLLED_BACK) else None

    def model_changed(self) -> None:
        # after the final progress report: the controller then has nothing to resend when it sees the status
        self._publish_status()

    # -- persisted state --
    def _load_state(self) -> None:
        if self.dir is None:
            return
        path = self.dir / "state.json"
        if path.exists():
            state = json.loads(path.read_text())
            self.model = ModelInfo(**state["model"]) if state.get("model") else None
            self.confirmed_version = state.get("confirmed_version", -1)

    def _save_state(self) -> None:
        if self.dir is None:
            return
        self.dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(self.dir / "state.json", json.dumps({
            "model": None if self.model is None else self.model.__dict__, "confirmed_version": self.confirmed_version}))


class SimFleet:
    """``count`` devices named ``<prefix><start + i>`` on one network loop."""

    def __init__(self, broker: BrokerConfig, count: int, *, prefix: str = "sim-", start: int = 0,
                 options: SimOptions = SimOptions()) -> None:
        self.loop = NetworkLoop("devsim")
        self.devices = [SimDevice(f"{prefix}{start + i:04d}", broker, options, self.loop) for i in range(count)]

    def start(self) -> None:
        self.loop.start()
        for d in self.devices:
            d.start()

    def wait_connected(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        return all(d.client.wait_connected(max(0.0, deadline - time.monotonic())) for d in self.devices)

    def burst(self, n: int) -> None:
        """Each device publishes ``n`` telemetry messages at once (from the loop thread)."""
        def go() -> None:
            for _ in range(n):
                for d in self.devices:
                    d.send_telemetry()
        self.loop.call_soon(go)

    def stop(self) -> None:
        for d in self.devices:
            d.stop()
        self.loop.stop()

    def summary(self) -> dict[str, Any]:
        stats = [d.client.stats() for d in self.devices]
        return {"devices": len(self.devices), "telemetry_sent": sum(d.telemetry_sent for d in self.devices),
                "dropped": sum(int(s["dropped"]) for s in stats), "connects": sum(int(s["connects"]) for s in stats),
                "outstanding": sum(int(s["inflight"]) + int(s["queued"]) for s in stats)}


def main(argv: list[str] | None = None) -> int:
    """Run simulated devices in this process. With ``--control`` it follows commands on stdin
    (``burst N``, ``stop``) and prints one JSON line per event on stdout (benchmarks)."""
    ap = argparse.ArgumentParser(description="simulated lepton-edge devices on MQTT")
    ap.add_argument("--broker", required=True)
    ap.add_argument("--ca"), ap.add_argument("--cert"), ap.add_argument("--key")
    ap.add_argument("--mqtt-version", default="5", choices=("5", "3.1.1"))
    ap.add_argument("--fleet", default=DEFAULT_FLEET)
    ap.add_argument("--count", type=int, default=1)
    ap.add_argument("--start", type=int, default=0)
    ap.add_argument("--prefix", default="sim-")
    ap.add_argument("--telemetry-interval", type=float, default=0.0)
    ap.add_argument("--trusted-key", action="append", default=[])
    ap.add_argument("--state-dir")
    ap.add_argument("--window", type=int, default=4)
    ap.add_argument("--block-delay", type=float, default=0.0)
    ap.add_argument("--max-model-bytes", type=int)
    ap.add_argument("--control", action="store_true", help="read commands on stdin, report JSON lines")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="devsim: %(message)s")
    try:
        from lepton_edge.artifact import load_public_key

        broker = parse_broker_url(args.broker, ca=args.ca, cert=args.cert, key=args.key, protocol=args.mqtt_version)
        keys = tuple(load_public_key(k) for k in args.trusted_key)
        options = SimOptions(fleet=args.fleet, trusted_keys=keys, require_signature=bool(keys),
                             telemetry_interval_s=args.telemetry_interval, window=args.window,
                             block_delay_s=args.block_delay, max_model_bytes=args.max_model_bytes,
                             state_dir=Path(args.state_dir) if args.state_dir else None)
    except LeptonError as exc:
        print(f"devsim: error: {exc}", file=sys.stderr)
        return 2
    def interrupted(*_: Any) -> None:
        raise KeyboardInterrupt
    signal.signal(signal.SIGTERM, interrupted)  # a clean stop: offline status, no Last Will
    fleet = SimFleet(broker, args.count, prefix=args.prefix, start=args.start, options=options)
    fleet.start()

    def say(event: str, **extra: Any) -> None:
        print(json.dumps({"event": event, **extra}), flush=True)

    if not fleet.wait_connected(60):
        say("error", message="not every device connected within 60 s")
    else:
        say("ready", devices=args.count)
    try:
        if args.control:
            for line in sys.stdin:
                cmd = line.split()
                if not cmd:
                    continue
                if cmd[0] == "burst":
                    fleet.burst(int(cmd[1]))
                    say("burst", n=int(cmd[1]))
                elif cmd[0] == "summary":
                    say("summary", **fleet.summary())
                elif cmd[0] == "stop":
                    break
        else:
            threading.Event().wait()
    except KeyboardInterrupt:
        pass
    fleet.stop()
    say("stopped", **fleet.summary())
    return 0


if __name__ == "__main__":
    sys.exit(main())
