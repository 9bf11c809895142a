"""``lepton-edge deploy OUTDIR --device ID ...``: upload an artifact, deploy it, optionally wait for the devices."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from lepton_edge.console import print_json, render_table


def register(subparsers: Any) -> None:
    p = subparsers.add_parser("deploy", help="send an artifact to devices through the fleet controller",
                              description="Upload OUTDIR (model, manifest, signature) to the controller and deploy it "
                                          "to the devices. With --wait, follow until every device is healthy, has "
                                          "failed, or --timeout passes: exit 0 only when all are healthy.")
    p.add_argument("outdir", metavar="OUTDIR", help="an artifact directory made by `lepton-edge convert`")
    p.add_argument("--controller", default="http://127.0.0.1:8788", metavar="URL",
                   help="the controller's HTTP API (default http://127.0.0.1:8788)")
    p.add_argument("--device", action="append", default=[], metavar="ID", required=True,
                   help="a target device (repeatable)")
    p.add_argument("--wait", action="store_true", help="follow the deployment until it finishes")
    p.add_argument("--timeout", type=float, default=300.0, metavar="S",
                   help="with --wait: give up after S (default 300)")
    p.add_argument("--expires", type=float, metavar="S", help="the jobs' lifetime (default: the controller's)")
    p.add_argument("--token-file", metavar="FILE", help="bearer token for the controller's API")
    p.add_argument("--connect-timeout", type=float, default=10.0, metavar="S",
                   help="keep trying to reach the controller this long (default 10)")
    p.add_argument("--json", action="store_true", help="print JSON for scripts")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from lepton_edge.fleet.client import read_token
    from lepton_edge.fleet.deploy import DeployRequest, deploy, raise_unless_ok

    req = DeployRequest(Path(args.outdir), tuple(args.device), args.controller, read_token(args.token_file),
                        args.wait, args.timeout, args.expires, args.connect_timeout)
    result = deploy(req, sys.stderr)
    if args.json:
        print_json(result)
    else:
        print(f"deployment {result['deployment']}: {result['name']} version {result['version']} "
              f"(artifact {result['artifact'][:12]}) to {len(result['devices'])} device(s)")
        rows = [(d["device"], "yes" if d.get("online") else "no", d["state"],
                 f"{d['received']}/{d['total']}", d.get("reason") or "") for d in result["devices"]]
        print(render_table(("device", "online", "state", "bytes", "reason"), rows, align="lllrl"))
    raise_unless_ok(result)
    return 0
