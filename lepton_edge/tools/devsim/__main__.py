"""``python -m lepton_edge.tools.devsim``: simulated devices in this process, for the benchmarks and tests.

Devices ``<prefix><start + i>`` (four digits), no model at start (unless ``--factory-model``). With
``--control`` it follows commands on stdin (``burst N``, ``summary``, ``counts``: each device's,
``stop``) and prints one JSON line per event on stdout; ``stopped`` has the summary and each device's
counts (``device_counts``: id -> :meth:`~lepton_edge.tools.devsim.SimDevice.counts`).
People use ``lepton-edge fleet simulate`` instead.
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
import threading
from pathlib import Path
from typing import Any

from lepton_edge.commands.mqtt_args import add_broker_args, broker_from_args
from lepton_edge.errors import LeptonError
from lepton_edge.tools.devsim.device import SimOptions
from lepton_edge.tools.devsim.fleet import SimFleet


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="simulated lepton-edge devices on MQTT")
    add_broker_args(ap)  # --broker (repeatable: failover), TLS files, --mqtt-version, --subscribe-qos, --fleet
    ap.add_argument("--count", type=int, default=1)
    ap.add_argument("--start", type=int, default=0)
    ap.add_argument("--prefix", default="sim-")
    ap.add_argument("--telemetry-interval", type=float, default=0.0)
    ap.add_argument("--telemetry-resend", type=float, default=30.0, help="resend unacknowledged telemetry after S")
    ap.add_argument("--telemetry-buffer", type=int, default=360, help="unacknowledged records kept per device")
    ap.add_argument("--trusted-key", action="append", default=[])
    ap.add_argument("--state-dir")
    ap.add_argument("--window", type=int, default=4)
    ap.add_argument("--block-delay", type=float, default=0.0)
    ap.add_argument("--max-model-bytes", type=int)
    ap.add_argument("--factory-model", action="store_true", help="start serving the built-in sim-model v1")
    ap.add_argument("--control", action="store_true", help="read commands on stdin, report JSON lines")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="devsim: %(message)s")
    if not 0 < args.telemetry_resend <= 86400 or not 1 <= args.telemetry_buffer <= 100_000:
        print("devsim: error: --telemetry-resend must be 0 to 86400 s (not 0), --telemetry-buffer 1 to 100000",
              file=sys.stderr)
        return 2
    try:
        from lepton_edge.artifact import load_public_key

        broker = broker_from_args(args)
        keys = tuple(load_public_key(k) for k in args.trusted_key)
        options = SimOptions(fleet=args.fleet, trusted_keys=keys, require_signature=bool(keys),
                             telemetry_interval_s=args.telemetry_interval,
                             telemetry_resend_s=args.telemetry_resend, telemetry_buffer=args.telemetry_buffer,
                             window=args.window,
                             block_delay_s=args.block_delay, max_model_bytes=args.max_model_bytes,
                             factory_model=args.factory_model,
                             state_dir=Path(args.state_dir) if args.state_dir else None)
    except LeptonError as exc:
        print(f"devsim: error: {exc}", file=sys.stderr)
        return 2

    def interrupted(*_: Any) -> None:
        raise KeyboardInterrupt
    signal.signal(signal.SIGTERM, interrupted)  # a clean stop: offline status, no Last Will
    fleet = SimFleet(broker, args.count, prefix=args.prefix, start=args.start, options=options, digits=4)
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
                elif cmd[0] == "counts":
                    say("counts", device_counts=fleet.device_counts())
                elif cmd[0] == "stop":
                    break
        else:
            threading.Event().wait()
    except KeyboardInterrupt:
        pass
    fleet.stop()
    say("stopped", **fleet.summary(), device_counts=fleet.device_counts())
    return 0


if __name__ == "__main__":
    sys.exit(main())
