"""``lepton-edge fleet simulate``: N simulated devices over K processes, until stopped.

The parent checks the flags, draws the fleet plan (:func:`~lepton_edge.tools.devsim.fleet.plan_fleet`:
which devices fail their updates and which run slower after one, from ``--seed``) and, with one
process, runs the devices itself; with more, it starts K children, the same command with the hidden
``--shard I``: each draws the same plan and runs its share (devices ``I*N/K .. (I+1)*N/K - 1``) on one
network loop, printing a JSON snapshot a second on stdout for the parent. The parent prints a
progress line a second (when something changed) and a table at the end, or JSON lines with
``--json`` (``start`` with the failing and slow ids, ``progress`` every second, ``summary`` at the end).

SIGINT or SIGTERM (or ``--duration``) stops it cleanly: every device says offline and disconnects.
A child whose parent is gone (its stdin closes) stops too. The devices reconnect with backoff if the
broker goes away. With ``--log-dir`` each process appends its devices' events to
``<prefix>p<I>.jsonl`` there (:mod:`~lepton_edge.tools.devsim.eventlog`).
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import IO, Any

from lepton_edge.console import render_table
from lepton_edge.errors import BadInput, CheckFailed
from lepton_edge.mqtt import MAX_TAGS, BrokerConfig, check_name, valid_tag
from lepton_edge.tools.devsim.fleet import (
    COUNT_KEYS,
    FLEET_OPTIONS,
    FleetPlan,
    SimFleet,
    device_id,
    each_broker,
    plan_fleet,
)
from lepton_edge.tools.devsim.limits import SPARE_FDS, raise_open_files, sockets_allowed

MAX_DEVICES, MAX_PROCESSES = 1_000_000, 256
DEVICES_PER_PROCESS = 800  # --processes auto: what one network-loop thread serves with room for reconnect storms
STOP_TIMEOUT_S = 60.0
Snapshot = dict[str, Any]
Brokers = BrokerConfig | Sequence[BrokerConfig]


def auto_processes(devices: int) -> int:
    """``--processes auto``: one process per :data:`DEVICES_PER_PROCESS` devices, rounded up."""
    return max(1, -(-devices // DEVICES_PER_PROCESS))


def check_args(args: argparse.Namespace) -> None:
    """Every flag's range, as a one-line BadInput; resolves ``--processes auto`` to a number."""
    if not 1 <= args.devices <= MAX_DEVICES:
        raise BadInput(f"--devices must be 1 to {MAX_DEVICES}")
    if isinstance(args.processes, str):
        if args.processes == "auto":
            args.processes = min(auto_processes(args.devices), MAX_PROCESSES)
        else:
            try:
                args.processes = int(args.processes)
            except ValueError:
                raise BadInput(f"--processes {args.processes!r}: a number or auto") from None
    if not 1 <= args.processes <= min(MAX_PROCESSES, args.devices):
        raise BadInput(f"--processes must be 1 to {min(MAX_PROCESSES, args.devices)} (at most one per device)")
    for flag in ("fail_rate", "slow_rate"):
        if not 0.0 <= getattr(args, flag) <= 1.0:
            raise BadInput(f"--{flag.replace('_', '-')} is a fraction: 0 to 1")
    if not 1.0 <= args.slow_factor <= 1000.0:
        raise BadInput("--slow-factor must be 1 to 1000")
    if not 0.0 <= args.telemetry_interval <= 3600.0:
        raise BadInput("--telemetry-interval must be 0 (none) to 3600 s")
    resend = args.telemetry_resend
    if resend is not None and not 0.0 < resend <= 3600.0:
        raise BadInput("--telemetry-resend must be more than 0 and at most 3600 s")
    if args.duration is not None and args.duration <= 0:
        raise BadInput("--duration must be positive")
    try:
        check_name(device_id(args.id_prefix, args.devices - 1))
    except BadInput:
        raise BadInput(f"--id-prefix {args.id_prefix!r}: device ids are <prefix>00000 and up; use letters, digits, "
                       "'.', '_' or '-', starting with a letter or digit, 64 characters in all") from None
    bad = [t for t in args.tags if not valid_tag(t)]
    if bad or len(args.tags) > MAX_TAGS:
        raise BadInput(f"--tags {bad[0]!r}: a tag is 1 to 64 printable characters, no spaces" if bad
                       else f"--tags: at most {MAX_TAGS} tags")


