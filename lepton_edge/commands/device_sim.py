"""``lepton-edge device-sim``: a simulated microcontroller on a pseudo-terminal, speaking PROTOCOL.md."""

from __future__ import annotations

import argparse
import signal
import sys
from pathlib import Path

from lepton_edge.errors import BadInput


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("device-sim", help="simulate a microcontroller on a pseudo-terminal",
                       description="Open a pseudo-terminal and behave as firmware speaking firmware_bridge/"
                                   "PROTOCOL.md would: two model slots kept on disk, the model run by real "
                                   "TFLite Micro within the profile's RAM, an optional slow and noisy line.")
    p.add_argument("--profile", required=True, metavar="NAME", help="device profile (name or .toml path)")
    p.add_argument("--print-port", action="store_true", help="print only the port's path on stdout")
    p.add_argument("--drop-rate", type=float, default=0.0, metavar="P", help="drop each byte with probability P")
    p.add_argument("--corrupt-rate", type=float, default=0.0, metavar="P",
                   help="corrupt each byte with probability P")
    p.add_argument("--baud", type=int, default=115200, metavar="N", help="line rate to emulate (0: no limit)")
    p.add_argument("--state-dir", metavar="DIR", help="where the model slots live "
                                                     "(default ~/.cache/lepton-edge/sim/PROFILE)")
    p.add_argument("--listen", metavar="HOST:PORT", help="serve on TCP (socket://HOST:PORT) instead of a pty")
    p.add_argument("--max-frame", type=int, default=4096, metavar="N", help="largest payload the device accepts")
    p.add_argument("--window", type=int, default=8, metavar="N", help="frames the host may have in flight")
    p.add_argument("--seed", type=int, metavar="N", help="seed of the line's faults")
    p.add_argument("--trusted-key", action="append", default=[], metavar="PUB",
                   help="accept only artifacts signed by this key (repeatable)")
    p.set_defaults(func=run)


def _check(args: argparse.Namespace) -> None:
    for name in ("drop_rate", "corrupt_rate"):
        value = getattr(args, name)
        if not 0.0 <= value < 1.0:
            raise BadInput(f"--{name.replace('_', '-')} must be in [0, 1), got {value}")
    if args.baud < 0:
        raise BadInput(f"--baud must be >= 0, got {args.baud}")
    if not 16 <= args.max_frame <= 65535:
        raise BadInput(f"--max-frame must be in 16..65535, got {args.max_frame}")
    if not 1 <= args.window <= 255:
        raise BadInput(f"--window must be in 1..255, got {args.window}")


def _transport(listen: str | None):
    from firmware_bridge.transport import PtyTransport, TcpTransport

    if not listen:
        return PtyTransport()
    host, _, port = listen.rpartition(":")
    try:
        return TcpTransport(host or "127.0.0.1", int(port))
    except ValueError:
        raise BadInput(f"--listen {listen}: expected HOST:PORT") from None
    except OSError as exc:
        raise BadInput(f"--listen {listen}: {exc.strerror or exc}") from None


def run(args: argparse.Namespace) -> int:
    from firmware_bridge.sim import SimOptions, SimulatedDevice, default_state_dir
    from lepton_edge.artifact import load_public_key
    from lepton_edge.profiles import load_profile

    _check(args)
    profile = load_profile(args.profile)
    keys = tuple(load_public_key(k) for k in args.trusted_key)
    state = Path(args.state_dir).expanduser() if args.state_dir else default_state_dir(profile.name)
    options = SimOptions(args.profile, state, args.baud, args.drop_rate, args.corrupt_rate, args.seed,
                         args.max_frame, args.window, trusted_keys=keys)
    transport = _transport(args.listen)

    def log(message: str) -> None:
        print(f"device-sim: {message}", file=sys.stderr, flush=True)

    try:
        sim = SimulatedDevice(options, transport, log)
    except OSError as exc:
        transport.close()
        raise BadInput(f"--state-dir {state}: {exc.strerror or exc}") from None
    signal.signal(signal.SIGTERM, lambda *_: sim.stop())
    if args.print_port:
        print(sim.port, flush=True)
    else:
        print(f"simulated {profile.name} on {sim.port} ({sim.core.describe()}; slots in {state}); "
              "Ctrl-C to stop", flush=True)
    sim.start()
    try:
        while not sim.wait(0.5):
            pass
    except KeyboardInterrupt:
        pass
    finally:
        sim.close()
    return 0
