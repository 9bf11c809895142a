"""``lepton-edge fleet serve | watch | simulate``: the OTA and telemetry controller, a live view of the fleet,
and simulated devices to try them with."""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
from pathlib import Path
from typing import Any

from lepton_edge.commands.mqtt_args import add_broker_args, broker_from_args
from lepton_edge.errors import BadInput


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser("fleet", help="run the fleet controller, or watch the fleet",
                                   description="The fleet side of OTA updates and telemetry over MQTT.")
    sub = parser.add_subparsers(dest="fleet_command", metavar="SUBCOMMAND")
    sub.required = True

    serve = sub.add_parser("serve", help="run the controller (OTA block server, telemetry ingest, HTTP API)",
                           description="Keep artifacts, send OTA jobs and serve their blocks, record devices, "
                                       "telemetry and job progress in SQLite or PostgreSQL, and offer the HTTP "
                                       "API. Runs until interrupted; reconnects to the broker with backoff.")
    add_broker_args(serve)
    serve.add_argument("--store", required=True, metavar="DIR", help="where artifacts (and by default the db) live")
    serve.add_argument("--db", metavar="FILE|URL",
                       help="the fleet's database: a SQLite file or sqlite:///path (default DIR/fleet.db), or "
                            "postgresql://user[:password]@host[:port]/database (password also from PGPASSWORD; "
                            "docs/STORE.md)")
    serve.add_argument("--http", default="127.0.0.1:8788", metavar="HOST:PORT",
                       help="HTTP API address (default 127.0.0.1:8788; port 0 picks one; a non-loopback "
                            "address requires a bearer token)")
    serve.add_argument("--token-file", metavar="FILE",
                       help="bearer token for the API (default off loopback: generated into DIR/api.token)")
    serve.add_argument("--trusted-key", action="append", default=[], metavar="PUB",
                       help="accept only uploads signed by this key (repeatable; devices check anyway)")
    serve.add_argument("--client-id", metavar="ID",
                       help="MQTT client id and replica id, with a persistent session (default "
                            "lepton-edge-controller-FLEET-HOST-PID with a clean session: several replicas on one "
                            "database and broker act as one controller; docs/REPLICAS.md)")
    serve.add_argument("--job-expiry", type=float, default=3600.0, metavar="S",
                       help="default lifetime of an OTA job in seconds (default 3600)")
    serve.add_argument("--block-size", type=int, default=65536, metavar="N",
                       help="block size hint sent with jobs (default 65536)")
    serve.add_argument("--block-qos", type=int, choices=(0, 1), default=1,
                       help="QoS of the OTA blocks sent (default 1; 0 on NATS, where every QoS 1 message is a "
                            "JetStream write: a device re-asks a lost block at its timeout; docs/BROKERS.md)")
    serve.add_argument("--retention-hours", type=float, default=168.0, metavar="H",
                       help="keep telemetry rows this long (default 168)")
    serve.add_argument("-v", "--verbose", action="store_true", help="log every message handled")
    serve.set_defaults(func=run_serve)

    watch = sub.add_parser("watch", help="a live table of the fleet's devices",
                           description="Subscribe to every device's status, telemetry and OTA progress and show "
                                       "a table: online, model, latency, inferences/s, memory, last seen, OTA state.")
    add_broker_args(watch)
    watch.add_argument("--once", action="store_true", help="collect for --wait seconds, print once, exit")
    watch.add_argument("--json", action="store_true", help="print JSON for scripts")
    watch.add_argument("--wait", type=float, default=2.0, metavar="S",
                       help="with --once: how long to collect (default 2)")
    watch.add_argument("--interval", type=float, default=1.0, metavar="S", help="redraw interval (default 1)")
    watch.add_argument("--connect-timeout", type=float, default=10.0, metavar="S",
                       help="with --once: give up when the broker does not answer within S (default 10)")
    watch.set_defaults(func=run_watch)

    sim = sub.add_parser("simulate", help="run simulated devices against a broker (and your controller)",
                         description="Run N simulated devices that speak the real protocol: each starts serving "
                                     "a built-in version-1 model (sim-model), publishes status and telemetry, "
                                     "takes OTA jobs, reverts and confirms through the agent's own update code. "
                                     "Runs until interrupted (or --duration); reconnects with backoff. With "
                                     "several --broker, device i starts on broker i mod B and fails over to "
                                     "the next.")
    add_broker_args(sim)
    sim.add_argument("--devices", type=int, required=True, metavar="N", help="how many devices")
    sim.add_argument("--processes", default="auto", metavar="K",
                     help="spread the devices over K processes (default auto: one per 800 devices, rounded up)")
    sim.add_argument("--id-prefix", default="sim-", metavar="P",
                     help="device ids are P00000, P00001, ... (default sim-); another prefix for another run")
    sim.add_argument("--tags", nargs="+", default=[], metavar="T", help="tags every device reports (site:x hw:y)")
    sim.add_argument("--fail-rate", type=float, default=0.0, metavar="F",
                     help="fraction of the devices (exactly round(F*N), chosen by --seed) that fail their "
                          "updates' health check and roll back")
    sim.add_argument("--slow-rate", type=float, default=0.0, metavar="F",
                     help="fraction of the devices (exactly round(F*N), chosen by --seed, none of the failing "
                          "ones) that run --slow-factor times slower after an update")
    sim.add_argument("--slow-factor", type=float, default=3.0, metavar="X", help="how much slower (default 3)")
    sim.add_argument("--seed", type=int, default=0, metavar="S", help="picks the failing and slow devices (default 0)")
    sim.add_argument("--telemetry-interval", type=float, default=1.0, metavar="S",
                     help="seconds between telemetry messages (default 1; 0: none)")
    sim.add_argument("--telemetry-resend", type=float, metavar="S",
                     help="resend telemetry the controller has not acknowledged after S seconds (default 30)")
    sim.add_argument("--trusted-key", action="append", default=[], metavar="PUB",
                     help="accept only updates signed by this key (repeatable); without one, check no signature")
    sim.add_argument("--log-dir", metavar="DIR",
                     help="append each process's device events (jobs, commands, blocks, states) as JSON lines here")
    sim.add_argument("--duration", type=float, metavar="S", help="stop after S seconds (default: when interrupted)")
    sim.add_argument("--json", action="store_true",
                     help="JSON lines for scripts: start (with the failing and slow ids), progress, summary")
    sim.add_argument("--shard", type=int, help=argparse.SUPPRESS)  # a child process: run this share only
    sim.set_defaults(func=run_simulate)