def check_open_files(plan: FleetPlan) -> None:
    """Raise this process's open-file limit (children inherit it) so the largest share fits, or say why not."""
    most = max(share.count for share in plan.shares)
    raise_open_files(most + SPARE_FDS)
    if most > sockets_allowed():
        raise BadInput(f"{most} devices in one process need {most + SPARE_FDS} open files but the limit is "
                       f"{sockets_allowed() + SPARE_FDS} (ulimit -n): use more --processes")


def broker_urls(args: argparse.Namespace) -> list[str]:
    """Every ``--broker`` URL (the shared broker options keep the list in ``args.brokers``)."""
    return list(getattr(args, "brokers", None) or [args.broker])


def child_argv(args: argparse.Namespace, shard: int) -> list[str]:
    """The command line of the child that runs ``shard``: the parent's flags, one process's worth."""
    argv = [sys.executable, "-m", "lepton_edge", "fleet", "simulate"]
    for url in broker_urls(args):
        argv += ["--broker", url]
    argv += ["--mqtt-version", args.mqtt_version, "--subscribe-qos", str(args.subscribe_qos),
             "--fleet", args.fleet, "--devices", str(args.devices),
            "--processes", str(args.processes), "--id-prefix", args.id_prefix, "--fail-rate", repr(args.fail_rate),
            "--slow-rate", repr(args.slow_rate), "--slow-factor", repr(args.slow_factor), "--seed", str(args.seed),
            "--telemetry-interval", repr(args.telemetry_interval), "--shard", str(shard)]
    for flag in ("ca", "cert", "key", "log_dir"):
        if getattr(args, flag):
            argv += [f"--{flag.replace('_', '-')}", str(Path(getattr(args, flag)).resolve())]
    for key in args.trusted_key:
        argv += ["--trusted-key", str(Path(key).resolve())]
    if args.tags:
        argv += ["--tags", *args.tags]
    if args.telemetry_resend is not None:
        argv += ["--telemetry-resend", repr(args.telemetry_resend)]
    return argv


def load_keys(paths: list[str]) -> tuple[Any, ...]:
    from lepton_edge.artifact import load_public_key

    keys = []
    for path in paths:
        try:
            keys.append(load_public_key(path))
        except BadInput as exc:
            raise BadInput(f"--trusted-key {path}: {exc}") from None
    return tuple(keys)


def build_fleet(args: argparse.Namespace, broker: Brokers, plan: FleetPlan, shard: int,
                keys: tuple[Any, ...]) -> SimFleet:
    share = plan.shares[shard]
    options = replace(FLEET_OPTIONS, fleet=args.fleet, trusted_keys=keys, require_signature=bool(keys),
                      telemetry_interval_s=args.telemetry_interval)
    if args.telemetry_resend is not None:  # --telemetry-resend S (default 30)
        options = replace(options, telemetry_resend_s=args.telemetry_resend)
    return SimFleet(broker, share.count, prefix=args.id_prefix, start=share.start, options=options,
                    fail=share.fail, slow=share.slow, slow_factor=args.slow_factor, tags=tuple(args.tags),
                    log_dir=Path(args.log_dir) if args.log_dir else None, log_name=f"{args.id_prefix}p{shard}")


def _quiet_logs() -> None:
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr, format="fleet simulate: %(message)s")
    logging.getLogger("lepton_edge.mqtt.client").setLevel(logging.ERROR)  # the progress line shows connections


def _stop_on_signals(stop: threading.Event) -> None:
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())


def run_shard(args: argparse.Namespace, broker: Brokers, plan: FleetPlan, keys: tuple[Any, ...]) -> int:
    """A child: run one share, a JSON snapshot a second on stdout, until a signal or the parent is gone."""
    _quiet_logs()
    stop = threading.Event()
    _stop_on_signals(stop)

    def watch_parent() -> None:
        sys.stdin.read()  # returns when the parent closes our stdin or dies
        stop.set()
    threading.Thread(target=watch_parent, name="parent", daemon=True).start()
    fleet = build_fleet(args, broker, plan, args.shard, keys)
    fleet.start()
    while not stop.wait(1.0):
        _say(sys.stdout, {"shard": args.shard, **fleet.snapshot()})
    last = fleet.snapshot()
    fleet.stop()
    _say(sys.stdout, {"shard": args.shard, **last, **fleet.summary(), "final": True})
    return 0


