"""``lepton-edge deploy OUTDIR (--device ID ... | --tag T ... | --all) [rollout flags]``: upload an artifact,
deploy it or roll it out in stages, optionally follow it."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from lepton_edge.commands.controller_args import add_controller_arg, controller_urls
from lepton_edge.commands.rollout import SHOW_DEVICES, render_rollout
from lepton_edge.console import print_json, render_table


def register(subparsers: Any) -> None:
    p = subparsers.add_parser("deploy", help="send an artifact to devices through the fleet controller",
                              description="Upload OUTDIR (model, manifest, signature) to the controller and deploy it "
                                          "to the selected devices. Any rollout flag (--canary, --soak, --rate, "
                                          "--growth, --wave-interval, --max-*) makes it a staged rollout: a canary "
                                          "first, then waves, stopped and reverted when an abort criterion fires. "
                                          "With --wait, follow until it is over or --timeout passes: exit 0 only "
                                          "when every selected device is healthy on the new model.")
    p.add_argument("outdir", metavar="OUTDIR", help="an artifact directory made by `lepton-edge convert`")
    add_controller_arg(p)
    sel = p.add_argument_group("which devices (at least one way)")
    sel.add_argument("--device", action="append", default=[], metavar="ID", help="a target device (repeatable)")
    sel.add_argument("--tag", action="append", default=[], metavar="TAG",
                     help="devices carrying this tag, e.g. site:berlin (repeatable: a device must carry all)")
    sel.add_argument("--all", action="store_true", help="every device the controller knows")
    ro = p.add_argument_group("staged rollout (any of these makes one; docs/FLEET-CLI.md)")
    ro.add_argument("--canary", metavar="N|P%", help="update N devices (or P%% of the selection) first")
    ro.add_argument("--soak", type=float, metavar="S", help="after the canary is healthy, wait S seconds")
    ro.add_argument("--rate", type=float, metavar="R", help="then release R devices per minute, in waves")
    ro.add_argument("--growth", type=float, metavar="F", help="with --rate: each wave F times the one before")
    ro.add_argument("--wave-interval", type=float, metavar="S", help="with --rate: seconds between waves (default 60)")
    ro.add_argument("--max-failures", metavar="P%",
                    help="abort when more than P%% of the devices done so far failed or rolled back")
    ro.add_argument("--min-done", type=int, metavar="N",
                    help="count --max-failures once N devices are done (default: the canary size)")
    ro.add_argument("--max-error-rate", metavar="R",
                    help="abort when the updated devices' failed inferences exceed this fraction of all")
    ro.add_argument("--max-p99-increase", metavar="P%",
                    help="abort when the updated devices' p99 latency rises more than P%% over their own before")
    p.add_argument("--wait", action="store_true", help="follow the deployment or rollout until it is over")
    p.add_argument("--timeout", type=float, default=300.0, metavar="S",
                   help="with --wait: give up after S (default 300; a rollout goes on in the controller)")
    p.add_argument("--expires", type=float, metavar="S", help="the jobs' lifetime (default: the controller's)")
    p.add_argument("--token-file", metavar="FILE", help="bearer token for the controller's API")
    p.add_argument("--connect-timeout", type=float, default=10.0, metavar="S",
                   help="keep trying to reach the controller this long (default 10)")
    p.add_argument("--json", action="store_true", help="print JSON for scripts")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from lepton_edge.fleet.client import read_token
    from lepton_edge.fleet.deploy import DeployRequest, RolloutFlags, Targets, deploy, raise_unless_ok

    flags = RolloutFlags.from_text(canary=args.canary, soak_s=args.soak, rate=args.rate, growth=args.growth,
                                   wave_interval_s=args.wave_interval, max_failures=args.max_failures,
                                   min_done=args.min_done, max_error_rate=args.max_error_rate,
                                   max_p99_increase=args.max_p99_increase)
    targets = Targets(tuple(args.device), tuple(args.tag), args.all)
    req = DeployRequest(Path(args.outdir), targets, controller_urls(args),
                        read_token(args.token_file), args.wait, args.timeout, args.expires, args.connect_timeout,
                        flags)
    result = deploy(req, sys.stderr)
    if args.json:
        print_json(result)
    elif "rollout" in result:
        print(render_rollout(result, device_limit=SHOW_DEVICES))
    else:
        print(f"deployment {result['deployment']}: {result['name']} version {result['version']} "
              f"(artifact {result['artifact'][:12]}) to {len(result['devices'])} device(s)")
        rows = [(d["device"], "yes" if d.get("online") else "no", d["state"],
                 f"{d['received']}/{d['total']}", d.get("reason") or "") for d in result["devices"]]
        print(render_table(("device", "online", "state", "bytes", "reason"), rows, align="lllrl"))
    raise_unless_ok(result)
    return 0
