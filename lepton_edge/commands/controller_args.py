"""``--controller URL`` (repeatable) for the commands that talk to the fleet controller's HTTP API."""

from __future__ import annotations

import argparse
from typing import Any

from lepton_edge.fleet.client import DEFAULT_CONTROLLER


def add_controller_arg(parser: Any) -> None:
    parser.add_argument("--controller", action="append", metavar="URL",
                        help=f"the controller's HTTP API (default {DEFAULT_CONTROLLER}); repeat it for "
                             "replicas or a standby: the next is used when one does not answer")


def controller_urls(args: argparse.Namespace) -> tuple[str, ...]:
    return tuple(args.controller or (DEFAULT_CONTROLLER,))