class Children:
    """The K child processes and their latest snapshots."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.latest: list[Snapshot | None] = [None] * args.processes
        self.final: list[Snapshot | None] = [None] * args.processes
        self.procs = [subprocess.Popen(child_argv(args, k), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                       text=True) for k in range(args.processes)]
        self._readers = [threading.Thread(target=self._read, args=(k, p.stdout), daemon=True)
                         for k, p in enumerate(self.procs)]
        for t in self._readers:
            t.start()

    def _read(self, k: int, stream: IO[str] | None) -> None:
        assert stream is not None
        for line in stream:
            try:
                snap = json.loads(line)
            except json.JSONDecodeError:
                continue
            self.latest[k] = snap
            if snap.get("final"):
                self.final[k] = snap

    def snapshots(self) -> list[Snapshot | None]:
        return list(self.latest)

    def failed(self) -> str | None:
        for k, p in enumerate(self.procs):
            code = p.poll()
            if code is not None and self.final[k] is None:
                return f"simulator process {k} exited with code {code}"
        return None

    def stop(self) -> list[Snapshot | None]:
        for p in self.procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + STOP_TIMEOUT_S
        for k, p in enumerate(self.procs):
            try:
                p.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
            self._readers[k].join(5)
            if p.stdin is not None:
                p.stdin.close()
        return [f or last for f, last in zip(self.final, self.latest, strict=True)]


class Local:
    """One process: the devices run here."""

    def __init__(self, args: argparse.Namespace, broker: Brokers, plan: FleetPlan,
                 keys: tuple[Any, ...]) -> None:
        self.fleet = build_fleet(args, broker, plan, 0, keys)
        self.fleet.start()

    def snapshots(self) -> list[Snapshot | None]:
        return [{"shard": 0, **self.fleet.snapshot()}]

    def failed(self) -> str | None:
        return None

    def stop(self) -> list[Snapshot | None]:
        last = self.fleet.snapshot()
        self.fleet.stop()
        return [{"shard": 0, **last, **self.fleet.summary(), "final": True}]


def merge(snaps: list[Snapshot | None], devices: int) -> Snapshot:
    """The whole fleet's counts from the processes' snapshots (a process not heard from yet counts as nothing)."""
    models: Counter[str] = Counter()
    ota: Counter[str] = Counter()
    summed = ("connected", *COUNT_KEYS, "connects", "dropped")
    total = {"devices": devices, **dict.fromkeys(summed, 0)}
    for s in snaps:
        if s is None:
            continue
        for key in summed:
            total[key] += int(s.get(key, 0))
        models.update(s.get("models", {}))
        ota.update(s.get("ota", {}))
    return {**total, "models": dict(sorted(models.items())), "ota": dict(sorted(ota.items()))}


def progress_line(m: Snapshot) -> str:
    """``connected 40/40; serving sim-model v1: 36, sim-model v2: 4; updates: 4 healthy, 2 rolled_back``"""
    models = ", ".join(f"{name}: {n}" for name, n in m["models"].items()) or "-"
    line = f"connected {m['connected']}/{m['devices']}; serving {models}"
    if m["ota"]:
        line += "; updates: " + ", ".join(f"{n} {state}" for state, n in m["ota"].items())
    return line


def _say(stream: IO[str], obj: Snapshot) -> None:
    stream.write(json.dumps(obj, separators=(",", ":")) + "\n")
    stream.flush()


def _ids(prefix: str, indices: tuple[int, ...]) -> list[str]:
    return [device_id(prefix, i) for i in indices]


def simulate(args: argparse.Namespace, broker: Brokers, out: IO[str] = sys.stdout,
             err: IO[str] = sys.stderr) -> int:
    """The parent: plan, start the devices (here or in children), report, stop cleanly."""
    check_args(args)
    plan = plan_fleet(args.devices, args.processes, fail_rate=args.fail_rate, slow_rate=args.slow_rate,
                      seed=args.seed)
    keys = load_keys(args.trusted_key)
    check_open_files(plan)
    if args.shard is not None:
        if not 0 <= args.shard < args.processes:
            raise BadInput(f"--shard must be 0 to {args.processes - 1}")
        return run_shard(args, broker, plan, keys)
    if not args.trusted_key:
        print("fleet simulate: no --trusted-key given: the simulated devices check no signatures", file=err, flush=True)
    _quiet_logs()
    brokers = each_broker(broker)  # for display
    failing, slow = _ids(args.id_prefix, plan.fail), _ids(args.id_prefix, plan.slow)
    first, last = device_id(args.id_prefix, 0), device_id(args.id_prefix, args.devices - 1)
    if args.json:
        _say(out, {"event": "start", "devices": args.devices, "processes": args.processes, "fleet": args.fleet,
                   "broker": brokers[0].display_url, "brokers": [b.display_url for b in brokers],
                   "first": first, "last": last, "seed": args.seed,
                   "failing": failing, "slow": slow, "slow_factor": args.slow_factor,
                   "checks_signatures": bool(args.trusted_key), "log_dir": args.log_dir})
    else:
        where = ", ".join(b.display_url for b in brokers)
        print(f"fleet simulate: {args.devices} devices {first} .. {last} in {args.processes} process(es), fleet "
              f"{args.fleet} on {where}; {_listed(failing)} fail their updates, {_listed(slow)} run "
              f"{args.slow_factor:g}x slower after one (seed {args.seed})", file=out, flush=True)
    stop = threading.Event()
    _stop_on_signals(stop)
    started = time.monotonic()
    runner: Children | Local = Children(args) if args.processes > 1 else Local(args, broker, plan, keys)
    printed, error = "", None
    try:
        while not stop.wait(1.0):
            elapsed = time.monotonic() - started
            merged = merge(runner.snapshots(), args.devices)
            if args.json:
                _say(out, {"event": "progress", "elapsed_s": round(elapsed, 1), **merged})
            else:
                line = progress_line(merged)
                if line != printed:  # a line a second, when something changed
                    print(f"[{elapsed:5.0f} s] {line}", file=out, flush=True)
                    printed = line
            error = runner.failed()
            if error or (args.duration is not None and elapsed >= args.duration):
                break
    finally:
        finals = runner.stop()
    elapsed = time.monotonic() - started
    _report(args, finals, elapsed, failing, slow, out)
    if error:
        raise CheckFailed(error)
    return 0


def _listed(ids: list[str]) -> str:
    if not ids:
        return "none"
    return f"{len(ids)} ({', '.join(ids)})" if len(ids) <= 8 else f"{len(ids)} (--json lists them)"


def _report(args: argparse.Namespace, finals: list[Snapshot | None], elapsed: float, failing: list[str],
            slow: list[str], out: IO[str]) -> None:
    merged = merge(finals, args.devices)
    if args.json:
        _say(out, {"event": "summary", "elapsed_s": round(elapsed, 1), **merged, "failing": failing, "slow": slow,
                   "processes": [s for s in finals if s is not None]})
        return
    keys = ("devices", "connected", "telemetry_sent", "telemetry_acked", "connects", "dropped")
    rows = [[k, *(s.get(key, "?") if s else "?" for key in keys)] for k, s in enumerate(finals)]
    if len(rows) > 1:
        rows.append(["all", *(merged[key] for key in keys)])
    print(f"\nsimulated {args.devices} devices for {elapsed:.0f} s", file=out)
    print(render_table(["process", "devices", "connected at stop", "telemetry sent", "acknowledged", "connects",
                        "dropped"], rows, align="rrrrrrr"), file=out)
    unacked = merged["telemetry_sent"] - merged["telemetry_acked"]
    print(f"telemetry at QoS 1: {merged['telemetry_sent']} sent, {merged['telemetry_acked']} acknowledged by the "
          f"broker, {unacked} not acknowledged", file=out)
    print(f"telemetry records: {merged['telemetry_confirmed']} confirmed by the controller, "
          f"{merged['telemetry_unconfirmed']} not ({merged['telemetry_dropped']} dropped from a full buffer), "
          f"{merged['telemetry_resent']} resends", file=out)
    print(f"OTA blocks received: {merged['ota_blocks']} ({merged['ota_duplicate_blocks']} duplicates)", file=out)
    print("serving: " + (", ".join(f"{n} {name}" for name, n in merged["models"].items()) or "-"), file=out)
    print("updates (each device's last): " + (", ".join(f"{n} {s}" for s, n in merged["ota"].items()) or "none"),
          file=out, flush=True)

