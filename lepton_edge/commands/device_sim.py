"""``lepton-edge device-sim``: a simulated microcontroller on a pseudo-terminal, speaking PROTOCOL.md."""

from __future__ import annotations

import argparse
import os
import signal
import sys
from pathlib import Path

from lepton_edge.errors import BadInput


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("device-sim", help="simulate a microcontroller on a pseudo-terminal",
                       description="Open a pseudo-terminal and behave as firmware speaking firmware_bridge/"
                                   "PROTOCOL.md would: two model slots kept on disk, the model run by real "
                                   "TFLite Micro within the profile's RAM, an optional slow and noisy line. "
                                   "With --board, run the reference firmware itself instead (firmware_bridge/"
                                   "firmware): under QEMU for qemu-m4 and qemu-m7, natively for host; its build "
                                   "is made first when it is not cached.")
    who = p.add_mutually_exclusive_group(required=True)
    who.add_argument("--profile", metavar="NAME", help="device profile (name or .toml path) the Python simulator plays")
    who.add_argument("--board", metavar="BOARD", help="run the reference firmware built for BOARD "
                                                      "(qemu-m4, qemu-m7, host)")
    p.add_argument("--print-port", action="store_true", help="print only the port's path on stdout")
    p.add_argument("--drop-rate", type=float, default=None, metavar="P", help="drop each byte with probability P")
    p.add_argument("--corrupt-rate", type=float, default=None, metavar="P",
                   help="corrupt each byte with probability P")
    p.add_argument("--baud", type=int, default=115200, metavar="N", help="line rate to emulate (0: no limit; "
                                                                         "a --board's pseudo-terminal has none)")
    p.add_argument("--state-dir", metavar="DIR", help="where the model slots live "
                                                     "(default ~/.cache/lepton-edge/sim/PROFILE)")
    p.add_argument("--state", metavar="FILE", help="--board: the file that holds the board's slot storage "
                                                  "(default ~/.cache/lepton-edge/boards/BOARD.slots)")
    p.add_argument("--listen", metavar="HOST:PORT", help="serve on TCP (socket://HOST:PORT) instead of a pty")
    p.add_argument("--max-frame", type=int, default=None, metavar="N", help="largest payload the device accepts")
    p.add_argument("--window", type=int, default=None, metavar="N", help="frames the host may have in flight")
    p.add_argument("--seed", type=int, metavar="N", help="seed of the line's faults")
    p.add_argument("--trusted-key", action="append", default=[], metavar="PUB",
                   help="accept only artifacts signed by this key (repeatable)")
    p.set_defaults(func=run)


_SIM_ONLY = ("drop_rate", "corrupt_rate", "listen", "max_frame", "window", "seed", "state_dir")


def _check(args: argparse.Namespace) -> None:
    if args.board is not None:
        for name in _SIM_ONLY:
            if getattr(args, name) is not None:
                raise BadInput(f"--{name.replace('_', '-')} is an option of the Python simulator (--profile), "
                               f"not of --board {args.board}")
        return
    if args.state is not None:
        raise BadInput("--state FILE goes with --board; the Python simulator keeps its slots in --state-dir DIR")
    for name, default in (("drop_rate", 0.0), ("corrupt_rate", 0.0), ("max_frame", 4096), ("window", 8)):
        if getattr(args, name) is None:
            setattr(args, name, default)
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
    from firmware_bridge.sim import DeviceSimOptions, SimulatedDevice, default_state_dir
    from lepton_edge.artifact import load_public_key
    from lepton_edge.profiles import load_profile

    _check(args)
    if args.board is not None:
        return run_board(args)
    profile = load_profile(args.profile)
    keys = tuple(load_public_key(k) for k in args.trusted_key)
    state = Path(args.state_dir).expanduser() if args.state_dir else default_state_dir(profile.name)
    options = DeviceSimOptions(args.profile, state, args.baud, args.drop_rate, args.corrupt_rate, args.seed,
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


def default_board_state(board: str) -> Path:
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "lepton-edge" / "boards" / f"{board}.slots"


def run_board(args: argparse.Namespace) -> int:
    """``device-sim --board``: the reference firmware on a pseudo-terminal, until SIGTERM or Ctrl-C."""
    from lepton_edge.artifact import load_public_key
    from lepton_edge.firmware_build.boards import get_board
    from lepton_edge.firmware_build.build import build, cached_build, check_qemu
    from lepton_edge.firmware_build.launch import BoardFailed, last_words, start_board

    board = get_board(args.board)
    if not board.runs_here:
        raise BadInput(f"--board {board.name} is a real board, it does not run here: build it with `lepton-edge "
                       f"firmware build --board {board.name}` and flash it (see firmware_bridge/firmware/boards/"
                       f"{board.name}/README.md); boards that run here: qemu-m4, qemu-m7, host")
    keys = tuple(load_public_key(k) for k in args.trusted_key)
    state = Path(args.state).expanduser() if args.state else default_board_state(board.name)
    if state.exists() and not state.is_file():
        raise BadInput(f"--state {state}: not a file")
    try:
        state.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise BadInput(f"--state {state}: {exc.strerror or exc}") from None

    def log(message: str) -> None:
        print(f"device-sim: {message}", file=sys.stderr, flush=True)

    if board.emulated:
        check_qemu()
    fw = cached_build(board.name)
    if fw is None:
        log(f"no cached firmware build for {board.name}: building it (lepton-edge firmware build --board "
            f"{board.name})")
        signal.signal(signal.SIGTERM, signal.default_int_handler)  # a SIGTERM stops make too, not only us
        fw = build(board.name, progress=log)
    stopping = []
    running = start_board(fw, state, trusted_keys=keys)

    def on_term(*_: object) -> None:  # only signal here: the loop below waits for the board and cleans up
        stopping.append(True)
        if running.proc is not None and running.alive():
            running.proc.terminate()
    signal.signal(signal.SIGTERM, on_term)
    how = f"QEMU {board.machine}" if board.emulated else "Linux, ASan+UBSan"
    if args.print_port:
        print(running.port, flush=True)
    else:
        print(f"firmware {board.name} ({fw.profile}; {board.core}, {board.kernels}; {how}) on {running.port} "
              f"(slots in {state}; log {running.log}); Ctrl-C to stop", flush=True)
    code = None
    try:
        while True:
            code = running.wait(0.5)
            if code is not None or stopping:
                break
    except KeyboardInterrupt:
        pass
    finally:
        running.stop()
    if stopping or code in (0, None):
        return 0
    words = last_words(running.log.read_text(errors="replace")) if running.log else "no log"
    raise BoardFailed(f"firmware {board.name} stopped with exit code {code}: {words} (log: {running.log})")
