"""The broker options every command that connects to MQTT takes: URL, TLS files, protocol, fleet."""

from __future__ import annotations

import argparse
from typing import Any


def add_broker_args(parser: argparse.ArgumentParser, *, required: bool = True) -> None:
    parser.add_argument("--broker", required=required, metavar="URL",
                        help="mqtt://[user:pass@]host[:port] or mqtts://... (TLS)")
    parser.add_argument("--ca", metavar="PEM", help="CA certificate that signed the broker's (mqtts://)")
    parser.add_argument("--cert", metavar="PEM", help="client certificate (mqtts://)")
    parser.add_argument("--key", metavar="PEM", help="client certificate's private key (mqtts://)")
    parser.add_argument("--mqtt-version", choices=("5", "3.1.1"), default="5", help="MQTT protocol (default 5)")
    parser.add_argument("--fleet", default="default", metavar="NAME",
                        help="fleet name, a topic level (default: default)")


def broker_from_args(args: argparse.Namespace) -> Any:
    """A :class:`lepton_edge.mqtt.BrokerConfig`; BadInput (exit 2) on a bad URL or missing file."""
    from lepton_edge.mqtt import check_name, parse_broker_url

    check_name(args.fleet, "--fleet")
    return parse_broker_url(args.broker, ca=args.ca, cert=args.cert, key=args.key, protocol=args.mqtt_version)
