"""Simulated device agents that speak the real MQTT protocol (tests, benchmarks, demos).

A :class:`SimDevice` does what a board's agent does on the wire, without running a model:

* a retained ``status`` (online, the model it runs) on every connect; its Last Will says offline;
* ``telemetry`` every ``telemetry_interval_s`` with a ``seq`` that counts up (gaps are losses);
* OTA: on ``ota/job`` it checks the manifest's signature against its trusted keys, refuses a version
  lower than its confirmed one and a model over ``max_model_bytes`` (the profile check), all before
  asking for a byte; then asks for blocks on ``ota/get`` (``window`` in flight, re-asked after
  ``request_timeout_s`` and after every reconnect), reassembles them (in a partial file under
  ``state_dir`` when given, so a restarted simulator resumes from the contiguous prefix it holds),
  verifies size and sha256 with :func:`lepton_edge.artifact.verify_model`, "activates" and reports
  ``healthy``; every step goes to ``ota/progress``, a failure with its reason.

Hundreds of devices share one :class:`~lepton_edge.mqtt.NetworkLoop` thread; for thousands
use several processes: ``python -m lepton_edge.fleet.devsim --broker URL --count N ...``.
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

from lepton_edge.artifact import verify_manifest, verify_model
from lepton_edge.errors import BadInput, LeptonError
from lepton_edge.fsio import atomic_write_text
from lepton_edge.mqtt import (BLOCK_OK, DEFAULT_FLEET, Block, BlockRequest, BrokerConfig, DeviceTopics, ModelInfo,
                              OtaJob, PayloadError, Progress, SessionOptions, Status, Telemetry, Will,
                              offline_will_payload, parse_broker_url)
from lepton_edge.mqtt import MqttClient, NetworkLoop, TimerHandle

log = logging.getLogger("lepton_edge.fleet.devsim")


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


@dataclass
class _Download:
    job: OtaJob
    manifest: dict[str, Any]
    size: int
    block_size: int
    buffer: bytearray | None              # memory mode
    part: Path | None                     # disk mode: partial file
    have: set[int] = field(default_factory=set)         # block offsets written
    todo: list[int] = field(default_factory=list)       # offsets not yet asked for (ascending)
    outstanding: dict[int, float] = field(default_factory=dict)  # offset -> deadline
    requests: int = 0
    retries: int = 0
    started: float = field(default_factory=time.monotonic)
    last_progress: float = 0.0
    finished: bool = False


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
        self.requests_sent = 0
        self.finished_jobs: dict[str, Progress] = {}
        self._dl: _Download | None = None
        self._telemetry_timer: TimerHandle | None = None
        self._tick: TimerHandle | None = None
        self._started = time.monotonic()
        self._rng = random.Random(device_id)
        self._done = threading.Event()
        self.client = MqttClient(broker, device_id,
                                 will=Will(self.topics.status, offline_will_payload(), qos=1, retain=True),
                                 session=options.session, loop=loop, on_connect=self._on_connect)
        self.client.subscribe(self.topics.ota_job, self._on_job, qos=1)
        self.client.subscribe(self.topics.ota_data, self._on_data, qos=1)

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
        dl = self._dl
        if dl is not None and not dl.finished:  # what was in flight is probably lost: ask again
            for offset in list(dl.outstanding):
                self._request(dl, offset)

    def _publish_status(self) -> None:
        self.client.publish(self.topics.status, Status(True, self.model, "devsim", time.time()).to_bytes(),
                            qos=1, retain=True)

    def send_telemetry(self) -> None:
        stats = self.client.stats()
        latency = 2.0 + self._rng.random()
        values = {"uptime_s": round(time.monotonic() - self._started, 3), "inferences": self.seq * 10,
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
        dl = self._dl
        if dl is not None and not dl.finished and self.client.connected:
            now = time.monotonic()
            for offset, deadline in list(dl.outstanding.items()):
                if deadline <= now:
                    dl.retries += 1
                    self._request(dl, offset)
        self._tick = self.client.loop.call_later(0.5, self._timeout_tick)

    # OTA
    def _progress(self, job: OtaJob, state: str, received: int = 0, reason: str | None = None,
                  model: ModelInfo | None = None) -> None:
        p = Progress(job.job, state, received, job.size, reason, model, time.time())
        self.progress_log.append(p)
        if state in ("healthy", "failed", "rolled_back"):
            self.finished_jobs[job.job] = p
        self.client.publish(self.topics.ota_progress, p.to_bytes(), qos=1)

    def _on_job(self, topic: str, payload: bytes) -> None:
        try:
            job = OtaJob.from_bytes(payload)
        except PayloadError as exc:
            log.warning("%s: %s", self.id, exc)
            return
        dl = self._dl
        if dl is not None and dl.job.job == job.job and not dl.finished:
            for offset in list(dl.outstanding):  # sent again (we reconnected): nudge what is in flight
                self._request(dl, offset)
            self._pump(dl)
            return
        if job.job in self.finished_jobs:  # the controller may have missed our last word
            self.client.publish(self.topics.ota_progress, self.finished_jobs[job.job].to_bytes(), qos=1)
            return
        opts = self.options
        try:  # every check before the first byte is asked for
            manifest = verify_manifest(job.manifest_bytes, job.signature, opts.trusted_keys,
                                       require_signature=opts.require_signature, source="job manifest")
        except BadInput as exc:
            return self._progress(job, "failed", reason=str(exc))
        if (self.model is not None and self.model.sha256 == manifest["model"]["sha256"]
                and self.model.version == manifest["version"]):
            return self._progress(job, "healthy", job.size, model=self.model)
        if manifest["version"] < self.confirmed_version:
            return self._progress(job, "failed", reason=f"version {manifest['version']} is lower than the confirmed "
                                                        f"version {self.confirmed_version}")
        size = manifest["model"]["size"]
        if opts.max_model_bytes is not None and size > opts.max_model_bytes:
            return self._progress(job, "failed", reason=f"model of {size} bytes does not fit the profile's "
                                                        f"{opts.max_model_bytes} bytes")
        self._progress(job, "accepted")
        self._begin(job, manifest, size)

    def _begin(self, job: OtaJob, manifest: dict[str, Any], size: int) -> None:
        bs = self.options.block_size or job.block_size
        dl = _Download(job, manifest, size, bs, None, None)
        prefix = 0
        if self.dir is not None:
            part_dir = self.dir / "partial" / manifest["model"]["sha256"]
            part_dir.mkdir(parents=True, exist_ok=True)
            dl.part = part_dir / "model.part"
            mark = part_dir / "received"
            if dl.part.exists() and mark.exists():
                prefix = min(int(mark.read_text() or 0), size)
                prefix -= prefix % bs if prefix < size else 0
            with open(dl.part, "ab") as f:
                f.truncate(prefix)
        else:
            dl.buffer = bytearray(size)
        dl.have = set(range(0, prefix, bs))
        dl.todo = [o for o in range(prefix, size, bs)]
        self._dl = dl
        self._progress(job, "downloading", prefix)
        if not dl.todo:
            return self._finish(dl)
        self._pump(dl)

    def _pump(self, dl: _Download) -> None:
        while dl.todo and len(dl.outstanding) < self.options.window:
            offset = dl.todo.pop(0)
            if self.options.block_delay_s > 0:
                dl.outstanding[offset] = time.monotonic() + self.options.block_delay_s + self.options.request_timeout_s
                self.client.loop.call_later(self.options.block_delay_s, self._request, dl, offset)
            else:
                self._request(dl, offset)

    def _request(self, dl: _Download, offset: int) -> None:
        if dl.finished or self._dl is not dl or offset in dl.have:
            return
        dl.outstanding[offset] = time.monotonic() + self.options.request_timeout_s
        length = min(dl.block_size, dl.size - offset)
        dl.requests += 1
        self.requests_sent += 1
        self.client.publish(self.topics.ota_get, BlockRequest(dl.job.job, offset, length).to_bytes(), qos=1)

    def _on_data(self, topic: str, payload: bytes) -> None:
        try:
            block = Block.from_bytes(payload)
        except PayloadError as exc:
            log.warning("%s: %s", self.id, exc)
            return
        dl = self._dl
        if dl is None or dl.finished or block.job != dl.job.job:
            return
        if block.status != BLOCK_OK:
            return self._fail(dl, f"the controller refused block {block.offset}: {block.status_text}")
        if block.sha_prefix != bytes.fromhex(dl.manifest["model"]["sha256"][:16]):
            return self._fail(dl, "a block belongs to another model (sha256 prefix differs)")
        if block.offset not in dl.outstanding or block.offset in dl.have:
            return  # a duplicate (we asked twice): already written
        if len(block.data) != min(dl.block_size, dl.size - block.offset):
            return self._fail(dl, f"block {block.offset} has {len(block.data)} bytes")
        self._write(dl, block.offset, block.data)
        del dl.outstanding[block.offset]
        dl.have.add(block.offset)
        received = min(len(dl.have) * dl.block_size, dl.size)
        now = time.monotonic()
        if len(dl.have) * dl.block_size >= dl.size:
            return self._finish(dl)
        if now - dl.last_progress >= self.options.progress_interval_s:
            dl.last_progress = now
            self._progress(dl.job, "downloading", received)
        self._pump(dl)

    def _write(self, dl: _Download, offset: int, data: bytes) -> None:
        if dl.buffer is not None:
            dl.buffer[offset:offset + len(data)] = data
            return
        assert dl.part is not None
        fd = os.open(dl.part, os.O_WRONLY)
        try:
            os.pwrite(fd, data, offset)
            os.fdatasync(fd)
        finally:
            os.close(fd)
        prefix = 0
        while prefix in dl.have or prefix == offset:
            prefix += dl.block_size
        atomic_write_text(dl.part.parent / "received", str(min(prefix, dl.size)))

    def _finish(self, dl: _Download) -> None:
        dl.finished = True
        self._progress(dl.job, "verifying", dl.size)
        data = bytes(dl.buffer) if dl.buffer is not None else dl.part.read_bytes()  # type: ignore[union-attr]
        try:
            verify_model(data, dl.manifest, "downloaded model")
        except BadInput as exc:
            self._discard(dl)
            return self._progress(dl.job, "failed", dl.size, reason=str(exc))
        self._progress(dl.job, "activating", dl.size)
        if self.options.fail_health_check:
            self._discard(dl)
            return self._progress(dl.job, "rolled_back", dl.size, reason="health check failed (simulated)",
                                  model=self.model)
        m = dl.manifest
        slot = "b" if self.model is not None and self.model.slot == "a" else "a"
        self.model = ModelInfo(m["name"], m["version"], m["model"]["sha256"], slot)
        self.confirmed_version = max(self.confirmed_version, m["version"])
        self._save_state()
        self._discard(dl)
        # healthy before the new status: the controller then has nothing to resend when it sees the status
        self._progress(dl.job, "healthy", dl.size, model=self.model)
        self._publish_status()

    def _fail(self, dl: _Download, reason: str) -> None:
        dl.finished = True
        self._discard(dl)
        self._progress(dl.job, "failed", len(dl.have) * dl.block_size, reason=reason)

    def _discard(self, dl: _Download) -> None:
        if dl.part is not None:
            for p in (dl.part, dl.part.parent / "received"):
                try:
                    p.unlink()
                except FileNotFoundError:
                    pass

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
