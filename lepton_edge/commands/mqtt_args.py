"""The broker options every command that connects to MQTT takes: URLs, TLS files, protocol, fleet.

``--broker`` may be given several times: a list of brokers (a cluster's nodes, or a primary and its
standbys) that the client fails over between, in that order. ``args.brokers`` holds the list and
``args.broker`` its first URL (what commands read before lists existed).
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import Any


class _BrokerAction(argparse.Action):
    """Append to ``brokers``; keep ``broker`` the first URL."""

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace,
                 values: str | Sequence[Any] | None, option_string: str | None = None) -> None:
        brokers = list(getattr(namespace, "brokers", None) or [])
        brokers.append(str(values))
        namespace.brokers = brokers
        namespace.broker = brokers[0]


def add_broker_args(parser: argparse.ArgumentParser, *, required: bool = True) -> None:
    parser.add_argument("--broker", required=required, metavar="URL", action=_BrokerAction,
                        help="mqtt://[user:pass@]host[:port] or mqtts://... (TLS); repeat it for a list of "
                             "brokers to fail over between, in that order")
    parser.set_defaults(brokers=[])
    parser.add_argument("--ca", metavar="PEM", help="CA certificate that signed the brokers' (mqtts://)")
    parser.add_argument("--cert", metavar="PEM", help="client certificate (mqtts://)")
    parser.add_argument("--key", metavar="PEM", help="client certificate's private key (mqtts://)")
    parser.add_argument("--mqtt-version", choices=("5", "3.1.1"), default="5",
                        help="MQTT protocol (default 5; 3.1.1 for brokers without 5, e.g. NATS)")
    parser.add_argument("--subscribe-qos", type=int, choices=(0, 1), default=1,
                        help="the QoS subscriptions ask for (default 1; 0 on NATS, where every QoS 1 subscription "
                             "is a JetStream consumer: docs/BROKERS.md)")
    parser.add_argument("--fleet", default="default", metavar="NAME",
                        help="fleet name, a topic level (default: default)")


def broker_from_args(args: argparse.Namespace) -> Any:
    """A :class:`lepton_edge.mqtt.BrokerConfig` (a list when ``--broker`` was repeated); BadInput (exit 2)
    on a bad URL or missing file."""
    from lepton_edge.mqtt import check_name, parse_broker_url

    check_name(args.fleet, "--fleet")
    urls = list(getattr(args, "brokers", None) or [args.broker])
    return parse_broker_url(urls, ca=args.ca, cert=args.cert, key=args.key, protocol=args.mqtt_version,
                            subscribe_qos=args.subscribe_qos)
