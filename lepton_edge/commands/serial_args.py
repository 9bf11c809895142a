"""Port options shared by the commands that talk to a device over serial (not a command itself)."""

from __future__ import annotations

import argparse


def add_port_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--port", required=True, metavar="PORT",
                   help="serial port: /dev/ttyACM0, COM3, socket://HOST:PORT, loop://")
    p.add_argument("--baud", type=int, default=115200, metavar="N", help="line rate (default 115200)")
    p.add_argument("--reset", action="store_true",
                   help="reset the board through DTR/RTS after opening the port (default: no reset)")
    p.add_argument("--dtr", choices=("on", "off"), default="on", help="DTR level while connected (default on)")
    p.add_argument("--rts", choices=("on", "off"), default="off", help="RTS level while connected (default off)")
    p.add_argument("--hello-timeout", type=float, default=5.0, metavar="S",
                   help="how long to wait for the device's HELLO (default 5 s)")


def port_options(args: argparse.Namespace):
    from firmware_bridge.link import PortOptions
    from lepton_edge.errors import BadInput

    if args.baud <= 0:
        raise BadInput(f"--baud must be > 0, got {args.baud}")
    if args.hello_timeout <= 0:
        raise BadInput(f"--hello-timeout must be > 0, got {args.hello_timeout}")
    import serial

    try:  # a URL pyserial cannot handle is bad input; a port that is not there (yet) is not
        serial.serial_for_url(args.port, do_not_open=True)
    except (ValueError, serial.SerialException) as exc:
        raise BadInput(f"--port {args.port}: {exc}") from None
    return PortOptions(args.port, args.baud, args.dtr == "on", args.rts == "on", args.reset)