def run_serve(args: argparse.Namespace) -> int:
    from lepton_edge.artifact import load_public_key
    from lepton_edge.fleet.controller import Controller, ControllerOptions
    from lepton_edge.fleet.http_api import HttpApi, parse_http_listen, resolve_token
    from lepton_edge.fleet.rollout import MAX_EXPIRES_S
    from lepton_edge.fleet.sql import open_dialect

    broker = broker_from_args(args)
    listen = parse_http_listen(args.http)
    if not 1 <= args.job_expiry <= MAX_EXPIRES_S:
        raise BadInput("--job-expiry must be 1 s to 30 days")
    if not 256 <= args.block_size <= 1024 * 1024:
        raise BadInput("--block-size must be 256 to 1048576 bytes")
    if args.retention_hours <= 0:
        raise BadInput("--retention-hours must be positive")
    store = Path(args.store).expanduser()
    if store.exists() and not store.is_dir():
        raise BadInput(f"--store {store}: not a directory")
    keys = tuple(load_public_key(k) for k in args.trusted_key)
    if args.db is not None:
        open_dialect(args.db)  # a URL of an unknown scheme is refused before anything starts
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, stream=sys.stderr,
                        format="%(asctime)s fleet: %(message)s", datefmt="%H:%M:%S")
    logging.getLogger("lepton_edge.mqtt.client").setLevel(logging.WARNING)
    options = ControllerOptions(fleet=args.fleet, client_id=args.client_id, trusted_keys=keys,
                                default_expires_s=args.job_expiry, block_size=args.block_size,
                                block_qos=args.block_qos,
                                retention_s=args.retention_hours * 3600)
    token = resolve_token(store, listen, args.token_file)
    controller = Controller(broker, store, args.db, options)
    api = HttpApi(controller, listen, token)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    controller.start(http_url=api.url)
    api.start()
    note = "" if token is None else (f", bearer token from {args.token_file}" if args.token_file
                                     else f", bearer token in {store / 'api.token'}")
    print(f"fleet controller: {api.url} (fleet {args.fleet}, broker {broker.display_url}, store {store},"
          f" db {controller.db.dialect.describe()}, replica {controller.replica_id}{note})",
          flush=True)
    log = logging.getLogger("lepton_edge.fleet")
    last_error = None
    try:
        while not stop.wait(1.0):
            error = None if controller.mqtt.connected else controller.mqtt.last_error
            if error and error != last_error:
                log.warning("%s; retrying with backoff", error)
            last_error = error
    finally:
        api.stop()
        controller.stop()
    return 0


def run_watch(args: argparse.Namespace) -> int:
    from lepton_edge.fleet.watch import watch

    broker = broker_from_args(args)
    if args.wait < 0 or args.interval <= 0 or args.connect_timeout <= 0:
        raise BadInput("--wait, --interval and --connect-timeout must be positive")
    return watch(broker, args.fleet, once=args.once, as_json=args.json, wait_s=args.wait, interval_s=args.interval,
                 connect_timeout_s=args.connect_timeout, out=sys.stdout)


def run_simulate(args: argparse.Namespace) -> int:
    from lepton_edge.tools.devsim.simulate import simulate

    return simulate(args, broker_from_args(args))
