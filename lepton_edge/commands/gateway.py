"""``lepton-edge gateway``: a microcontroller on a serial port joins the fleet (status, telemetry, OTA)."""

from __future__ import annotations

import argparse

from lepton_edge.commands.agent import log_to_stderr
from lepton_edge.commands.serial_args import add_port_arguments, port_options


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("gateway", help="make a microcontroller on a serial port a member of the fleet",
                       description="Speak for the device on PORT over MQTT: its status and telemetry go out, "
                                   "OTA jobs from the controller are checked as the agent checks them (signature, "
                                   "hash, version, the profile's and the device's RAM) and flashed over serial, "
                                   "then health-checked on the device, or rolled back. The local API runs "
                                   "inference on the device. SIGTERM stops gracefully.")
    p.add_argument("--config", required=True, metavar="AGENT.toml",
                   help="device id, fleet, profile, store, trusted keys and [mqtt] broker (see examples/gateway.toml)")
    add_port_arguments(p)
    p.add_argument("--model", metavar="ARTIFACT_DIR",
                   help="install and flash this artifact first, with the checks an over-the-air update gets")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from lepton_edge.agent.config import load_config
    from lepton_edge.gateway.daemon import Gateway
    from lepton_edge.gateway.session import SerialSessionOptions

    options = port_options(args)
    config = load_config(args.config)
    gateway = Gateway(config, options, SerialSessionOptions(hello_timeout_s=args.hello_timeout))
    log_to_stderr("gateway", ("lepton_edge.agent", "lepton_edge.gateway"))

    def ready(url: str) -> None:
        served, hello = gateway.current(), gateway.session.hello
        device = f"{hello.profile} (firmware {hello.firmware})" if hello else "no device yet"
        what = (f"{served.name} v{served.version} (sha256 {served.sha256[:12]})" if served is not None
                else "no model")
        print(f"lepton-edge gateway: device {config.device.id} on {options.url}: {device}, running {what}", flush=True)
        print(f"lepton-edge gateway: reporting to {gateway.mqtt.client.config.display_url} as "
              f"{gateway.mqtt.topics.prefix}; listening on {url}", flush=True)

    return gateway.run(args.model, ready)
