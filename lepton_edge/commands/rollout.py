"""``lepton-edge rollout list | show ID | pause ID | resume ID | cancel ID``: staged rollouts in the controller.

A rollout is made by ``lepton-edge deploy`` with a rollout flag (``--canary``, ``--rate``, ...);
these commands look at the controller's rollouts and steer them. The tables here are also what
``deploy`` prints for a rollout.
"""

from __future__ import annotations

import argparse
import time
from typing import Any

from lepton_edge.commands.controller_args import add_controller_arg, controller_urls
from lepton_edge.console import print_json, render_table

ACTIONS = {"pause": "stop releasing waves (abort criteria are still checked)",
           "resume": "release waves again",
           "cancel": "send no new jobs; jobs in flight finish, devices on the new model are confirmed"}
SHOW_DEVICES = 50  # more devices than this: `deploy` lists only those with news (`rollout show` lists all)
QUIET_PHASES = ("healthy", "confirming", "confirmed", "waiting", "skipped")


def register(subparsers: Any) -> None:
    p = subparsers.add_parser("rollout", help="list, show, pause, resume or cancel staged rollouts",
                              description="The controller's staged rollouts (made by `deploy` with --canary, "
                                          "--rate or an abort criterion): list them, show one with its waves "
                                          "and devices, or pause, resume or cancel one.")
    sub = p.add_subparsers(dest="rollout_command", metavar="SUBCOMMAND")
    sub.required = True
    common = argparse.ArgumentParser(add_help=False)
    add_controller_arg(common)
    common.add_argument("--token-file", metavar="FILE", help="bearer token for the controller's API")
    common.add_argument("--connect-timeout", type=float, default=10.0, metavar="S",
                        help="keep trying to reach the controller this long (default 10)")
    common.add_argument("--json", action="store_true", help="print JSON for scripts")
    sub.add_parser("list", parents=[common], help="every rollout, newest first",
                   description="List the controller's rollouts: state and device counts.").set_defaults(func=run)
    show = sub.add_parser("show", parents=[common], help="one rollout: waves, devices, abort reason",
                          description="Show a rollout: its parameters, state (an abort in words), waves and "
                                      "every device's phase.")
    show.add_argument("rollout", metavar="ID", help="the rollout's id (`rollout list`)")
    show.set_defaults(func=run)
    for action, text in ACTIONS.items():
        a = sub.add_parser(action, parents=[common], help=f"{action} a rollout: {text}",
                           description=f"{action.capitalize()} a rollout: {text}.")
        a.add_argument("rollout", metavar="ID", help="the rollout's id (`rollout list`)")
        a.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from lepton_edge.fleet.client import ControllerClient, read_token

    if args.connect_timeout <= 0:
        from lepton_edge.errors import BadInput

        raise BadInput("--connect-timeout must be positive")
    client = ControllerClient(controller_urls(args), read_token(args.token_file), connect_wait_s=args.connect_timeout)
    try:
        if args.rollout_command == "list":
            rollouts = client.rollouts()
            if args.json:
                print_json({"rollouts": rollouts})
            else:
                print(render_list(rollouts) if rollouts else "(no rollouts)")
            return 0
        if args.rollout_command == "show":
            r = client.rollout(args.rollout)
        else:
            r = client.rollout_action(args.rollout, args.rollout_command)
    finally:
        client.close()
    if args.json:
        print_json(r)
    elif args.rollout_command == "show":
        print(render_rollout(r))
    else:
        from lepton_edge.fleet.deploy import state_words

        print(f"rollout {r['rollout']}: {state_words(r)}")
    return 0


def render_list(rollouts: list[dict[str, Any]]) -> str:
    rows = []
    for r in rollouts:
        s = r.get("summary") or {}
        rows.append((r["rollout"], f"{r.get('name')} v{r.get('version')}", r["state"], s.get("selected", 0),
                     s.get("healthy", 0), s.get("failed", 0) + s.get("rolled_back", 0),
                     s.get("reverted", 0), s.get("waiting", 0), _when(r.get("created"))))
    return render_table(("rollout", "model", "state", "selected", "healthy", "failed", "reverted", "waiting",
                         "created"), rows, align="lllrrrrrl")


def render_rollout(r: dict[str, Any], device_limit: int | None = None) -> str:
    """A rollout for people: what, state in words, counts, waves, devices (at most ``device_limit`` on the
    new model; devices not on it are always listed)."""
    from lepton_edge.fleet.deploy import state_words

    s = r.get("summary") or {}
    params = r.get("params") or {}
    out = [f"rollout {r['rollout']}: {r.get('name')} version {r.get('version')} "
           f"(artifact {str(r.get('artifact', ''))[:12]}) to {s.get('selected', len(r.get('devices') or []))} "
           f"device(s), created {_when(r.get('created'))}",
           f"state: {state_words(r)}"]
    given = flags_text(params)
    if given:
        out.append(f"flags: {given}")
    counts = ", ".join(f"{n} {k}" for k, n in s.items() if k != "selected" and n)
    out.append(f"devices: {counts or 'none yet'}")
    waves = r.get("waves") or []
    if waves:
        rows = [(w["wave"], "yes" if w.get("canary") else "", w["devices"], _when(w.get("released_at")),
                 ", ".join(f"{n} {k}" for k, n in sorted((w.get("states") or {}).items()) if n) or "-")
                for w in waves]
        out += ["", render_table(("wave", "canary", "devices", "released", "states"), rows, align="rlrll")]
    devices = r.get("devices")
    if devices:
        shown, hidden = devices, 0
        if device_limit is not None and len(devices) > device_limit:
            shown = [d for d in devices if d.get("phase") not in QUIET_PHASES][:device_limit]
            hidden = len(devices) - len(shown)
        device_rows = [(d["device"], "-" if d.get("wave") is None else d["wave"], d.get("phase") or "-",
                        d.get("state") or "-", _model(d.get("previous")), (d.get("reason") or "")[:80])
                       for d in shown]
        if device_rows:
            out += ["", render_table(("device", "wave", "phase", "job state", "previous", "reason"), device_rows,
                                     align="lrllll")]
        if hidden:
            out.append(f"({hidden} more device(s) not listed: lepton-edge rollout show {r['rollout']})")
    return "\n".join(out)


def flags_text(params: dict[str, Any]) -> str:
    """A rollout's parameters as the `deploy` flags that give them (``--canary 10 --max-failures 20%``)."""
    from lepton_edge.fleet.deploy import FLAGS

    out = []
    for key, value in params.items():
        if value is None or key not in FLAGS or (key in ("growth", "wave_interval_s") and params.get("rate") is None):
            continue  # (waves have a size and an interval only with a rate)
        pct = "%" if key.endswith("_pct") else ""
        out.append(f"{FLAGS[key]} {value:g}{pct}" if isinstance(value, (int, float)) else f"{FLAGS[key]} {value}")
    return " ".join(out)


def _model(m: dict[str, Any] | None) -> str:
    return f"{m.get('name')} v{m.get('version')}" if m else "-"


def _when(ts: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts)) if ts else "-"
